"""Validate and resolve what blocking and monitoring share: directions, probes and the reference.

The reference is the aligned model's residual on the probe set: per prompt when it can be had
(a reference model, or statistics that kept per-prompt activations), so that a probe *batch*
gets the reference mean of the same prompts; otherwise only the probe-set mean.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, no_type_check

import torch
from torch import Tensor, nn

from revlens._types import ModuleLike, PathLike, TokenizerInput
from revlens.collect.stats import CheckpointStats, HistoryStats
from revlens.directions import Directions, resolve_directions
from revlens.errors import ConfigError, ProbeError, ShapeMismatchError, SiteError
from revlens.modes import SiteKind
from revlens.probes import Probes, ProbesInput, TokenizedProbes
from revlens.sites import LayerSpec, Site, SiteAccess, access, normalize_layers

DirectionsInput: TypeAlias = Directions | Tensor
"""Directions to act along: a :class:`~revlens.directions.Directions`, or a ``[layer, d]`` /
``[layer, k, d]`` tensor (with ``directions_layers``)."""

ReferenceInput: TypeAlias = HistoryStats | CheckpointStats | Tensor | ModuleLike | PathLike
"""The aligned reference: statistics (a history's aligned checkpoint, or one checkpoint's), a
``[layer, d]`` mean, an aligned model in memory, or its ``save_pretrained`` folder."""

ProbesArg: TypeAlias = ProbesInput | TokenizedProbes
"""Probes as a blocker / monitor takes them: any probe set, or one already tokenized."""

__all__ = [
    "DirectionsInput",
    "ProbeInputs",
    "ProbesArg",
    "ReferenceInput",
    "Resolved",
    "resolve_inputs",
]


@dataclass
class Resolved:
    """Inputs checked against one model.

    Attributes:
        sites: the blocked / monitored sites (one per layer).
        layers: blocked / monitored revlens layers.
        vectors: ``[layer, d]`` unit directions (float32, on the model's device): the first rows
            of ``basis``.
        basis: ``[layer, k, d]`` orthonormal rows per layer (float32, on the model's device).
        tokens, weights: the probe set (right-padded ids and position weights).
        mask: attention mask of the real (non-padding) tokens.
        ref_mean: ``[layer, d]`` float64 reference mean over the whole probe set.
        ref_prompt: ``[prompt, layer, d]`` per-prompt reference (float32), or ``None``.
    """

    sites: list[Site]
    layers: list[int]
    vectors: Tensor
    tokens: Tensor
    weights: Tensor
    mask: Tensor
    ref_mean: Tensor
    ref_prompt: Tensor | None
    basis: Tensor | None = None

    def __post_init__(self) -> None:
        if self.basis is None:
            self.basis = self.vectors[:, None, :]

    def truncated(self, k: int) -> "Resolved":
        """The same inputs with the first ``k`` rows of each layer's basis."""
        from dataclasses import replace

        basis = self.basis[:, :k].contiguous()  # type: ignore[index]
        return replace(self, vectors=basis[:, 0], basis=basis)


def _directions(directions: Any, dir_layers: Any) -> Directions:
    if isinstance(directions, Tensor) and dir_layers is None:
        raise ConfigError(
            "directions given as a tensor need their layers: pass directions_layers=[...]"
        )
    if not isinstance(directions, (Directions, Tensor)):
        raise ConfigError(
            "directions must be a revlens Directions or a [layer, d] / [layer, k, d] tensor; got "
            f"{type(directions).__name__}"
        )
    return resolve_directions(directions, layers=dir_layers)


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


def _tokenize(probes: Any, tokenizer: Any, reader: SiteAccess) -> TokenizedProbes:
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
    reference: Any, sites: list[Site], reader: SiteAccess, tok: TokenizedProbes, batch_size: int
) -> tuple[Tensor, Tensor | None]:
    from revlens.collect import CheckpointStats, HistoryStats
    from revlens.model import LensModel

    layers = [s.layer for s in sites]
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
    if isinstance(reference, (str, Path, LensModel, nn.Module)) or hasattr(reference, "hook_dict"):
        ref = (
            _reference_model(reference, reader) if isinstance(reference, (str, Path)) else reference
        )
        ref_acc = access(ref)
        if ref_acc.d_model != d or ref_acc.n_layers != reader.n_layers:
            raise ShapeMismatchError(
                f"reference model has n_layers={ref_acc.n_layers}, d_model={ref_acc.d_model}; the trained "
                f"model has n_layers={reader.n_layers}, d_model={d}"
            )
        ref_sites = ref_acc.sites(layers, sites[0].kind)
        with torch.no_grad():
            rows = [
                torch.stack(
                    ref_acc.read(
                        b.tokens, b.weights, ref_sites, mask=_mask(b.tokens, b.last_index)
                    ),
                    dim=1,
                )
                .float()
                .cpu()
                for b in tok.batches(batch_size)
            ]
        prompt = torch.cat(rows)
        # read once into statistics: no second model is kept
        return prompt.to(torch.float64).mean(0), prompt
    raise ConfigError(
        f"reference must be a [layer, d] tensor, CheckpointStats, HistoryStats, a model or a save_pretrained dir; "
        f"got {type(reference).__name__}"
    )


def _reference_model(path: PathLike, reader: SiteAccess) -> nn.Module:
    """The plain Hugging Face model of a ``save_pretrained`` dir, built like the model being trained
    (its dtype and device) and streamed in (about one model of memory, read once, then dropped).
    No bridge: the reference is read through the same hooks as the trained model."""
    from revlens.loading import Swapper, empty_model

    model = empty_model(path, dtype=next(reader.module.parameters()).dtype, device=reader.device)
    Swapper(model).load(path)
    return model


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def resolve_inputs(
    model: ModuleLike,
    directions: DirectionsInput,
    probes: ProbesArg,
    reference: ReferenceInput,
    *,
    layers: LayerSpec = None,
    tokenizer: TokenizerInput | None = None,
    directions_layers: LayerSpec = None,
    site: SiteKind = "resid_post",
    batch_size: int = 64,
) -> tuple[SiteAccess, Resolved]:
    """Check ``directions``, ``probes`` and ``reference`` against ``model``; build its reader.

    Raises:
        ShapeMismatchError: directions or reference of another width / architecture.
        ProbeError: probes for another tokenizer, too long, or reference stats on other probes.
        SiteError: a layer the model or the directions do not have; directions of another site.
        ConfigError: malformed arguments.
    """
    dirs = _directions(directions, directions_layers)
    if dirs.site != site:
        raise SiteError(
            f"directions were fit at site {dirs.site!r}; this blocker / monitor reads {site!r}"
        )
    chosen = list(dirs.layers) if layers is None else normalize_layers(layers, list(dirs.layers))
    reader = access(model)
    sites = reader.sites(chosen, site)
    dirs.check_d_model(reader.d_model, "model being trained")
    if tokenizer is None:
        tokenizer = _tokenizer_of(model) or _tokenizer_of(reference)
    tok = _tokenize(probes, tokenizer, reader)
    mean, prompt = _reference(reference, sites, reader, tok, batch_size)
    basis = dirs.select(chosen).basis.to(device=reader.device, dtype=torch.float32)
    mask = (torch.arange(tok.tokens.shape[1])[None] < tok.lengths[:, None]).long()
    return reader, Resolved(
        sites,
        chosen,
        basis[:, 0],
        tok.tokens,
        tok.weights.to(torch.float32),
        mask,
        mean,
        prompt,
        basis,
    )


class ProbeInputs:
    """What a blocker and a monitor both hold: directions, probes and the aligned reference, and
    the layers / site they act on; :meth:`resolve` checks them against a model."""

    @no_type_check  # stored as given; resolve_inputs validates them (typed errors)
    def _store_inputs(
        self,
        directions: DirectionsInput,
        probes: ProbesArg,
        reference: ReferenceInput,
        *,
        layers: LayerSpec,
        tokenizer: TokenizerInput | None,
        directions_layers: LayerSpec,
        site: SiteKind,
    ) -> None:
        self.directions, self.probes, self.reference = directions, probes, reference
        self.layers, self.tokenizer, self.directions_layers, self.site = (
            layers,
            tokenizer,
            directions_layers,
            site,
        )

    def resolve(self, model: ModuleLike) -> tuple[SiteAccess, Resolved]:
        """:func:`resolve_inputs` with this object's inputs."""
        return resolve_inputs(
            model,
            self.directions,
            self.probes,
            self.reference,
            layers=self.layers,
            tokenizer=self.tokenizer,
            directions_layers=self.directions_layers,
            site=self.site,
        )
