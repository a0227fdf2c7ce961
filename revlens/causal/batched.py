"""Many interventions per forward pass (DESIGN §4: intervention sweeps batched).

A :class:`Stack` is ``n`` copies of a probe batch, each intervened at one layer along its own
direction. :func:`run_stacks` evaluates a behaviour metric on the clean batch and on every copy
of every stack, with one of three strategies:

- ``"grow"`` (default): the clean batch runs once; at layer ``l`` a hook appends the intervened
  copies of the clean rows to the batch, so the prefix below ``l`` is computed once and reused,
  and every layer's copies share one forward (forward pre-hooks on the blocks and their
  attention modules repeat the model's batch-shaped arguments, such as the attention mask,
  rotary embeddings or ALiBi biases, to the grown batch, however the family passes them). At a
  site inside a block (``resid_mid``, ``attn_out``, ``mlp_out``) the copies are appended at the
  block's input and intervened at the site, so the residual beside the site grows with them;
- ``"repeat"``: the batch is repeated up front and each copy is intervened in place (no prefix
  reuse; does not depend on how blocks receive their arguments);
- ``"loop"``: one forward per intervention (the reference the others are tested against).

Rows are chunked so that no forward holds more than ``max_rows`` rows.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from revlens._types import ModuleLike
from revlens.causal.kinds import intervention
from revlens.metrics import call_metric
from revlens.modes import STRATEGIES, Strategy, check_mode
from revlens.probes import ProbeBatch
from revlens.sites import Site, SiteAccess, access

__all__ = ["STRATEGIES", "Stack", "Strategy", "run_stacks"]


@dataclass(frozen=True)
class Stack:
    """``n`` intervened copies of a batch at one layer.

    Attributes:
        layer: revlens layer index.
        kind: a registered intervention kind (:mod:`revlens.causal.kinds`).
        vectors: one unit direction per copy ``[n, d]``, or one orthonormal k-frame per copy
            ``[n, k, d]`` (e.g. clamp / patch the whole subspace: ``h ← h − QᵀQ(h − ref)``;
            ``k = 1`` frames equal ``[n, d]`` directions exactly; a kind's ``max_rank`` bounds k).
        alphas: kinds reading a scale (``steer``): one α per copy ``[n]``.
        reference: kinds reading a mean (``clamp``): the reference mean ``[d]`` (kinds reading a
            source, ``patch``, read the per-batch sources of :func:`run_stacks`).
    """

    layer: int
    kind: str
    vectors: Tensor
    alphas: Tensor | None = None
    reference: Tensor | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def part(self, start: int, stop: int) -> "Stack":
        """Copies ``start:stop`` of this stack."""
        alphas = self.alphas[start:stop] if self.alphas is not None else None
        return Stack(self.layer, self.kind, self.vectors[start:stop], alphas, self.reference)


def _repeat_batch(batch: ProbeBatch, m: int) -> ProbeBatch:
    return ProbeBatch(
        batch.tokens.repeat(m, 1),
        batch.last_index.repeat(m),
        batch.weights.repeat(m, 1),
        batch.indices.repeat(m),
        batch.labels * m if batch.labels is not None else None,
    )


def _score(logits: Tensor, batch: ProbeBatch, m: int, metric: Any) -> Tensor:
    values = call_metric(metric, logits, _repeat_batch(batch, m) if m > 1 else batch)
    return values.view(m, len(batch))


def _intervened(
    h: Tensor, st: Stack, sources: Mapping[int, Tensor] | None, mask: Tensor | None
) -> Tensor:
    """``h`` ``[copies, batch, pos, d]`` (1 copy broadcasts) intervened along the stack's directions
    (or subspaces): its kind's :meth:`~revlens.causal.kinds.Intervention.edit`."""
    kind = intervention(st.kind)
    vectors = st.vectors.to(h.device)
    frames = vectors[:, None] if vectors.ndim == 2 else vectors
    where = f" at layer {st.layer}"
    kind.check_rank(int(frames.shape[1]), where)
    source = sources.get(st.layer) if sources is not None else None
    ref = kind.pick(mean=st.reference, source=source, alpha=st.alphas, where=where)
    return kind.edit(h, frames, ref, mask)


# sites on the stream between blocks: intervened copies are appended right there; a site inside a
# block (what attention / MLP adds, resid_mid) has a residual beside it that must grow with it, so
# plain copies are appended at the block's input and intervened at the site
_BETWEEN_BLOCKS = ("resid_post", "resid_pre", "ln_final")


def _row_offsets(stacks: Sequence[Stack], b: int) -> dict[int, list[tuple[int, Stack]]]:
    """Layer -> (first row, stack) of each stack's copies after the ``b`` clean rows, in forward order."""
    offsets: dict[int, list[tuple[int, Stack]]] = {}
    row = b
    for st in stacks:  # in forward order (by layer): rows are appended in this order
        offsets.setdefault(st.layer, []).append((row, st))
        row += len(st) * b
    return offsets


def _edit_copies(
    segments: list[tuple[int, Stack]],
    b: int,
    sources: Mapping[int, Tensor] | None,
    mask: Tensor | None,
) -> Any:
    """A hook intervening in place on each stack's block of ``len(stack) × b`` copied rows."""

    def hook(out: Tensor) -> Tensor:
        out = out.clone()
        for start, st in segments:
            seg = out[start : start + len(st) * b].view(len(st), b, *out.shape[1:])
            out[start : start + len(st) * b] = _intervened(seg, st, sources, mask).reshape(
                -1, *out.shape[1:]
            )
        return out

    return hook


def _forward_grow(
    acc: SiteAccess,
    tokens: Tensor,
    stacks: Sequence[Stack],
    sites: Mapping[int, Site],
    sources: Mapping[int, Tensor] | None,
    mask: Tensor | None,
) -> Tensor:
    b = tokens.shape[0]
    offsets = _row_offsets(stacks, b)

    def append_intervened(layer: int) -> Any:
        def hook(out: Tensor) -> Tensor:
            src = out[:b]
            pieces = [out]
            for _, st in offsets[layer]:
                pieces.append(_intervened(src[None], st, sources, mask).reshape(-1, *src.shape[1:]))
            return torch.cat(pieces)

        return hook

    def append_copies(layer: int) -> Any:
        def hook(out: Tensor) -> Tensor:
            copies = sum(len(st) for _, st in offsets[layer])
            return torch.cat([out, out[:b].repeat(copies, *([1] * (out.ndim - 1)))])

        return hook

    edits: list[tuple[Site, Any]] = []
    for layer in offsets:
        site = sites[layer]
        if site.kind in _BETWEEN_BLOCKS:
            edits.append((site, append_intervened(layer)))
        else:
            edits += [
                (acc.sites([layer], "resid_pre")[0], append_copies(layer)),
                (site, _edit_copies(offsets[layer], b, sources, mask)),
            ]
    with acc.growing_batch(b), acc.hooked(edits):
        return acc.forward(tokens)


def _forward_repeat(
    acc: SiteAccess,
    tokens: Tensor,
    stacks: Sequence[Stack],
    sites: Mapping[int, Site],
    sources: Mapping[int, Tensor] | None,
    mask: Tensor | None,
) -> Tensor:
    b = tokens.shape[0]
    m = 1 + sum(len(st) for st in stacks)
    offsets = _row_offsets(stacks, b)
    with acc.hooked(
        [(sites[layer], _edit_copies(offsets[layer], b, sources, mask)) for layer in offsets]
    ):
        return acc.forward(tokens.repeat(m, 1))


def _ordered(stacks: Sequence[Stack], by_layer: bool) -> list[int]:
    """Row order of the stacks in the output (grow: by layer, stable)."""
    idx = list(range(len(stacks)))
    return sorted(idx, key=lambda i: stacks[i].layer) if by_layer else idx


def run_stacks(
    model: ModuleLike,
    batch: ProbeBatch,
    stacks: Sequence[Stack],
    metric: Callable[..., object],
    *,
    sites: Mapping[int, Site],
    sources: Mapping[int, Float[Tensor, "batch pos d_model"]] | None = None,
    mask: Bool[Tensor, "batch pos"] | None = None,
    strategy: Strategy = "grow",
    max_rows: int = 2048,
) -> tuple[Tensor, list[Tensor]]:
    """The metric on the clean batch ``[batch]`` and on each stack's copies (``[n, batch]`` each).

    ``model``: a ``LensModel``, bridge, HF model or :class:`~revlens.sites.SiteAccess`.
    """
    acc = access(model)
    b = len(batch)
    tokens = batch.tokens
    out = [torch.empty(len(st), b, dtype=torch.float64) for st in stacks]
    check_mode("strategy", strategy, STRATEGIES)
    forward = _FORWARDS[strategy]
    if forward is None or not stacks:  # "loop"
        clean = _score(acc.forward(tokens), batch, 1, metric)[0]
        for si, st in enumerate(stacks):
            for j in range(len(st)):
                logits = _forward_one(acc, tokens, st.part(j, j + 1), sites, sources, mask)
                out[si][j] = _score(logits, batch, 1, metric)[0]
        return clean, out
    per_forward = max(1, max_rows // b - 1)
    units = [(si, j) for si, st in enumerate(stacks) for j in range(len(st))]
    clean: Tensor | None = None
    for start in range(0, len(units), per_forward):
        chunk = units[start : start + per_forward]
        parts: list[tuple[int, int, Stack]] = []
        for si, j in chunk:
            if parts and parts[-1][0] == si:
                s0, j0, _ = parts[-1]
                parts[-1] = (s0, j0, stacks[si].part(j0, j + 1))
            else:
                parts.append((si, j, stacks[si].part(j, j + 1)))
        order = _ordered([p[2] for p in parts], forward is _forward_grow)
        logits = forward(acc, tokens, [parts[i][2] for i in order], sites, sources, mask)
        values = _score(logits, batch, 1 + len(chunk), metric)
        if clean is None:
            clean = values[0]
        row = 1
        for i in order:
            si, j0, part = parts[i]
            out[si][j0 : j0 + len(part)] = values[row : row + len(part)]
            row += len(part)
    return clean, out  # type: ignore[return-value]


def _forward_one(
    acc: SiteAccess,
    tokens: Tensor,
    st: Stack,
    sites: Mapping[int, Site],
    sources: Mapping[int, Tensor] | None,
    mask: Tensor | None,
) -> Tensor:
    def hook(out: Tensor) -> Tensor:
        return _intervened(out[None], st, sources, mask)[0]

    with acc.hooked([(sites[st.layer], hook)]):
        return acc.forward(tokens)


# strategy -> how a chunk of stacks shares one forward (``None``: one forward per intervention)
_FORWARDS: dict[str, Any] = {"grow": _forward_grow, "repeat": _forward_repeat, "loop": None}
