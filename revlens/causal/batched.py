"""Many interventions per forward pass (DESIGN §4: intervention sweeps batched).

A :class:`Stack` is ``n`` copies of a probe batch, each intervened at one layer along its own
direction. :func:`run_stacks` evaluates a behaviour metric on the clean batch and on every copy
of every stack, with one of three strategies:

- ``"grow"`` (default): the clean batch runs once; at layer ``l`` a hook appends the intervened
  copies of the clean rows to the batch, so the prefix below ``l`` is computed once and reused,
  and every layer's copies share one forward (forward pre-hooks on the blocks and their
  attention modules repeat batch-shaped arguments such as the attention mask to the grown batch);
- ``"repeat"``: the batch is repeated up front and each copy is intervened in place (no prefix
  reuse; does not depend on how blocks receive their arguments);
- ``"loop"``: one forward per intervention (the reference the others are tested against).

Rows are chunked so that no forward holds more than ``max_rows`` rows.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from revlens.causal.interventions import apply_intervention
from revlens.causal.metrics import check_metric_output
from revlens.errors import RevlensError
from revlens.hooks import Site
from revlens.probes import ProbeBatch

__all__ = ["STRATEGIES", "Stack", "Strategy", "capture", "run_stacks"]

Strategy = Literal["grow", "repeat", "loop"]
STRATEGIES: tuple[str, ...] = ("grow", "repeat", "loop")


@dataclass(frozen=True)
class Stack:
    """``n`` intervened copies of a batch at one layer.

    Attributes:
        layer: revlens layer index.
        kind: ``"clamp"``, ``"patch"`` or ``"steer"``.
        vectors: one unit direction per copy ``[n, d]``.
        alphas: ``steer``: one α per copy ``[n]``.
        reference: ``clamp``: the reference mean ``[d]`` (``patch`` reads per-batch sources).
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
    values = metric(logits, _repeat_batch(batch, m) if m > 1 else batch)
    return check_metric_output(values, m * len(batch), metric).view(m, len(batch))


def capture(bridge: Any, tokens: Tensor, sites: Sequence[Site]) -> tuple[Tensor, dict[int, Tensor]]:
    """One forward: the logits and the activations ``[batch, pos, d]`` at ``sites``."""
    acts: dict[int, Tensor] = {}
    handles = []
    try:
        for s in sites:

            def hook(module: Any, args: Any, out: Tensor, layer: int = s.layer) -> None:
                acts[layer] = out.detach().clone()

            handles.append(bridge.hook_dict[s.hook_name].register_forward_hook(hook))
        logits = bridge(tokens)
    finally:
        for h in handles:
            h.remove()
    return logits, acts


def _reference(stack: Stack, sources: Mapping[int, Tensor] | None) -> Tensor | None:
    if stack.kind != "patch":
        return stack.reference
    if sources is None or stack.layer not in sources:
        raise RevlensError(f"patch at layer {stack.layer} has no source activation")
    return sources[stack.layer]


def _expand(x: Any, b: int, n: int) -> Any:
    if isinstance(x, tuple):
        return tuple(_expand(y, b, n) for y in x)
    if (
        isinstance(x, Tensor)
        and x.ndim >= 2
        and x.shape[0] != n
        and x.shape[0] > 1
        and x.shape[0] % b == 0
    ):
        return x[:b].repeat(n // b, *([1] * (x.ndim - 1)))
    return x


def _expander(b: int) -> Any:
    def pre_hook(module: Any, args: tuple, kwargs: dict) -> Any:
        if not args or not isinstance(args[0], Tensor) or args[0].shape[0] == b:
            return None
        n = args[0].shape[0]
        return (args[0], *(_expand(a, b, n) for a in args[1:])), {
            k: _expand(v, b, n) for k, v in kwargs.items()
        }

    return pre_hook


def _forward_grow(
    bridge: Any,
    tokens: Tensor,
    stacks: Sequence[Stack],
    sites: Mapping[int, Site],
    sources: Mapping[int, Tensor] | None,
    mask: Tensor | None,
) -> Tensor:
    b = tokens.shape[0]
    by_layer: dict[int, list[Stack]] = {}
    for st in stacks:
        by_layer.setdefault(st.layer, []).append(st)
    handles = []

    def site_hook(layer: int) -> Any:
        def hook(module: Any, args: Any, out: Tensor) -> Tensor:
            src = out[:b]
            pieces = [out]
            for st in by_layer[layer]:
                new = apply_intervention(
                    src[None],
                    st.kind,
                    st.vectors.to(out.device),
                    reference=_reference(st, sources),
                    alpha=st.alphas,
                    mask=mask,
                )  # type: ignore[arg-type]
                pieces.append(new.reshape(-1, *src.shape[1:]))
            return torch.cat(pieces)

        return hook

    try:
        pre = _expander(b)
        for block in getattr(bridge, "blocks", []):
            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            for name, child in block.named_children():
                if "attn" in name:
                    handles.append(child.register_forward_pre_hook(pre, with_kwargs=True))
        for layer in by_layer:
            handles.append(
                bridge.hook_dict[sites[layer].hook_name].register_forward_hook(site_hook(layer))
            )
        return bridge(tokens)
    finally:
        for h in handles:
            h.remove()


def _forward_repeat(
    bridge: Any,
    tokens: Tensor,
    stacks: Sequence[Stack],
    sites: Mapping[int, Site],
    sources: Mapping[int, Tensor] | None,
    mask: Tensor | None,
) -> Tensor:
    b = tokens.shape[0]
    m = 1 + sum(len(st) for st in stacks)
    offsets: dict[int, list[tuple[int, Stack]]] = {}
    row = b
    for st in stacks:
        offsets.setdefault(st.layer, []).append((row, st))
        row += len(st) * b
    handles = []

    def site_hook(layer: int) -> Any:
        def hook(module: Any, args: Any, out: Tensor) -> Tensor:
            out = out.clone()
            for start, st in offsets[layer]:
                seg = out[start : start + len(st) * b].view(len(st), b, *out.shape[1:])
                new = apply_intervention(
                    seg,
                    st.kind,
                    st.vectors.to(out.device),
                    reference=_reference(st, sources),
                    alpha=st.alphas,
                    mask=mask,
                )  # type: ignore[arg-type]
                out[start : start + len(st) * b] = new.reshape(-1, *out.shape[1:])
            return out

        return hook

    try:
        for layer in offsets:
            handles.append(
                bridge.hook_dict[sites[layer].hook_name].register_forward_hook(site_hook(layer))
            )
        return bridge(tokens.repeat(m, 1))
    finally:
        for h in handles:
            h.remove()


def _ordered(stacks: Sequence[Stack], strategy: str) -> list[int]:
    """Row order of the stacks in the output (grow: by layer, stable)."""
    idx = list(range(len(stacks)))
    return sorted(idx, key=lambda i: stacks[i].layer) if strategy == "grow" else idx


def run_stacks(
    bridge: Any,
    batch: ProbeBatch,
    stacks: Sequence[Stack],
    metric: Any,
    *,
    sites: Mapping[int, Site],
    sources: Mapping[int, Float[Tensor, "batch pos d_model"]] | None = None,
    mask: Bool[Tensor, "batch pos"] | None = None,
    strategy: Strategy = "grow",
    max_rows: int = 2048,
) -> tuple[Tensor, list[Tensor]]:
    """The metric on the clean batch ``[batch]`` and on each stack's copies (``[n, batch]`` each)."""
    b = len(batch)
    tokens = batch.tokens.to(next(bridge.parameters()).device)
    out = [torch.empty(len(st), b, dtype=torch.float64) for st in stacks]
    if strategy == "loop" or not stacks:
        clean = _score(bridge(tokens), batch, 1, metric)[0]
        for si, st in enumerate(stacks):
            for j in range(len(st)):
                logits = _forward_one(bridge, tokens, st.part(j, j + 1), sites, sources, mask)
                out[si][j] = _score(logits, batch, 1, metric)[0]
        return clean, out
    per_forward = max(1, max_rows // b - 1)
    units = [(si, j) for si, st in enumerate(stacks) for j in range(len(st))]
    clean: Tensor | None = None
    forward = _forward_grow if strategy == "grow" else _forward_repeat
    for start in range(0, len(units), per_forward):
        chunk = units[start : start + per_forward]
        parts: list[tuple[int, int, Stack]] = []
        for si, j in chunk:
            if parts and parts[-1][0] == si:
                s0, j0, _ = parts[-1]
                parts[-1] = (s0, j0, stacks[si].part(j0, j + 1))
            else:
                parts.append((si, j, stacks[si].part(j, j + 1)))
        order = _ordered([p[2] for p in parts], strategy)
        logits = forward(bridge, tokens, [parts[i][2] for i in order], sites, sources, mask)
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
    bridge: Any,
    tokens: Tensor,
    st: Stack,
    sites: Mapping[int, Site],
    sources: Mapping[int, Tensor] | None,
    mask: Tensor | None,
) -> Tensor:
    def hook(module: Any, args: Any, out: Tensor) -> Tensor:
        return apply_intervention(
            out[None],
            st.kind,
            st.vectors.to(out.device),
            reference=_reference(st, sources),
            alpha=st.alphas,
            mask=mask,
        )[0]  # type: ignore[arg-type]

    handle = bridge.hook_dict[sites[st.layer].hook_name].register_forward_hook(hook)
    try:
        return bridge(tokens)
    finally:
        handle.remove()
