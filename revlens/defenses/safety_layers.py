"""Safety layers (Li et al. 2024, "Safety Layers in Aligned LLMs", SPPFT, arXiv 2408.17003): locate
the contiguous blocks where an aligned model separates malicious from normal prompts, and freeze
them while fine-tuning.

**Locating** (:func:`locate_safety_layers`): at every layer ``l`` (revlens' ``resid_post`` layers,
read with :func:`revlens.sites.access`), the last-position hidden vector of each prompt; the mean
cosine similarity over normal–normal pairs (``cos_nn``) and over normal–malicious pairs
(``cos_nm``), and their gap ``gap_l = cos_nn − cos_nm``. The paper observes that the gap appears
at some middle layer and grows to a peak; the safety layers run from where it appears to where it
peaks. Implemented as: ``peak = argmax_l gap_l`` (layers ≥ 1), ``start`` = the first layer
``≤ peak`` with ``gap_l ≥ rise · gap_peak`` (``rise`` 0.1 by default); the blocks are
``start − 1 .. peak − 1`` (layer ``l`` is the stream after block ``l − 1``). *Simplified*: the
paper refines the upper bound with an over-rejection test (scaling the candidate layers'
attention and counting refusals of harmless prompts); that step is not implemented.

**Freezing** (:class:`SafetyLayerFreeze`, registered ``"safety_freeze"``): the parameters of
blocks ``first .. last`` (full weights or their LoRA factors) get their gradients zeroed before
every optimizer step and their values put back after it (weight decay and momentum move a
parameter even with a zero gradient). Several strategies act in the order given: put the freeze
**last** so that its word is final.
"""

import re
from dataclasses import dataclass
from typing import Any, no_type_check

import pandas as pd
import torch

from revlens._config import Config, as_float, as_int, option
from revlens.block.registry import register
from revlens.block.strategy import BlockingStrategy
from revlens.defenses._targets import hf_model
from revlens.errors import ConfigError, ProbeError
from revlens.weights.catalog import build_catalog

__all__ = ["SafetyLayerFreeze", "SafetyLayerFreezeConfig", "SafetyLayers", "locate_safety_layers"]

_LORA = re.compile(r"\.(lora_[AB]|lora_embedding_[AB])\.[^.]+(\.weight)?$")


@dataclass(frozen=True)
class SafetyLayers:
    """The located safety layers.

    Attributes:
        first, last: the block range (inclusive) to freeze.
        curve: per revlens layer ``cos_nn``, ``cos_nm`` and ``gap``.
    """

    first: int
    last: int
    curve: pd.DataFrame


def _last_hidden(acc: Any, tokenizer: Any, prompts: list[str]) -> list[torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    last = mask.sum(1) - 1
    if bool((last < 0).any()):
        raise ProbeError("an empty prompt has no last position")
    weights = torch.zeros(ids.shape, dtype=torch.float32)
    weights[torch.arange(len(prompts)), last] = 1.0
    sites = acc.sites("all", "resid_post")
    with torch.no_grad():
        return [h.float() for h in acc.read(ids, weights, sites, mask=mask)]


def _mean_cos(x: torch.Tensor, y: torch.Tensor, same: bool) -> float:
    c = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(y, dim=-1).T
    if same:
        i, j = torch.triu_indices(len(x), len(x), offset=1)
        return float(c[i, j].mean())
    return float(c.mean())


def locate_safety_layers(
    model: Any, tokenizer: Any, normal: list[str], malicious: list[str], *, rise: float = 0.1
) -> SafetyLayers:
    """The safety layers of ``model`` (module docstring) from ``normal`` and ``malicious`` prompts
    (at least 2 normal, 1 malicious; rendered as given, right-padded).

    Raises:
        ProbeError: too few prompts, or no layer where the gap is positive.
        ConfigError: ``rise`` outside (0, 1].
    """
    from revlens.sites import access

    rise = as_float("rise", rise, min=0.0, max=1.0, open_min=True)
    if len(normal) < 2 or len(malicious) < 1:
        raise ProbeError(
            f"locating safety layers needs >= 2 normal and >= 1 malicious prompts, got "
            f"{len(normal)} and {len(malicious)}"
        )
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ProbeError(
            "the tokenizer must pad on the right (the last position is read per prompt)"
        )
    acc = access(model)
    hn, hm = (
        _last_hidden(acc, tokenizer, list(normal)),
        _last_hidden(acc, tokenizer, list(malicious)),
    )
    rows = [
        {"layer": layer, "cos_nn": _mean_cos(a, a, True), "cos_nm": _mean_cos(a, b, False)}
        for layer, (a, b) in enumerate(zip(hn, hm, strict=True))
    ]
    curve = pd.DataFrame(rows)
    curve["gap"] = curve["cos_nn"] - curve["cos_nm"]
    gap = curve["gap"].to_numpy()
    peak = 1 + int(gap[1:].argmax())
    if gap[peak] <= 0:
        raise ProbeError(
            "normal–malicious similarity is never below normal–normal: no safety layers to locate"
        )
    start = next(layer for layer in range(1, peak + 1) if gap[layer] >= rise * gap[peak])
    return SafetyLayers(start - 1, peak - 1, curve)


@no_type_check  # validates its own fields (typed errors)
@dataclass
class SafetyLayerFreezeConfig(Config):
    """Settings of :class:`SafetyLayerFreeze`: the inclusive block range."""

    first: int = option(0, "first frozen block")
    last: int = option(0, "last frozen block (inclusive)")

    def validate(self) -> None:
        """Check every field (the range against the model: at ``prepare``)."""
        self.first = as_int("first", self.first, min=0)
        self.last = as_int("last", self.last, min=0)
        if self.last < self.first:
            raise ConfigError(f"the block range first={self.first}..last={self.last} is empty")


def _block_of(name: str, catalog: Any) -> int | None:
    plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    plain = _LORA.sub(".weight", plain)
    p = catalog.params.get(catalog.leader(plain))
    return None if p is None or p.layer < 0 else p.layer


@register("safety_freeze")
class SafetyLayerFreeze(BlockingStrategy):
    """Freeze blocks ``first .. last`` while fine-tuning (module docstring; arXiv 2408.17003).

    Args:
        first, last: the block range (e.g. from :func:`locate_safety_layers`), or ``config``.

    Fitted attributes: ``frozen_`` (``(name, tensor, its value when attached)``), ``n_layers_``;
    records ``moved`` (how far the optimizer moved the frozen tensors before they were put back).
    """

    source = "freeze"

    def __init__(
        self,
        first: int | None = None,
        last: int | None = None,
        *,
        config: SafetyLayerFreezeConfig | None = None,
    ) -> None:
        settings = {k: v for k, v in (("first", first), ("last", last)) if v is not None}
        self.config = SafetyLayerFreezeConfig.build(config, "SafetyLayerFreeze", **settings)

    def prepare(
        self, model: Any, *, optimizer: Any = None, params: Any = None
    ) -> "SafetyLayerFreeze":
        """Find the trainable tensors of the frozen blocks.

        Raises:
            ConfigError: the range lies outside the model, or no trainable tensor is in it.
        """
        cfg, hf = self.config, hf_model(model)
        catalog = build_catalog(hf.config)
        n_layers = int(hf.config.num_hidden_layers)
        if cfg.last >= n_layers:
            raise ConfigError(
                f"blocks {cfg.first}..{cfg.last} are outside the model: it has blocks 0..{n_layers - 1}"
            )
        if params is None and optimizer is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        allowed = None if params is None else {id(p) for p in params}
        frozen = []
        for name, p in hf.named_parameters():
            block = _block_of(name, catalog)
            if (
                p.requires_grad
                and block is not None
                and cfg.first <= block <= cfg.last
                and (allowed is None or id(p) in allowed)
            ):
                frozen.append((name, p, p.detach().clone()))
        if not frozen:
            raise ConfigError(f"no trainable tensor lies in blocks {cfg.first}..{cfg.last}")
        self.frozen_, self.n_layers_ = frozen, n_layers
        self._start()
        return self

    @torch.no_grad()
    def before_step(self) -> None:
        """Zero the frozen tensors' gradients."""
        super().before_step()
        for _, p, _ in self.frozen_:
            if p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def after_step(self) -> None:
        """Put the frozen tensors back; record how far they had moved."""
        self._check()
        moved = max(float((p - ref).abs().max()) for _, p, ref in self.frozen_)
        for _, p, ref in self.frozen_:
            p.copy_(ref)
        self._record("moved", moved)
        super().after_step()

    def __repr__(self) -> str:
        return f"SafetyLayerFreeze(first={self.config.first}, last={self.config.last}, attached={self.is_attached})"
