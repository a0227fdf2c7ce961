"""The blocked quantity ``s_l(θ) = (μ_l(θ) − μ_l(aligned))·v_l`` on probe batches, and its
per-layer parameter gradients ``a_l = ∇θ s_l``.

The gradients come from **one** forward on the probe batch (stopped after the deepest blocked
layer) and either one backward per layer (``"loop"``: each ``s_l`` is built from its own layer's
activation, never from a stacked tensor, so its backward only runs through the blocks below that
layer: about ``(L+1)/2`` full backwards in total) or one batched backward
(``"vmap"``: ``torch.autograd.grad(is_grads_batched=True)``, ``L`` full backwards fused into
batched kernels). Measured on the lab model on CPU, the loop is faster (it skips work); on a GPU,
where small kernels are launch-bound, the batched one is the natural choice. A model with an op
that has no batching rule falls back to the loop (logged once).
"""

import logging

import torch
from jaxtyping import Float
from torch import Tensor, nn

from revlens.block.inputs import Resolved
from revlens.modes import GradBatching
from revlens.sites import SiteAccess

__all__ = ["GradBatching", "ProbeObjective"]

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


class ProbeObjective:
    """``s_l`` and its gradients on (cycling) probe batches of one model.

    Args:
        reader: the model's :class:`~revlens.sites.SiteAccess`.
        inputs: resolved directions, probes and reference.
        batch_size: prompts per batch (``None``: the whole probe set every time).
        seed: seed of the cycling order.
        grad_batching: ``"loop"``, ``"vmap"`` or ``"auto"`` (vmap on CUDA, loop otherwise).
    """

    def __init__(
        self,
        reader: SiteAccess,
        inputs: Resolved,
        *,
        batch_size: int | None = None,
        seed: int = 0,
        grad_batching: GradBatching = "auto",
    ) -> None:
        self.reader, self.inputs, self.batch_size = reader, inputs, batch_size
        n = inputs.tokens.shape[0]
        self._vec64 = inputs.vectors.cpu().double()
        self.ref_dot = (inputs.ref_mean * self._vec64).sum(-1)  # [layer], μ_ref·v
        self._order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        self._cursor = 0
        auto = "vmap" if reader.device.type == "cuda" else "loop"
        self.grad_batching = auto if grad_batching == "auto" else grad_batching

    def batch(self) -> Batch:
        """The next probe batch: ``tokens, weights, mask, μ_ref·v`` (trimmed to the last read position)."""
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
        if size == n or res.ref_prompt is None:
            ref_dot = self.ref_dot
        else:
            ref_dot = (res.ref_prompt[idx].double().mean(0) * self._vec64).sum(-1)
        return tokens, weights, mask, ref_dot

    def s_terms(self, batch: Batch) -> list[Tensor]:
        """``[s_1, ..., s_L]`` on ``batch`` as separate 0-d tensors (differentiable when grad
        mode is on; each one's graph holds only the blocks below its layer)."""
        tokens, weights, mask, ref_dot = batch
        per = self.reader.read(tokens, weights, self.inputs.sites, mask=mask)  # L x [batch, d]
        vec = self.inputs.vectors
        return [
            (h.mean(0) * vec[i].to(h.dtype)).sum() - ref_dot[i].to(h.device, h.dtype)
            for i, h in enumerate(per)
        ]

    def s(self, batch: Batch) -> Float[Tensor, " layer"]:
        """``s_l`` on ``batch`` (differentiable when grad mode is on)."""
        return torch.stack(self.s_terms(batch))

    def s_full(self, chunk: int = 256) -> Float[Tensor, " layer"]:
        """``s_l`` on the whole probe set, no grad, float64."""
        res = self.inputs
        with torch.no_grad():
            rows = [
                torch.stack(self.reader.read(res.tokens[sl], res.weights[sl], res.sites, mask=res.mask[sl]), dim=1)
                .double()
                .cpu()
                for sl in (slice(i, i + chunk) for i in range(0, res.tokens.shape[0], chunk))
            ]
        return (torch.cat(rows).mean(0) * self._vec64).sum(-1) - self.ref_dot

    def grads(self, terms: list[Tensor], params: list[nn.Parameter]) -> list[Tensor]:
        """Per-parameter ``[layer, *param.shape]`` blocks of ``a_l = ∇θ s_l`` (``terms`` from
        :meth:`s_terms`)."""
        k = len(terms)
        if self.grad_batching == "vmap":
            try:
                s = torch.stack(terms)
                eye = torch.eye(k, device=s.device, dtype=s.dtype)
                out = torch.autograd.grad(
                    s,
                    params,
                    grad_outputs=eye,
                    is_grads_batched=True,
                    allow_unused=True,
                    retain_graph=True,
                )
                return [
                    torch.zeros(k, *p.shape, device=p.device, dtype=p.dtype) if g is None else g
                    for g, p in zip(out, params, strict=True)
                ]
            except RuntimeError as exc:  # an op without a batching rule: fall back, once
                log.warning(
                    "batched per-layer gradients failed (%s); one backward per layer instead", exc
                )
                self.grad_batching = "loop"
        rows = [
            torch.autograd.grad(t, params, allow_unused=True, retain_graph=i < k - 1)
            for i, t in enumerate(terms)
        ]
        return [
            torch.stack([torch.zeros_like(p) if r[j] is None else r[j] for r in rows])
            for j, p in enumerate(params)
        ]
