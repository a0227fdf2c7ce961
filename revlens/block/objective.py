"""The blocked quantities on probe batches, and their parameter gradients ``a_r = ∇θ s_r``.

One **constraint row** ``r`` per (layer, basis row[, prompt]): with a rank-k basis ``B_l`` at
layer ``l``, ``s_{l,j}(θ) = (μ_l(θ) − μ_l(aligned))·b_{l,j}`` for ``j = 1..k`` (``k = 1``: the
paper's ``s_l`` along ``v_l``). ``constraint="confine"`` uses the rows of an orthonormal basis of
the *complement* of ``span(B_l)`` instead (``d − k`` rows per layer: the drift is held inside the
subspace). ``per_prompt=True`` makes each probe prompt's projection a row of its own,
``(h_l(θ, x_i) − h_l(aligned, x_i))·b_{l,j}``: ``batch × k`` rows per layer instead of ``k``.

The gradients come from **one** forward on the probe batch (stopped after the deepest blocked
layer) and either one backward per layer (``"loop"``: each layer's rows are built from its own
layer's activation, never from a stacked tensor, so their backward only runs through the blocks
below that layer: about ``(L+1)/2`` full backwards per basis row in total; measured on the lab
model on CPU this beats batching a layer's rows) or one batched backward over every row (``"vmap"``:
``torch.autograd.grad(is_grads_batched=True)``). The cost grows with the number of rows —
``k·L``, ``batch·k·L`` per prompt, ``(d − k)·L`` to confine — and so does the memory of the
gradients kept between refreshes (a :class:`~revlens.block.projection.Jacobian`: per *trained*
parameter, the rows that reach it; ``docs/scale.md`` "Blocking cost"). Measured on the lab model on
CPU, the loop is faster (it skips work); on a GPU,
where small kernels are launch-bound, the batched one is the natural choice. A model with an op
that has no batching rule falls back to the loop (logged once).
"""

import logging
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from revlens.block.inputs import Resolved
from revlens.block.projection import Jacobian
from revlens.directions.subspace import complement
from revlens.errors import ConfigError
from revlens.modes import BlockConstraint, GradBatching
from revlens.sites import SiteAccess

__all__ = ["GradBatching", "ProbeObjective"]

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor, Tensor, Any]


class ProbeObjective:
    """The constraint rows ``s_r`` and their gradients on (cycling) probe batches of one model.

    Args:
        reader: the model's :class:`~revlens.sites.SiteAccess`.
        inputs: resolved directions (``basis [layer, k, d]``), probes and reference.
        batch_size: prompts per batch (``None``: the whole probe set every time).
        seed: seed of the cycling order.
        grad_batching: ``"loop"``, ``"vmap"`` or ``"auto"`` (vmap on CUDA, loop otherwise).
        constraint: ``"equal"`` / ``"one_sided"`` (rows along the basis) or ``"confine"`` (rows
            along its complement).
        per_prompt: one row per probe prompt and basis row (needs a per-prompt reference).

    Attributes:
        layout: per layer, the number of rows it contributes (``m_l``, times the batch size per
            prompt), in the order of :meth:`s_terms`.
    """

    def __init__(
        self,
        reader: SiteAccess,
        inputs: Resolved,
        *,
        batch_size: int | None = None,
        seed: int = 0,
        grad_batching: GradBatching = "auto",
        constraint: BlockConstraint = "equal",
        per_prompt: bool = False,
    ) -> None:
        self.reader, self.inputs, self.batch_size = reader, inputs, batch_size
        self.constraint, self.per_prompt = constraint, per_prompt
        n = inputs.tokens.shape[0]
        if per_prompt and inputs.ref_prompt is None:
            raise ConfigError(
                "per_prompt=True needs a per-prompt reference: the aligned model, or statistics "
                "that kept per-prompt activations (keep='reference')"
            )
        self._vec64 = inputs.vectors.cpu().double()
        self.ref_dot = (inputs.ref_mean * self._vec64).sum(-1)  # [layer], μ_ref·v
        basis = inputs.basis.cpu().double()
        self.rows64 = [complement(b) if constraint == "confine" else b for b in basis]
        self.rows = [r.to(device=inputs.vectors.device, dtype=torch.float32) for r in self.rows64]
        self.legacy = (
            constraint != "confine" and basis.shape[1] == 1 and not per_prompt
        )  # the k = 1 path
        self._order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self._cursor = 0
        auto = "vmap" if reader.device.type == "cuda" else "loop"
        self.grad_batching = auto if grad_batching == "auto" else grad_batching
        self.layout: list[int] = []

    @property
    def n_rows(self) -> int:
        """Constraint rows per measurement (per prompt: for a full batch)."""
        size = (
            self.inputs.tokens.shape[0]
            if self.batch_size is None
            else min(self.batch_size, self.inputs.tokens.shape[0])
        )
        return sum(r.shape[0] for r in self.rows) * (size if self.per_prompt else 1)

    def batch(self) -> Batch:
        """The next probe batch: ``tokens, weights, mask, reference`` (trimmed to the last read
        position); the reference is ``μ_ref·v`` per layer (k = 1), else per layer the reference's
        coordinates on the rows (``[m_l]``, or ``[batch, m_l]`` per prompt)."""
        res = self.inputs
        n = res.tokens.shape[0]
        size = n if self.batch_size is None else min(self.batch_size, n)
        if size == n:
            idx = torch.arange(n)
        else:  # a window of the seeded permutation, wrapping around: every prompt takes turns
            idx = self._order[(self._cursor + torch.arange(size)) % n]
            self._cursor = (self._cursor + size) % n
        tokens, weights, mask = res.tokens[idx], res.weights[idx], res.mask[idx]
        width = int((weights > 0).nonzero()[:, 1].max()) + 1  # causal: later positions unused
        tokens, weights, mask = tokens[:, :width], weights[:, :width], mask[:, :width]
        if self.legacy:
            if size == n or res.ref_prompt is None:
                ref: Any = self.ref_dot
            else:
                ref = (res.ref_prompt[idx].double().mean(0) * self._vec64).sum(-1)
            return tokens, weights, mask, ref
        if self.per_prompt:
            prompts = res.ref_prompt[idx].double()  # type: ignore[index]
            ref = [prompts[:, i] @ r.T for i, r in enumerate(self.rows64)]
        else:
            mean = (
                res.ref_mean
                if size == n or res.ref_prompt is None
                else res.ref_prompt[idx].double().mean(0)
            )
            ref = [mean[i] @ r.T for i, r in enumerate(self.rows64)]
        return tokens, weights, mask, ref

    def s_terms(self, batch: Batch) -> list[Tensor]:
        """One 1-D tensor of rows per layer (differentiable when grad mode is on; each one's graph
        holds only the blocks below its layer); sets :attr:`layout`."""
        tokens, weights, mask, ref = batch
        per = self.reader.read(tokens, weights, self.inputs.sites, mask=mask)  # L x [batch, d]
        if self.legacy:
            vec = self.inputs.vectors
            out = [
                ((h.mean(0) * vec[i].to(h.dtype)).sum() - ref[i].to(h.device, h.dtype))[None]
                for i, h in enumerate(per)
            ]
        elif self.per_prompt:
            out = [
                (h @ self.rows[i].to(h.dtype).T - ref[i].to(h.device, h.dtype)).reshape(-1)
                for i, h in enumerate(per)
            ]
        else:
            out = [
                h.mean(0) @ self.rows[i].to(h.dtype).T - ref[i].to(h.device, h.dtype)
                for i, h in enumerate(per)
            ]
        self.layout = [int(t.shape[0]) for t in out]
        return out

    def first_rows(self, terms: list[Tensor]) -> Tensor:
        """Per layer, ``s`` along the first basis row (per prompt: its mean over the batch), from
        :meth:`s_terms`' rows; NaN when confining (the rows are the complement's)."""
        if self.constraint == "confine":
            return torch.full((len(terms),), float("nan"), dtype=torch.float64)
        out = []
        for i, t in enumerate(terms):
            t = t.detach().double().cpu()
            k = self.rows[i].shape[0]
            out.append(t.view(-1, k)[:, 0].mean() if self.per_prompt else t[0])
        return torch.stack(out)

    def s(self, batch: Batch) -> Float[Tensor, " rows"]:
        """Every row on ``batch`` (differentiable when grad mode is on)."""
        return torch.cat(self.s_terms(batch))

    def s_full(self, chunk: int = 256) -> Float[Tensor, " layer"]:
        """``s_l`` along the first basis row (``v_l``) on the whole probe set, no grad, float64."""
        return (self._full_means(chunk) * self._vec64).sum(-1) - self.ref_dot

    def subspace_full(self, chunk: int = 256) -> Float[Tensor, "layer k"]:
        """The drift's coordinates on every basis row on the whole probe set, no grad, float64."""
        basis = self.inputs.basis.cpu().double()
        return torch.einsum("ld,lkd->lk", self._full_means(chunk) - self.inputs.ref_mean, basis)

    def _full_means(self, chunk: int) -> Tensor:
        res = self.inputs
        with torch.no_grad():
            rows = [
                torch.stack(
                    self.reader.read(res.tokens[sl], res.weights[sl], res.sites, mask=res.mask[sl]),
                    dim=1,
                )
                .double()
                .cpu()
                for sl in (slice(i, i + chunk) for i in range(0, res.tokens.shape[0], chunk))
            ]
        return torch.cat(rows).mean(0)

    def grads(self, terms: list[Tensor], params: list[nn.Parameter]) -> Jacobian:
        """``A``: the gradients ``a_r = ∇θ s_r`` of every row over ``params`` (``terms`` from
        :meth:`s_terms`, rows in their order), as a :class:`~revlens.block.projection.Jacobian`:
        per parameter only the rows that reach it, parameters no row reaches left out."""
        n_rows = sum(int(t.shape[0]) for t in terms)
        if self.grad_batching == "vmap":
            try:
                return _batched(torch.cat(terms), params, retain=True)
            except RuntimeError as exc:  # an op without a batching rule: fall back, once
                log.warning(
                    "batched per-layer gradients failed (%s); one backward per layer instead", exc
                )
                self.grad_batching = "loop"
        rows = [(t, j) for t in terms for j in range(t.shape[0])]
        per: list[list[tuple[int, Tensor]]] = [[] for _ in params]
        for n, (t, j) in enumerate(rows):
            got = torch.autograd.grad(
                t[j], params, allow_unused=True, retain_graph=n < len(rows) - 1
            )
            for i, g in enumerate(got):
                if g is not None:
                    per[i].append((n, g))
        kept, blocks, index = [], [], []
        for i, p in enumerate(params):
            if per[i]:
                idx = [n for n, _ in per[i]]
                kept.append(p)
                blocks.append(torch.stack([g for _, g in per[i]]))
                index.append(None if len(idx) == n_rows else torch.tensor(idx))
                per[i] = []  # free the row tensors as soon as they are stacked
        return Jacobian(n_rows, kept, blocks, index)


def _batched(s: Tensor, params: list[nn.Parameter], *, retain: bool) -> Jacobian:
    """``A`` by one batched backward (a parameter no row reaches is left out)."""
    k = s.shape[0]
    eye = torch.eye(k, device=s.device, dtype=s.dtype)
    out = torch.autograd.grad(
        s, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True, retain_graph=retain
    )
    kept = [(p, g) for g, p in zip(out, params, strict=True) if g is not None]
    return Jacobian(k, [p for p, _ in kept], [g for _, g in kept], [None] * len(kept))
