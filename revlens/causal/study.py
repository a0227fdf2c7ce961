"""Layer-wise causal ablation studies: does motion along v_rev mediate reversion?

:func:`ablation_study` intervenes on every selected checkpoint's forward pass at every selected
layer — ``clamp`` (remove the drift along v relative to ``μ_l(aligned)``) and ``patch`` (take
the v-coordinate from the aligned model's activation on the same prompt) — and, on the aligned
model, ``steer`` (add α·v) — along ``v_rev`` and along ``controls`` random directions per layer
(isotropic and covariance-matched). All interventions of a batch share forward passes
(:mod:`revlens.causal.batched`); the result is a :class:`~revlens.causal.report.CausalReport`.

The study is three passes over the probe set: the aligned model (patch sources, ``M(aligned)``,
reference logits for ``kl_to``, steering), then each fine-tuning checkpoint (clamp / patch at
every layer along every direction), then the tidy table.
"""

import logging
import math
import sys
from collections.abc import Sequence
from typing import Any, no_type_check

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm
from typing_extensions import Never

from revlens._seeds import generator
from revlens._types import Device
from revlens.causal.batched import Stack, run_stacks
from revlens.causal.config import AblationConfig
from revlens.causal.controls import random_directions
from revlens.causal.inputs import (
    Positions,
    check_positions,
    position_mask,
    prepare_metric,
    select_checkpoints,
)
from revlens.causal.kinds import intervention, interventions, of_test
from revlens.causal.plan import AblationPlan
from revlens.causal.report import EFFECT_COLUMNS, CausalReport
from revlens.causal.selection import Selection
from revlens.causal.sequential import run_sequential
from revlens.collect import (
    HistoryStats,
    resolve_probes,
)
from revlens.directions import DirectionEstimator, Directions, check_direction_inputs
from revlens.directions.registry import DirectionSpec
from revlens.directions.subspace import random_frames
from revlens.errors import ConfigError, MetricError, RevlensError, naming
from revlens.history import Checkpoint, History, HistoryInput
from revlens.metrics import KLTo, MetricLike, is_model_metric, metric_from_spec, metric_name
from revlens.model import LensModel, ModelInput
from revlens.modes import ControlKind, RankRule, SiteKind, Strategy
from revlens.probes import ProbeBatch, ProbesInput
from revlens.sites import access

__all__ = ["ablation_study"]

log = logging.getLogger(__name__)


def _config(
    config: AblationConfig | None, settings: dict[str, Any], directions: Any, positions: Any
) -> AblationConfig:
    extra = dict(settings)
    if directions is not None and not isinstance(
        directions, (str, Directions, Tensor, DirectionEstimator)
    ):
        raise ConfigError(
            f"directions: cannot use {type(directions).__name__}; expected a method name, an estimator, "
            "a Directions or a [layer, d_model] / [layer, k, d_model] tensor"
        )
    if directions is not None:
        extra["directions"] = (
            directions
            if isinstance(directions, str)
            else str(getattr(directions, "method", "custom"))
        )
    if positions is not None:
        extra["positions"] = positions if isinstance(positions, str) else "mask"
    return AblationConfig.build(config, "ablation_study", **extra)


def default_metric(hist: History) -> Any:
    """The metric a history declares as its default (``metadata["metrics_spec"]``)."""
    specs = hist.metadata.get("metrics_spec") or {}
    name = hist.metadata.get("default_metric")
    if not name or name not in specs:
        raise MetricError(
            "no metric given and the history declares no default metric; pass metric=..."
        )
    return metric_from_spec(specs[name], label=name)


class _Study(Selection):
    """The prepared inputs of one study (validated before any intervention)."""

    def __init__(
        self,
        cfg: AblationConfig,
        hist: History,
        probes: Any,
        metric: Any,
        lm: LensModel,
        directions: Any,
        stats: HistoryStats | None,
        positions: Any,
    ) -> None:
        self.cfg, self.hist, self.lm = cfg, hist, lm
        self.acc = access(lm)
        pr = resolve_probes(hist, probes)
        spec = directions if directions is not None else cfg.directions
        check_direction_inputs(
            [spec], pr, hist
        )  # e.g. refusal: labelled harmful and harmless prompts
        self.tokenized = pr.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
        check_positions(positions, len(self.tokenized))
        self.metric = prepare_metric(metric, lm)
        self.choices: dict[str, str] = {}
        self.checkpoints = self._select_checkpoints()
        self.k_max = max(cfg.ranks)
        self.sites, stats, self.v_rev = self._select_layers(pr, stats, spec)
        self.layers = [s.layer for s in self.sites]
        self.site_map = {s.layer: s for s in self.sites}
        self.stats = stats
        if self.v_rev.rank < self.k_max:
            raise ConfigError(
                f"ranks={list(cfg.ranks)} need directions of rank >= {self.k_max}; these "
                f"({self.v_rev.method}) have rank {self.v_rev.rank}"
            )
        self.mu = {
            layer: stats.mean(stats.aligned_name)[stats.layer_pos(layer)].float()
            for layer in self.layers
        }
        self.names = ["v_rev"] + [
            f"random_{ck}_{i}" for ck in cfg.control_kinds for i in range(cfg.controls)
        ]
        self.ctypes = ["v_rev"] + [ck for ck in cfg.control_kinds for _ in range(cfg.controls)]
        self.table = {layer: self._directions(layer) for layer in self.layers}
        self.batches = list(self.tokenized.batches(cfg.batch_size))
        self.masks = [position_mask(positions, b) for b in self.batches]
        self.groups = self._groups(len(self.tokenized))
        self.rows: list[dict[str, Any]] = []
        self.plan_: AblationPlan | None = None

    def plan(self) -> AblationPlan:
        """The forward passes this study will run, priced by one timed forward."""
        cfg = self.cfg
        full = (
            len(select_checkpoints(self.hist, list(cfg.runs) or None, None))
            if self.checkpoints
            else 0
        )
        out = AblationPlan(
            self.checkpoints,
            self.layers,
            self.acc.n_layers,
            tuple(cfg.kinds),
            len(self.names),
            [len(b) for b in self.batches],
            cfg.max_rows,
            n_alphas=len(cfg.alphas),
            choices=dict(self.choices),
            full_checkpoints=full,
            full_layers=len(self.acc.sites("all")),
        )
        if self.batches:
            with naming(
                f"checkpoint {getattr(self.lm, 'loaded', None) or '(booted weights)'}",
                "timing a forward on",
            ):
                out.time_forward(self.acc, self.batches[0].tokens)
        self.plan_ = out
        return out

    def _groups(self, n: int) -> dict[str, Tensor]:
        """Prompt groups the means are taken over: ``all``, and with several ranks a seeded split
        into ``select`` (k and the layer are chosen there) and ``test`` (they are reported there),
        drawn before any forward pass."""
        groups = {"all": torch.ones(n, dtype=torch.bool)}
        if len(self.cfg.ranks) > 1 and self.cfg.select_fraction > 0:
            n_sel = round(self.cfg.select_fraction * n)
            if not 1 <= n_sel < n:
                raise ConfigError(
                    f"select_fraction={self.cfg.select_fraction} of {n} prompts leaves an empty "
                    "selection or test half; use more prompts or another fraction"
                )
            order = torch.randperm(n, generator=generator(self.cfg.seed, "rank-split"))
            sel = torch.zeros(n, dtype=torch.bool)
            sel[order[:n_sel]] = True
            groups.update({"select": sel, "test": ~sel})
        return groups

    def stack_vectors(self, layer: int, k: int) -> Tensor:
        """The copies' directions ``[n, d]`` (k = 1) or k-frames ``[n, k, d]`` at ``layer``."""
        t = self.table[layer]
        return t if t.ndim == 2 else (t[:, 0] if k == 1 else t[:, :k])

    def _directions(self, layer: int) -> Tensor:
        """v_rev then the controls at ``layer`` (one generator per layer: a layer's controls do not
        depend on which other layers are studied)."""
        gen = generator(self.cfg.seed, "controls", layer)
        rows = [self.v_rev[layer][None]]
        cov_all = (
            self.stats[self.stats.aligned_name].covariance
            if "cov" in self.cfg.control_kinds
            else None
        )
        covs = {
            ck: cov_all[self.stats.layer_pos(layer)] if ck == "cov" else None
            for ck in self.cfg.control_kinds
        }
        for ck in self.cfg.control_kinds:
            rows.append(
                random_directions(
                    self.cfg.controls, self.lm.d_model, kind=ck, covariance=covs[ck], generator=gen
                )
            )
        table = torch.cat(rows).float()
        if self.k_max == 1:
            return table
        # k-frames: the subspace's first k_max rows, and random frames whose first rows are the
        # one-direction controls above (so rank-1 rows equal a rank-1 study's exactly)
        frames = [self.v_rev.subspace(layer)[None, : self.k_max].float()]
        for i, ck in enumerate(self.cfg.control_kinds):
            first = table[1 + i * self.cfg.controls : 1 + (i + 1) * self.cfg.controls]
            f = random_frames(
                self.cfg.controls,
                self.k_max,
                self.lm.d_model,
                kind=ck,
                covariance=covs[ck],
                generator=generator(self.cfg.seed, "control-frames", layer, ck),
                first=first.double(),
            ).float()
            f[:, 0] = first
            frames.append(f)
        return torch.cat(frames)

    def run(
        self,
        batch: ProbeBatch,
        i: int,
        stacks: list[Stack],
        name: str,
        sources: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        # model metrics (generation, judges) run their own forwards: one intervention per pass
        runner, model = (
            (run_sequential, self.lm) if is_model_metric(self.metric) else (run_stacks, self.acc)
        )
        try:
            return runner(
                model,
                batch,
                stacks,
                self.metric,
                sites=self.site_map,
                sources=sources,
                mask=self.masks[i],
                strategy=self.cfg.strategy,
                max_rows=self.cfg.max_rows,
            )
        except RevlensError as exc:
            raise type(exc)(f"checkpoint {name}: {exc}") from exc
        except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AttributeError) as exc:
            raise RevlensError(
                f"while intervening on checkpoint {name}: {type(exc).__name__}: {exc}"
            ) from exc

    # ------------------------------------------------------------------ passes
    def aligned_pass(
        self,
    ) -> tuple[list[dict[int, Tensor]], dict[str, float], dict[tuple[int, str], Tensor]]:
        """Patch sources, ``M(aligned)`` and the sums of the sufficiency kinds (steering) over the
        alphas, per (layer, kind), on the aligned model."""
        cfg, n_dir = self.cfg, len(self.names)
        self.lm.load(self.hist.aligned)
        capture_sites = (
            self.sites if any(k.reference == "source" for k in interventions(cfg.kinds)) else []
        )
        sources, logits_rows = [], []
        with torch.no_grad():
            for batch in self.batches:
                with naming(f"checkpoint {self.hist.aligned.name}", "capturing on"):
                    logits, acts = self.acc.capture(batch.tokens, capture_sites)
                sources.append(acts)
                logits_rows.append(
                    logits[torch.arange(len(batch)), batch.last_index.to(logits.device)]
                    .float()
                    .cpu()
                )
            if isinstance(self.metric, KLTo) and self.metric.needs_reference:
                self.metric.set_reference(torch.cat(logits_rows))
            totals = dict.fromkeys(self.groups, 0.0)
            kinds = of_test(cfg.kinds, "sufficiency")
            steer = {
                (layer, kind): torch.zeros(len(cfg.alphas) * n_dir, dtype=torch.float64)
                for kind in kinds
                for layer in self.layers
            }
            for i, batch in enumerate(self.batches):
                stacks = [
                    Stack(
                        layer,
                        kind,
                        self.stack_vectors(layer, 1).repeat(len(cfg.alphas), 1),
                        alphas=torch.tensor(cfg.alphas).repeat_interleave(n_dir),
                        reference=self.mu[layer],
                    )
                    for kind in kinds
                    for layer in self.layers
                ]
                clean, vals = self.run(batch, i, stacks, self.hist.aligned.name)
                for st, val in zip(stacks, vals):
                    steer[(st.layer, st.kind)] += val.sum(1)
                for g, mask in self.groups.items():
                    totals[g] += float(clean[mask[batch.indices]].sum())
        return sources, {g: totals[g] / int(m.sum()) for g, m in self.groups.items()}, steer

    def checkpoint_pass(
        self, ck: Checkpoint, sources: list[dict[int, Tensor]]
    ) -> tuple[dict[str, float], dict]:
        """The necessity kinds (clamp / patch) at every layer and rank along every direction /
        subspace on one checkpoint:
        per prompt group, the clean mean and ``(layer, kind, rank, group) -> [direction]`` means."""
        self.lm.load(ck)
        kinds = of_test(self.cfg.kinds, "necessity")
        keys = [(layer, kind, k) for layer in self.layers for kind in kinds for k in self.cfg.ranks]
        sums = {
            (*key, g): torch.zeros(len(self.names), dtype=torch.float64)
            for key in keys
            for g in self.groups
        }
        clean_sum = dict.fromkeys(self.groups, 0.0)
        with torch.no_grad():
            for i, batch in enumerate(self.batches):
                stacks = [
                    Stack(layer, kind, self.stack_vectors(layer, k), reference=self.mu[layer])
                    for layer, kind, k in keys
                ]
                clean, vals = self.run(batch, i, stacks, ck.name, sources=sources[i])
                for g, mask in self.groups.items():
                    rows = mask[batch.indices]
                    clean_sum[g] += float(clean[rows].sum())
                    for key, val in zip(keys, vals):
                        sums[(*key, g)] += val[:, rows].sum(1)
        n = {g: int(m.sum()) for g, m in self.groups.items()}
        return {g: v / n[g] for g, v in clean_sum.items()}, {
            key: v / n[key[-1]] for key, v in sums.items()
        }

    def emit_steer(self, steer: dict[tuple[int, str], Tensor], m_aligned: dict[str, float]) -> None:
        """The rows of the sufficiency kinds (steering) at every layer and alpha (on the aligned model)."""
        for (layer, kind), total in steer.items():
            per = total.view(len(self.cfg.alphas), len(self.names)) / len(self.tokenized)
            for ai, alpha in enumerate(self.cfg.alphas):
                self.emit(
                    "aligned", 0, layer, kind, per[ai], m_aligned["all"], m_aligned["all"], alpha
                )

    def emit(
        self,
        run: str,
        step: int,
        layer: int,
        kind: str,
        values: Tensor,
        clean: float,
        m_aligned: float,
        alpha: float,
        rank: int = 1,
        split: str = "all",
    ) -> None:
        how = intervention(kind)
        n = int(self.groups[split].sum())
        for j, name in enumerate(self.names):
            m = float(values[j])
            self.rows.append(
                {
                    "run": run,
                    "step": step,
                    "layer": layer,
                    "kind": kind,
                    "rank": rank,
                    "split": split,
                    "direction": name,
                    "control_type": self.ctypes[j],
                    "alpha": alpha,
                    "metric": m,
                    "metric_clean": clean,
                    "metric_aligned": m_aligned,
                    "effect": clean - m,
                    "mediation_fraction": how.mediation_fraction(
                        clean, m, m_aligned, self.cfg.gap_tol
                    ),
                    "n_prompts": n,
                }
            )

    def report(self) -> CausalReport:
        effects = pd.DataFrame(self.rows, columns=EFFECT_COLUMNS).astype(
            {
                "run": "str",
                "step": "int64",
                "layer": "int64",
                "kind": "str",
                "rank": "int64",
                "split": "str",
                "direction": "str",
                "control_type": "str",
                "alpha": "float64",
                "n_prompts": "int64",
            }
        )
        config = {
            **self.cfg.to_dict(),
            "metric": metric_name(self.metric),
            "direction_method": self.v_rev.method,
            "choices": dict(self.choices),
            "plan": self.plan_.to_dict() if self.plan_ is not None else None,
            "runs": sorted({str(c.run) for c in self.checkpoints}),
            "steps": sorted({int(c.step) for c in self.checkpoints}),
            "layers": self.layers,
            "control_names": self.names,
            "n_prompts": len(self.tokenized),
            "degenerate_layers": list(self.degenerate),
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "select_prompts": (
                torch.nonzero(self.groups["select"])[:, 0].tolist()
                if "select" in self.groups
                else []
            ),
        }
        provenance = {
            "model": self.lm.source,
            "probe_fingerprint": self.tokenized.fingerprint(),
            "aligned": self.hist.aligned.name,
            "aligned_fingerprint": self.hist.aligned.model_fingerprint(),
            "checkpoints": {c.name: c.model_fingerprint() for c in self.checkpoints},
        }
        return CausalReport(
            effects=effects,
            config=config,
            directions=self.v_rev,
            controls={layer: self.table[layer][1:].clone() for layer in self.layers},
            provenance=provenance,
        )


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def ablation_study(
    history: HistoryInput,
    probes: ProbesInput | None = None,
    metric: MetricLike | None = None,
    *,
    config: AblationConfig | None = None,
    directions: DirectionSpec | None = None,
    model: ModelInput | None = None,
    stats: HistoryStats | None = None,
    positions: Positions | None = None,
    device: Device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    layers: str | int | Sequence[int] | None = None,
    steps: str | int | Sequence[int] | None = None,
    auto_layers: int | None = None,
    auto_steps: int | None = None,
    runs: str | Sequence[str] | None = None,
    kinds: str | Sequence[str] | None = None,
    controls: int | None = None,
    control_kinds: ControlKind | Sequence[ControlKind] | None = None,
    alphas: float | Sequence[float] | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    strategy: Strategy | None = None,
    max_rows: int | None = None,
    gap_tol: float | None = None,
    site: SiteKind | None = None,
    ranks: int | Sequence[int] | None = None,
    select_fraction: float | None = None,
    rank_rule: RankRule | None = None,
    **unknown: Never,
) -> CausalReport:
    """Clamp / patch / steer along v_rev and random controls at every layer × checkpoint.

    Args:
        history: a :class:`History` (or anything ``History.load`` accepts, e.g. a lab dir).
        probes: a :class:`Probes`, a list of prompts, a JSONL path; ``None``: the history's
            default probes.
        metric: ``metric(logits [batch, pos, vocab], batch: ProbeBatch) -> Tensor[batch]``, e.g.
            :func:`revlens.metrics.logit_diff`; or a model metric with ``score(model, batch)``
            (generation-based refusal rate, a judge, teacher-forced phrases: see
            :mod:`revlens.metrics`), which is then scored **one intervention per pass**
            automatically (the batched sweep needs logits; each pass hooks one intervention, so
            it acts at every forward the metric runs, generated tokens included — see
            :mod:`revlens.causal.interventions` for ``patch`` at generated positions);
            ``None``: the history's declared default metric.
        config: an :class:`AblationConfig`; its fields given as keywords (``layers``, ``steps``
            (``"all"``, ``"last"``, a step or steps), ``auto_layers``, ``auto_steps``, ``runs``,
            ``kinds`` (``"clamp"``, ``"patch"``, ``"steer"``, any registered kind), ``controls``,
            ``control_kinds``, ``alphas``, ``seed``, ``batch_size``, ``strategy``, ``max_rows``,
            ``gap_tol``, ``site``, ``ranks``, ``select_fraction``, ``rank_rule``, described there;
            ``None``: the config's) override it, validated before any forward pass (another
            keyword: a ``ConfigError`` naming it).
        directions: a method name, estimator, :class:`Directions` or tensor ``[layer, d]`` /
            ``[layer, k, d]`` (see :func:`revlens.directions.resolve_directions`); default the
            config's ``directions`` (``"mean_diff"``).
        model: a booted :class:`LensModel` / bridge to reuse (default: boot one). Weights are
            swapped in by content fingerprint, never by name.
        stats: :class:`HistoryStats` with the base and aligned statistics (second moments of the
            aligned model for ``"cov"``); default: collected here on base and aligned only.
        positions: ``"all"`` (default), ``"last"`` or a bool mask ``[n_prompts, pos]``.
        device, dtype: where and in what precision the model runs (default: the given model's,
            else float32 on the CPU); recorded in the report config.
        progress: print the plan (checkpoints, layers, planned forwards, ETA) to stderr before
            starting, and show a tqdm bar.

    Defaults (``steps="auto"``, ``layers="auto"``) study a documented subset that answers the
    question — log-spaced steps with the last, the layers where drift is most aligned with v_rev
    (:mod:`revlens.causal.plan`); ``steps="all", layers="all"`` is the full sweep.

    Memory: the aligned activations at the selected layers are cached for all probes (one aligned pass).

    Raises:
        ConfigError: bad settings (named, before any forward pass).
        SiteError / HistoryError: a layer out of range; an unknown run or step.
        MetricError: a metric returning the wrong shape or NaN, or raising.
    """
    given = {
        "layers": layers,
        "steps": steps,
        "auto_layers": auto_layers,
        "auto_steps": auto_steps,
        "runs": runs,
        "kinds": kinds,
        "controls": controls,
        "control_kinds": control_kinds,
        "alphas": alphas,
        "seed": seed,
        "batch_size": batch_size,
        "strategy": strategy,
        "max_rows": max_rows,
        "gap_tol": gap_tol,
        "site": site,
        "ranks": ranks,
        "select_fraction": select_fraction,
        "rank_rule": rank_rule,
    }
    settings = {k: v for k, v in given.items() if v is not None}
    settings.update(unknown)  # refused by AblationConfig.build, naming them
    cfg = _config(config, settings, directions, positions)
    positions = cfg.positions if positions is None else positions
    hist = History.load(history)
    metric = metric if metric is not None else default_metric(hist)
    lm = LensModel.for_history(hist, model, device=device, dtype=dtype)
    study = _Study(cfg, hist, probes, metric, lm, directions, stats, positions)
    _announce(study.plan(), progress)
    bar = tqdm(total=len(study.checkpoints) + 1, desc="ablation", unit="ckpt", disable=not progress)
    try:
        bar.set_postfix_str(hist.aligned.name)
        sources, m_aligned, steer = study.aligned_pass()
        bar.update(1)
        for ck in study.checkpoints:
            bar.set_postfix_str(ck.name)
            clean, sums = study.checkpoint_pass(ck, sources)
            for (layer, kind, rank, split), values in sums.items():
                study.emit(
                    str(ck.run),
                    int(ck.step),
                    layer,
                    kind,
                    values,
                    clean[split],
                    m_aligned[split],
                    math.nan,
                    rank,
                    split,
                )
            bar.update(1)
    finally:
        bar.close()
    study.emit_steer(steer, m_aligned)
    return study.report()


def _announce(plan: AblationPlan, progress: bool) -> None:
    """The plan (checkpoints, layers, planned forwards, ETA) before any intervention."""
    if progress:
        tqdm.write(plan.describe(), file=sys.stderr)
    else:
        log.info("%s", plan.describe())
