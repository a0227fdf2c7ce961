"""Apply a validated LoRA :class:`~revlens.loading.lora.Adapter` to a model, in place.

Plain LoRA is merged here with PEFT's own arithmetic (``weight += transpose(B @ A) * scaling``,
in float32 for half-precision weights as PEFT does on CPU). DoRA modules need the base weight's
column norms and are merged by PEFT's layer code on a copy of just that module; PEFT is an
optional extra (``pip install "revlens[peft]"``).
"""

import copy

import torch
from torch import Tensor

from revlens.errors import ConfigError
from revlens.loading.lora import Adapter, LoraModule, lora_delta, require_peft
from revlens.loading.swap import check_finite, copy_checked
from revlens.loading.targets import Targets

__all__ = ["apply_adapter"]


def _compute_dtype(weight: Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _plain(mod: LoraModule, adapter: Adapter, targets: Targets) -> dict[str, Tensor]:
    src, cfg = adapter.source, adapter.config
    weight = targets.get(mod.weight)
    dtype = _compute_dtype(weight)
    a_key, b_key = (
        ("lora_embedding_A", "lora_embedding_B") if mod.embedding else ("lora_A", "lora_B")
    )
    a = src.read(mod.keys[a_key]).to(device=weight.device, dtype=dtype)
    b = src.read(mod.keys[b_key]).to(device=weight.device, dtype=dtype)
    for name, t in ((a_key, a), (b_key, b)):
        check_finite(t, checkpoint=src.name, name=f"{mod.module}.{name}")
    delta = lora_delta(a, b, mod.scaling, transpose=mod.embedding or cfg.fan_in_fan_out)
    out = {mod.weight: weight + delta}
    if "lora_B.bias" in mod.keys:
        bias = targets.get(mod.bias)
        if bias is None:
            raise ConfigError(
                f"adapter {src.name}: module {mod.module!r} has lora_bias but the layer has no bias"
            )
        extra = src.read(mod.keys["lora_B.bias"]).to(device=bias.device, dtype=dtype)
        out[mod.bias] = bias + extra * mod.scaling
    return out


def _dora(mod: LoraModule, adapter: Adapter, targets: Targets) -> dict[str, Tensor]:
    """Merge one DoRA module with PEFT's layer code, on a copy of that module only."""
    peft = require_peft(f"DoRA adapter {adapter.source.name}")
    cfg = adapter.config
    module_name = mod.weight.rsplit(".", 1)[0]
    container = torch.nn.Module()
    container.add_module("target", copy.deepcopy(targets.modules[module_name]))
    r, alpha = cfg.rank_alpha(mod.module)
    lora_cfg = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=["target"],
        use_dora=True,
        use_rslora=cfg.use_rslora,
        fan_in_fan_out=cfg.fan_in_fan_out,
        lora_bias=cfg.lora_bias,
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    peft.inject_adapter_in_model(lora_cfg, container)
    state = container.state_dict()
    with torch.no_grad():
        for part, key in mod.keys.items():
            stem, _, param = part.partition(".")
            names = [f"target.{stem}.default.{param or 'weight'}", f"target.{stem}.default"]
            name = next((n for n in names if n in state), None)
            if name is None:
                raise ConfigError(
                    f"adapter {adapter.source.name}: PEFT's DoRA layer has no slot for {key!r}"
                )
            value = adapter.source.read(key)
            check_finite(value, checkpoint=adapter.source.name, name=key)
            state[name].copy_(value)
        layer = container.target
        layer.merge()
        base = layer.get_base_layer()
        out = {mod.weight: base.weight.detach()}
        if "lora_B.bias" in mod.keys:
            out[mod.bias] = base.bias.detach()
    return out


@torch.no_grad()
def apply_adapter(adapter: Adapter, targets: Targets) -> list[str]:
    """Write ``adapter`` into the model: replacements first, then each module's merged weight.

    Each module's new weight is computed (one module at a time, never a merged copy of the
    model), checked finite, then copied in place.

    Returns:
        the HF names written (in order).

    Raises:
        NonFiniteError: a factor or merged weight holds NaN/inf (names adapter and module);
            modules before it were written (the caller restores them).
        ConfigError: a DoRA adapter without PEFT installed.
    """
    src = adapter.source
    written: list[str] = []
    for name, key in adapter.replacements.items():
        copy_checked(targets.get(name), src.read(key), checkpoint=src.name, name=name)
        written.append(name)
    for mod in adapter.modules:
        merged = (
            _dora(mod, adapter, targets)
            if "lora_magnitude_vector" in mod.keys
            else _plain(mod, adapter, targets)
        )
        for name, value in merged.items():
            copy_checked(targets.get(name), value, checkpoint=src.name, name=name)
            written.append(name)
    return written
