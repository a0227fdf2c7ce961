"""Validate and resolve what blocking and monitoring share: directions, probes and the reference.

The reference is the aligned model's residual on the probe set: per prompt when it can be had
(a reference model, or statistics that kept per-prompt activations), so that a probe *batch*
gets the reference mean of the same prompts; otherwise only the probe-set mean.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from revlens.block.residual import ResidualReader
from revlens.directions import Directions
from revlens.errors import ConfigError, ProbeError, ShapeMismatchError, SiteError
from revlens.hooks import normalize_layers
from revlens.probes import Probes, TokenizedProbes

__all__ = ["Resolved", "resolve_inputs"]


@dataclass
class Resolved:
    """Inputs checked against one model.

    Attributes:
        layers: blocked / monitored revlens layers.
        vectors: ``[layer, d]`` unit directions (float32, on the model's device).
        tokens, weights: the probe set (right-padded ids and position weights).
        mask: attention mask of the real (non-padding) tokens.
        ref_mean: ``[layer, d]`` float64 reference mean over the whole probe set.
        ref_prompt: ``[prompt, layer, d]`` per-prompt reference (float32), or ``None``.
    """

    layers: list[int]
    vectors: Tensor
    tokens: Tensor
    weights: Tensor
    mask: Tensor
    ref_mean: Tensor
    ref_prompt: Tensor | None


def _directions(directions: Any, dir_layers: Any) -> Directions:
    if isinstance(directions, Directions):
        return directions
    if isinstance(directions, Tensor):
        if dir_layers is None:
            raise ConfigError(
                "directions given as a tensor need their layers: pass directions_layers=[...]"
            )
        return Directions.from_tensor(directions, dir_layers)
    raise ConfigError(
        f"directions must be a revlens Directions or a [layer, d] tensor; got {type(directions).__name__}"
    )


def _tokenizer_of(obj: Any) -> Any:
    from revlens.model import LensModel

    if isinstance(obj, LensModel):
        return obj.tokenizer
    if hasattr(obj, "hook_dict") and hasattr(obj, "tokenizer"):
        return obj.tokenizer
    if isinstance(obj, (str, Path)) and Path(obj).is_dir():
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(obj))
        except (OSError, ValueError):
            return None
    return None


def _tokenize(probes: Any, tokenizer: Any, reader: ResidualReader) -> TokenizedProbes:
    if isinstance(probes, TokenizedProbes):
        tok = probes
    else:
        if isinstance(probes, (list, tuple)):
            probes = Probes(list(probes))
        if not isinstance(probes, Probes):
            raise ProbeError(
                f"probes must be a Probes, TokenizedProbes or a list of prompts; got {type(probes).__name__}"
            )
        if probes.is_text and tokenizer is None:
            raise ProbeError(
                "text probes need a tokenizer: pass tokenizer=..., or a reference model/dir that has one"
            )
        if tokenizer is not None and len(tokenizer) > reader.vocab_size:
            raise ProbeError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {reader.vocab_size}: "
                "probes written for another model's tokenizer?"
            )
        tok = (
            probes.tokenize(tokenizer, n_ctx=reader.n_ctx or None)
            if probes.is_text
            else probes.tokenize(_IdsOnly(reader.vocab_size), n_ctx=reader.n_ctx or None)
        )
    top = int(tok.tokens.max())
    if top >= reader.vocab_size:
        raise ProbeError(
            f"probe token id {top} is outside the model's vocabulary (size {reader.vocab_size}): "
            "probes tokenized for another model?"
        )
    if reader.n_ctx and tok.tokens.shape[1] > reader.n_ctx:
        raise ProbeError(
            f"probes have {tok.tokens.shape[1]} positions; the model's context is {reader.n_ctx}"
        )
    return tok


class _IdsOnly:
    """Stand-in tokenizer for token-id probes (vocabulary size and pad id only)."""

    pad_token_id = 0
    unk_token_id = None

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get_vocab(self) -> dict[str, int]:
        return {}


def _mask(tokens: Tensor, last_index: Tensor) -> Tensor:
    return (torch.arange(tokens.shape[1])[None] <= last_index[:, None]).long()


def _check_ref(mean: Tensor, layers: list[int], d: int, what: str) -> None:
    if mean.shape != (len(layers), d):
        raise ShapeMismatchError(
            f"reference {what} has shape {tuple(mean.shape)}; expected [{len(layers)} layers, d_model={d}] "
            "(a reference from another model?)"
        )


def _reference(
    reference: Any, layers: list[int], reader: ResidualReader, tok: TokenizedProbes, batch_size: int
) -> tuple[Tensor, Tensor | None]:
    from revlens.collect import CheckpointStats, HistoryStats
    from revlens.model import LensModel

    d = reader.d_model
    if isinstance(reference, HistoryStats):
        fp = reference.meta.get("probe_fingerprint")
        if fp is not None and fp != tok.fingerprint():
            raise ProbeError(
                "the reference statistics were collected on another probe set (fingerprint differs); "
                "pass the probes used for collect(...)"
            )
        if reference.d_model != d:
            raise ShapeMismatchError(
                f"reference statistics have d_model={reference.d_model}, the model {d}"
            )
        reference = reference[reference.aligned_name]
    if isinstance(reference, CheckpointStats):
        missing = [layer for layer in layers if layer not in reference.layers]
        if missing:
            raise SiteError(
                f"reference statistics lack layers {missing}; collected layers: {reference.layers}"
            )
        idx = [reference.layers.index(layer) for layer in layers]
        mean = reference.mean[idx].to(torch.float64)
        _check_ref(mean, layers, d, f"statistics {reference.name!r}")
        acts = reference.activations
        prompt = acts[:, idx].float() if acts is not None and acts.shape[0] == len(tok) else None
        return mean, prompt
    if isinstance(reference, Tensor):
        mean = reference.detach().cpu().to(torch.float64)
        _check_ref(mean, layers, d, "tensor")
        return mean, None
    if isinstance(reference, (str, Path, LensModel)) or hasattr(reference, "hook_dict"):
        from revlens.collect import collect_checkpoint
        from revlens.hooks import resolve_sites

        lm = LensModel.boot(reference)
        if lm.d_model != d or lm.n_layers != reader.n_layers:
            raise ShapeMismatchError(
                f"reference model has n_layers={lm.n_layers}, d_model={lm.d_model}; the trained model has "
                f"n_layers={reader.n_layers}, d_model={d}"
            )
        st = collect_checkpoint(
            lm,
            None,
            tok,
            resolve_sites(lm.bridge, layers),
            n_bootstrap=0,
            keep=True,
            batch_size=batch_size,
            name="reference",
        )
        return st.mean.to(
            torch.float64
        ), st.activations.float() if st.activations is not None else None
    if isinstance(reference, nn.Module):
        ref_reader = ResidualReader(reference, layers)
        if ref_reader.d_model != d or ref_reader.n_layers != reader.n_layers:
            raise ShapeMismatchError(
                f"reference model has n_layers={ref_reader.n_layers}, d_model={ref_reader.d_model}; the trained "
                f"model has n_layers={reader.n_layers}, d_model={d}"
            )
        with torch.no_grad():
            rows = [
                ref_reader.per_prompt(b.tokens, b.weights, mask=_mask(b.tokens, b.last_index))
                .float()
                .cpu()
                for b in tok.batches(batch_size)
            ]
        prompt = torch.cat(rows)
        return prompt.to(torch.float64).mean(0), prompt
    raise ConfigError(
        f"reference must be a [layer, d] tensor, CheckpointStats, HistoryStats, a model or a save_pretrained dir; "
        f"got {type(reference).__name__}"
    )


def resolve_inputs(
    model: Any,
    directions: Any,
    probes: Any,
    reference: Any,
    *,
    layers: Any = None,
    tokenizer: Any = None,
    directions_layers: Any = None,
    site: str = "resid_post",
    batch_size: int = 64,
) -> tuple[ResidualReader, Resolved]:
    """Check ``directions``, ``probes`` and ``reference`` against ``model``; build its reader.

    Raises:
        ShapeMismatchError: directions or reference of another width / architecture.
        ProbeError: probes for another tokenizer, too long, or reference stats on other probes.
        SiteError: a layer the model or the directions do not have; a site other than resid_post.
        ConfigError: malformed arguments.
    """
    if site != "resid_post":
        raise SiteError(f"blocking and monitoring read site 'resid_post' only; got {site!r}")
    dirs = _directions(directions, directions_layers)
    if dirs.site != "resid_post":
        raise SiteError(
            f"directions were fit at site {dirs.site!r}; blocking and monitoring need 'resid_post'"
        )
    chosen = list(dirs.layers) if layers is None else normalize_layers(layers, list(dirs.layers))
    reader = ResidualReader(model, chosen)
    dirs.check_d_model(reader.d_model, "model being trained")
    if tokenizer is None:
        tokenizer = _tokenizer_of(model) or _tokenizer_of(reference)
    tok = _tokenize(probes, tokenizer, reader)
    mean, prompt = _reference(reference, chosen, reader, tok, batch_size)
    device = next(reader.module.parameters()).device
    vectors = dirs.select(chosen).vectors.to(device=device, dtype=torch.float32)
    mask = (torch.arange(tok.tokens.shape[1])[None] < tok.lengths[:, None]).long()
    return reader, Resolved(
        chosen, vectors, tok.tokens, tok.weights.to(torch.float32), mask, mean, prompt
    )
