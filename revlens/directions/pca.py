"""The paired-PCA estimator :class:`PairedPCA` (see :mod:`revlens.directions.estimators` for the
conventions every estimator shares, and :mod:`revlens.directions._lowrank` for its span path)."""

from typing import no_type_check

import torch
from torch import Tensor

from revlens._types import Device
from revlens.collect.stats import HistoryStats
from revlens.directions._fitting import base_stack_layer, paired_layer
from revlens.directions._linalg import top_axis
from revlens.directions.estimators import DirectionEstimator
from revlens.errors import ConfigError

__all__ = ["PairedPCA"]


class PairedPCA(DirectionEstimator):
    """Top-k principal axes of paired differences ``h(base, x_i) − h(aligned, x_i)`` per layer.

    Args:
        center: subtract the mean difference before the SVD. Default ``False``: the axes of the
            second moment about zero, so a shift shared by every prompt is the first axis.
        n_components: ``k``, the number of principal axes (at most the number of samples).
        bases: ``"mean"`` (default): one sample per prompt, the mean of the bases' activations;
            ``"each"``: one sample per (base checkpoint, prompt) — the differences of every
            pre-training witness, so the subspace also holds how the bases differ.
        n_bootstrap: prompt-resampling replicates for ``stability_`` (0 disables).
        seed: seed of the resampling.
        solver: ``"auto"`` (default): the n-dimensional span of the references when it is smaller
            than d (exact; :mod:`revlens.directions._lowrank`), else the dense d × d path;
            ``"dense"``: always the d × d path (revlens 0.2); ``"span"``: always the span.
        device: where the span path's algebra runs (default: the references' device).

    The first axis is signed to have a non-negative dot product with ``μ_base − μ_aligned``
    (rows ``2..k`` too; see the module docstring).
    """

    method = "pca"
    rank_limit = "the paired differences have fewer independent samples (prompts) than n_components"

    @no_type_check  # parameters are validated by fit (typed errors), also under the test type-checker
    def __init__(
        self,
        *,
        center: bool = False,
        n_components: int = 1,
        bases: str = "mean",
        n_bootstrap: int = 100,
        seed: int = 0,
        solver: str = "auto",
        device: Device | None = None,
    ) -> None:
        self.center = center
        self.n_components = n_components
        self.bases = bases
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.solver = solver
        self.device = device

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.bases not in ("mean", "each"):
            raise ConfigError(f"PairedPCA: bases must be 'mean' or 'each', got {self.bases!r}")

    def _paired(self, stats: HistoryStats, layer: int) -> tuple[Tensor, Tensor, int]:
        base, aligned = paired_layer(stats, layer)
        stack = base_stack_layer(stats, layer) if self.bases == "each" else None
        if stack is None or stack.shape[0] == 1:
            return base, aligned, 1
        copies = stack.shape[0]
        return stack.reshape(-1, *stack.shape[2:]), aligned.repeat(copies, 1, 1), copies

    def _span_size(self, stats: HistoryStats) -> int:
        copies = len(stats.base_names) if self.bases == "each" else 1
        return int(stats[stats.aligned_name].count) * copies

    @staticmethod
    def _span_source(b: Tensor, a: Tensor) -> Tensor:
        return b - a

    def _span_svd(self, bc: Tensor, ac: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mean difference, singular values, right singular vectors) in span coordinates."""
        p = bc - ac
        mean = p.mean(-2)
        _, s, vh = torch.linalg.svd(
            p - mean[..., None, :] if self.center else p, full_matrices=False
        )
        return mean, s, vh

    @staticmethod
    def _signed(rows: Tensor, mean: Tensor) -> Tensor:
        sign = torch.sign((rows * mean).sum(-1))
        return rows * torch.where(sign == 0, torch.ones_like(sign), sign)[..., None]

    def _span_raw(self, bc: Tensor, ac: Tensor, d: int) -> Tensor:
        mean, _, vh = self._span_svd(bc, ac)
        return self._signed(vh[..., 0, :], mean)

    def _span_candidates(self, bc: Tensor, ac: Tensor, d: int) -> Tensor:
        mean, s, vh = self._span_svd(bc, ac)
        rows = (vh * (s > s[..., :1] * 1e-5)[..., None])[..., : self.n_components, :].clone()
        rows[..., 0, :] = self._signed(rows[..., 0, :], mean)
        return rows

    def _svd(self, base: Tensor, aligned: Tensor) -> Tensor:
        diff = (base - aligned).transpose(0, 1)  # [layer, prompt, d]
        if self.center:
            diff = diff - diff.mean(1, keepdim=True)
        _, s, vh = torch.linalg.svd(diff, full_matrices=False)
        # axes below float32 resolution of the activations (a rank-deficient set): zero rows
        return vh * (s > s[:, :1] * 1e-5)[..., None]

    def _raw(self, base: Tensor, aligned: Tensor) -> Tensor:
        diff = base - aligned  # [prompt, layer, d]
        if self.center:
            diff = diff - diff.mean(0, keepdim=True)
        # the first axis alone: an exact SVD for small inputs, subspace iteration at 7B sizes
        return torch.stack(
            [top_axis(diff[:, i], seed=int(self.seed)) for i in range(diff.shape[1])]
        )

    def _candidates(self, base: Tensor, aligned: Tensor) -> Tensor:
        return self._svd(base, aligned)[:, : self.n_components, :]

    def _orient(self, raw: Tensor, base: Tensor, aligned: Tensor) -> Tensor:
        sign = torch.sign((raw * (base.mean(0) - aligned.mean(0))).sum(1))
        return raw * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
