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
from typing import Any

import torch
from torch import Tensor

from revlens.causal.batched import Stack
from revlens.causal.interventions import intervene
from revlens.metrics import score_metric
from revlens.sites import Site

__all__ = ["run_sequential"]


def run_sequential(model: Any, batch: Any, stacks: Sequence[Stack], metric: Any, *, sites: Mapping[int, Site],
                   sources: Mapping[int, Tensor] | None = None, mask: Tensor | None = None,
                   **_: Any) -> tuple[Tensor, list[Tensor]]:
    """The model metric on the clean batch ``[batch]`` and under each stack's interventions
    (``[n, batch]`` each), one intervention per call of the metric."""
    clean = score_metric(metric, model, batch)
    out = []
    for st in stacks:
        vals = torch.empty(len(st), len(batch), dtype=torch.float64)
        site = sites[st.layer]
        for j in range(len(st)):
            kw: dict[str, Any] = {"positions": mask, "site": site.kind}
            if st.kind == "clamp":
                kw["reference_mean"] = st.reference
            elif st.kind == "patch":
                kw["source_acts"] = {st.layer: sources[st.layer]} if sources is not None else None
            else:
                kw["alpha"] = float(st.alphas[j])  # type: ignore[index]
            with intervene(model, st.kind, st.vectors[j], [st.layer], **kw):
                vals[j] = score_metric(metric, model, batch)
        out.append(vals)
    return clean, out
