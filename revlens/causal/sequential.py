"""Interventions one at a time, for metrics that run the model themselves.

The batched sweep (:mod:`revlens.causal.batched`) stacks many intervened copies of a batch into
one forward and scores the *logits* of each copy. A :class:`~revlens.metrics.ModelMetric`
(greedy generation, judges, teacher-forced phrases) runs its own forwards, so it is scored once
per intervention: the intervention is registered as a hook (:func:`~revlens.causal.intervene`),
the metric runs (every forward it makes — each generated token's included — is intervened), the
hook is removed. :func:`run_sequential` has :func:`~revlens.causal.batched.run_stacks`' signature
and output, so a study uses one or the other without knowing which.
"""

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from revlens._types import MetricBatch, ModuleLike
from revlens.causal.batched import Stack
from revlens.causal.interventions import intervene, reference_keyword
from revlens.causal.kinds import intervention
from revlens.metrics import MetricLike, score_metric
from revlens.sites import Site

__all__ = ["run_sequential"]


def run_sequential(
    model: ModuleLike,
    batch: MetricBatch,
    stacks: Sequence[Stack],
    metric: MetricLike,
    *,
    sites: Mapping[int, Site],
    sources: Mapping[int, Tensor] | None = None,
    mask: Tensor | None = None,
    **_: object,
) -> tuple[Tensor, list[Tensor]]:
    """The model metric on the clean batch ``[batch]`` and under each stack's interventions
    (``[n, batch]`` each), one intervention per call of the metric."""
    clean = score_metric(metric, model, batch)
    out = []
    for st in stacks:
        kind = intervention(st.kind)
        vals = torch.empty(len(st), len(batch), dtype=torch.float64)
        source = (
            {st.layer: sources[st.layer]} if sources is not None and st.layer in sources else None
        )
        for j in range(len(st)):
            frame = (
                st.vectors[j] if st.vectors[j].ndim == 1 else st.vectors[j][None]
            )  # [d] or [1 layer, k, d]
            ref = kind.pick(
                mean=st.reference,
                source=source,
                alpha=st.alphas[j] if st.alphas is not None else None,
                where=f" at layer {st.layer}",
            )
            with intervene(
                model,
                kind,
                frame,
                [st.layer],
                positions=mask,
                site=sites[st.layer].kind,
                **reference_keyword(kind, ref),
            ):
                vals[j] = score_metric(metric, model, batch)
        out.append(vals)
    return clean, out
