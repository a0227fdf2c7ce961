"""The refusal direction as a registered estimator: ``"refusal"`` wherever a method name goes.

:class:`RefusalDirection` fits Arditi et al.'s refusal direction (arXiv 2406.11717) from the same
collected statistics as every other estimator, so ``analyze(methods=["mean_diff", "refusal"])``,
``ablation_study(directions="refusal")`` and ``resolve_directions("refusal", stats)`` pick it up by
name, with no special case anywhere::

    r_l = mean_{x ∈ harmful} h_l(θ, x) − mean_{x ∈ harmless} h_l(θ, x)      (normalised)

on **one** checkpoint θ (``checkpoint``: the role ``"aligned"`` by default, ``"base"`` with a
single base, or a checkpoint name) from its kept per-prompt activations (``keep="reference"``:
base and aligned keep them; analyze and ablation_study collect that way) and the probe labels the
statistics record (``stats.meta["labels"]``: the labels of the probe set, e.g. a history's JSONL
``"label"`` field). The position is the statistics' own: analyze at ``("post_instruction", k)``
fits one ``r`` per post-instruction position and layer. **Sign: toward refusal** (harmful −
harmless; ``meta["sign"]``), unlike the history estimators (aligned → base).

Stability: the mean ``|cos|`` between the full-sample ``r_l`` and refits on bootstrap resamples of
the harmful and the harmless prompts (each resampled within its own label). Bad input raises
before any forward pass where a stage can tell (:meth:`RefusalDirection.check_inputs`: unlabelled
probes, no harmful or harmless prompt, an unknown checkpoint or one whose per-prompt activations
are not kept), else on ``fit`` (which reads no model). Arditi's choice of one (position, layer) on
a held-out split needs forward passes with interventions:
:func:`revlens.causal.select_refusal_direction`, whose ``directions`` go wherever these do.
"""

from collections.abc import Sequence
from typing import Any, ClassVar, no_type_check

import torch
from torch import Tensor

from revlens._types import Device
from revlens.collect.stats import HistoryStats
from revlens.directions._fitting import bootstrap_cos, resamples, unit
from revlens.directions.estimators import DirectionEstimator
from revlens.directions.refusal import REFUSAL_SIGN, split_labels
from revlens.errors import ConfigError, HistoryError, ProbeError
from revlens.history import HistoryInput
from revlens.probes import ProbesInput

__all__ = ["RefusalDirection"]

_ROLES = ("aligned", "base")


class RefusalDirection(DirectionEstimator):
    """Arditi et al.'s refusal direction ``normalise(μ_harmful − μ_harmless)`` on one checkpoint,
    fitted from collected statistics (module docstring).

    Args:
        checkpoint: the role ``"aligned"`` (default) or ``"base"`` (a single base), or the name of a
            checkpoint whose per-prompt activations the statistics kept.
        harmful, harmless: the two probe labels.
        n_components: must be 1 (one mean difference per layer).
        n_bootstrap, seed: stability refits (prompts resampled within each label).

    Attributes (after ``fit``): ``direction_`` (method ``"refusal"``, ``meta``: ``sign``,
    ``checkpoint`` (the name read), ``n_harmful``, ``n_harmless``, ``norm`` per layer),
    ``stability_``, ``stability_by_rank_``, ``n_features_in_``.
    """

    method: ClassVar[str] = "refusal"
    in_defaults: ClassVar[bool] = False
    max_components: ClassVar[int | None] = 1
    plan_as: ClassVar[str] = "mean_diff"

    def __init__(
        self,
        *,
        checkpoint: str = "aligned",
        harmful: str = "harmful",
        harmless: str = "harmless",
        n_components: int = 1,
        n_bootstrap: int = 100,
        seed: int = 0,
        solver: str = "auto",
        device: Device | None = None,
    ) -> None:
        super().__init__(
            n_components=n_components,
            n_bootstrap=n_bootstrap,
            seed=seed,
            solver=solver,
            device=device,
        )
        self.checkpoint = checkpoint
        self.harmful = harmful
        self.harmless = harmless

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.n_components != 1:
            raise ConfigError(
                f"RefusalDirection: n_components must be 1 (one harmful − harmless mean difference per "
                f"layer), got {self.n_components}"
            )
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ConfigError(
                f"RefusalDirection: checkpoint must be 'aligned', 'base' or a checkpoint name; "
                f"got {self.checkpoint!r}"
            )
        for what in ("harmful", "harmless"):
            if not isinstance(getattr(self, what), str) or not getattr(self, what):
                raise ConfigError(
                    f"RefusalDirection: {what} must be a non-empty label, got {getattr(self, what)!r}"
                )
        if self.harmful == self.harmless:
            raise ConfigError(
                f"RefusalDirection: harmful and harmless are the same label {self.harmful!r}"
            )

    # ------------------------------------------------------------------ before any forward pass
    def check_inputs(
        self, probes: ProbesInput | None = None, history: HistoryInput | None = None
    ) -> None:
        """Refuse, before collection, what :meth:`fit` would refuse after it: bad settings,
        probes without a harmful or a harmless prompt, an unknown checkpoint, or one whose
        per-prompt activations are not kept (only base and aligned checkpoints keep them)."""
        self._validate_params()
        if probes is not None:
            split_labels(probes, self.harmful, self.harmless)
        if history is not None:
            names = {ck.name: ck.role for ck in history}
            role = names.get(
                self.checkpoint, self.checkpoint if self.checkpoint in _ROLES else None
            )
            if role is None:
                raise HistoryError(
                    f"RefusalDirection: no checkpoint {self.checkpoint!r} in the history; expected "
                    f"'aligned', 'base' or one of {list(names)}"
                )
            if role not in _ROLES:
                raise ConfigError(
                    f"RefusalDirection: checkpoint {self.checkpoint!r} is a fine-tuning step; stages keep per-prompt "
                    "activations of base and aligned only: use revlens.directions.refusal_directions(history, probes, "
                    f"checkpoint={self.checkpoint!r}) and pass its Directions"
                )

    # ------------------------------------------------------------------ fitting
    def _name(self, stats: HistoryStats) -> str:
        if self.checkpoint in stats.checkpoints:
            return self.checkpoint
        roles = {"aligned": [stats.aligned_name], "base": stats.base_names}
        names = roles.get(self.checkpoint)
        if names is None:
            raise HistoryError(
                f"RefusalDirection: no checkpoint {self.checkpoint!r} in the statistics; expected "
                f"'aligned', 'base' or one of {list(stats.checkpoints)}"
            )
        if len(names) != 1:
            raise ConfigError(
                f"RefusalDirection: checkpoint='base' is ambiguous with {len(names)} base checkpoints "
                f"{names}: name one"
            )
        return names[0]

    def _label_rows(self, stats: HistoryStats) -> tuple[Tensor, Tensor]:
        labels = stats.meta.get("labels")
        if labels is None:
            raise ProbeError(
                "RefusalDirection needs labelled probes: label each prompt "
                f"{self.harmful!r} or {self.harmless!r} (Probes(..., labels=[...]) or a JSONL 'label' "
                "field); these statistics were collected on unlabelled probes"
            )
        have = sorted({str(x) for x in labels if x is not None})
        rows = []
        for label, what in ((self.harmful, "harmful"), (self.harmless, "harmless")):
            idx = [i for i, x in enumerate(labels) if x is not None and str(x) == str(label)]
            if not idx:
                raise ProbeError(
                    f"RefusalDirection needs {what} prompts: no probe is labelled {label!r}; "
                    f"labels: {have}"
                )
            rows.append(torch.tensor(idx))
        return rows[0], rows[1]

    def _layer_refs(self, stats: HistoryStats, name: str, layer: int) -> Tensor:
        x = stats[name].reference_layer(layer)
        if x is None:
            raise ConfigError(
                f"RefusalDirection on checkpoint {name!r} needs its per-prompt activations at layer {layer}; collect "
                "with keep='reference' (base and aligned), or use revlens.directions.refusal_directions(history, "
                f"probes, checkpoint={name!r})"
            )
        return x.to(torch.float64)

    @no_type_check  # validates its own argument (typed errors), also under the test type-checker
    def fit(self, stats: HistoryStats) -> "RefusalDirection":
        """Fit ``r_l`` at every collected layer of ``stats``; returns ``self``.

        Raises:
            ProbeError: unlabelled statistics, or no harmful / harmless prompt (names the labels).
            HistoryError: an unknown checkpoint.
            ConfigError: bad settings, per-prompt activations not kept, or a layer where the two
                means coincide (names it).
        """
        self._validate_params()
        if not isinstance(stats, HistoryStats):
            raise ConfigError(
                f"RefusalDirection.fit expects HistoryStats (from revlens.collect); got "
                f"{type(stats).__name__}"
            )
        name = self._name(stats)
        bad, good = self._label_rows(stats)
        diffs, stab = [], []
        for layer in stats.layers:  # one layer's references in memory at a time
            x = self._layer_refs(stats, name, layer)
            diff = x[bad].mean(0) - x[good].mean(0)
            scale = max(float(x[bad].mean(0).norm()), float(x[good].mean(0).norm()), 1e-300)
            if float(diff.norm()) <= 1e-9 * scale:
                raise ConfigError(
                    f"refusal direction undefined at layer {layer}: harmful and harmless prompts have "
                    "the same mean there; drop that layer (layers=...)"
                )
            diffs.append(diff)
            stab.append(self._stability(x, bad, good, unit(diff)))
        raw = torch.stack(diffs)
        self._finish(stats, raw, torch.tensor(stab, dtype=torch.float64)[:, None])
        self.direction_.meta.update(
            sign=REFUSAL_SIGN,
            checkpoint_read=name,
            n_harmful=len(bad),
            n_harmless=len(good),
            norm=[float(x) for x in raw.norm(dim=-1)],
        )
        return self

    def _stability(self, x: Tensor, bad: Tensor, good: Tensor, full: Tensor) -> float:
        """Mean |cos| of refits on prompts resampled within each label (NaN without refits)."""
        draws = list(
            zip(
                resamples(len(bad), self.n_bootstrap, self.seed),
                resamples(len(good), self.n_bootstrap, self.seed + 1),
            )
        )
        if not draws:
            return float("nan")
        cos = [
            bootstrap_cos((x[bad[i]].mean(0) - x[good[j]].mean(0))[None], full[None])
            for i, j in draws
        ]
        return float(torch.cat(cos).nanmean())


def check_direction_inputs(
    specs: Sequence[Any], probes: ProbesInput | None = None, history: HistoryInput | None = None
) -> None:
    """Every estimator's (or registered name's) :meth:`~DirectionEstimator.check_inputs` on the
    probes (``None``: the history's default set) and history a stage is about to collect, before any
    forward pass (the history estimators check nothing there: their probes are not read)."""
    from revlens.directions.registry import ESTIMATORS

    ests = [ESTIMATORS[s]() if isinstance(s, str) and s in ESTIMATORS else s for s in specs]
    ests = [
        e
        for e in ests
        if isinstance(e, DirectionEstimator)
        and type(e).check_inputs is not DirectionEstimator.check_inputs
    ]
    if not ests:
        return
    if history is not None:
        from revlens.collect.collector import resolve_probes
        from revlens.history import History

        history = History.load(history)
        probes = resolve_probes(history, probes)
    for est in ests:
        est.check_inputs(probes, history)
