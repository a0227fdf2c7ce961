"""A planted weight-space history on the tiny GPT-2 (real save_pretrained dirs and PEFT adapters).

- ``aligned = base + V`` with ``V`` Gaussian (scale 0.05) on every float parameter;
- run ``planted``: steps 1, 2, 3 with ``ΔW_t = −c_t·V + σ·E_t`` (``c = 0.2, 0.5, 0.9``, ``σ = 0.05``,
  ``E_t`` independent Gaussians), so the reverted fraction should recover ``c_t``;
- control ``control``: from base, ``ΔW = σ·E`` (pure noise: no reversion);
- run ``lora``: a PEFT LoRA adapter (rank 4, ``c_attn`` and ``c_fc`` of every block, ``fan_in_fan_out``)
  whose ``c_attn`` delta of block 0 is exactly ``−c·V_4`` (``V``'s rank-4 truncation) and random
  elsewhere; run ``merged``: the same adapter merged (``merge_and_unload``) and saved in full.
"""

import warnings
from pathlib import Path

import torch

import tiny

C = (0.2, 0.5, 0.9)
C_LORA = 0.7
SIGMA = 0.05
RANK = 4


def _add(
    model: torch.nn.Module, deltas: dict[str, torch.Tensor], scale: float = 1.0
) -> torch.nn.Module:
    out = tiny.tiny_model(0)
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.add_(scale * deltas[name])
    return out


def _noise(model: torch.nn.Module, seed: int, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def _lora(aligned: torch.nn.Module, v: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """Write the adapter; returns its merge_and_unload()."""
    from peft import LoraConfig, get_peft_model

    model = tiny.tiny_model(0)
    model.load_state_dict(aligned.state_dict())
    cfg = LoraConfig(r=RANK, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(7)
    scale = 8 / RANK
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                a.copy_(0.3 * torch.randn(a.shape, generator=g))
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
                if name.endswith("h.0.attn.c_attn"):
                    vv = v["transformer.h.0.attn.c_attn.weight"].double().T  # oriented [out, in]
                    u, s, vh = torch.linalg.svd(vv, full_matrices=False)
                    b.copy_((-C_LORA * u[:, :RANK] * s[:RANK] / scale).float())
                    a.copy_(vh[:RANK].float())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model.save_pretrained(path)
    return peft_model.merge_and_unload().eval()


def write_planted(root: Path) -> dict:
    base = tiny.tiny_model(0)
    v = _noise(base, 1, 0.05)
    aligned = _add(base, v)
    dirs = {"base": tiny.save(base, root / "base"), "aligned": tiny.save(aligned, root / "aligned")}
    runs: dict[str, dict[int, Path]] = {"planted": {}}
    for t, c in enumerate(C, start=1):
        e = _noise(base, 100 + t, SIGMA)
        m = _add(aligned, {n: -c * v[n] + e[n] for n in v})
        runs["planted"][t] = tiny.save(m, root / "planted" / f"step-{t}", tokenizer=False)
    ctrl = _add(base, _noise(base, 200, SIGMA))
    controls = {"control": {1: tiny.save(ctrl, root / "control" / "step-1", tokenizer=False)}}
    merged = _lora(aligned, v, root / "lora" / "step-1")
    runs["lora"] = {1: root / "lora" / "step-1"}
    runs["merged"] = {1: tiny.save(merged, root / "merged" / "step-1", tokenizer=False)}
    return {**dirs, "runs": runs, "controls": controls, "v": v, "root": root}
