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
from typing import Any, no_type_check

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from revlens._seeds import generator
from revlens.causal.batched import Stack, run_stacks
from revlens.causal.config import AblationConfig
from revlens.causal.controls import random_directions
from revlens.causal.inputs import (
    check_positions,
    position_mask,
    prepare_metric,
    reference_stats,
    select_checkpoints,
)
from revlens.causal.plan import AblationPlan, auto_layers, auto_steps, drift_scores
from revlens.causal.report import EFFECT_COLUMNS, CausalReport
from revlens.causal.sequential import run_sequential
from revlens.collect import (
    HistoryStats,
    collect,
    collect_checkpoint,
    resolve_probes,
    without_degenerate,
)
from revlens.directions import DirectionEstimator, Directions, resolve_directions
from revlens.errors import ConfigError, HistoryError, MetricError, RevlensError
from revlens.history import Checkpoint, History
from revlens.metrics import KLTo, is_model_metric, metric_from_spec, metric_name
from revlens.model import LensModel
from revlens.probes import ProbeBatch
from revlens.sites import Site, access

__all__ = ["ablation_study"]

log = logging.getLogger(__name__)


def _config(config: AblationConfig | None, settings: dict[str, Any], directions: Any, positions: Any) -> AblationConfig:
    extra = dict(settings)
    if directions is not None and not isinstance(directions, (str, Directions, Tensor, DirectionEstimator)):
        raise ConfigError(f"directions: cannot use {type(directions).__name__}; expected a method name, an estimator, "
                          "a Directions or a [layer, d_model] / [layer, k, d_model] tensor")
    if directions is not None:
        extra["directions"] = directions if isinstance(directions, str) else str(getattr(directions, "method", "custom"))
    if positions is not None:
        extra["positions"] = positions if isinstance(positions, str) else "mask"
    return AblationConfig.build(config, "ablation_study", **extra)


def default_metric(hist: History) -> Any:
    """The metric a history declares as its default (``metadata["metrics_spec"]``)."""
    specs = hist.metadata.get("metrics_spec") or {}
    name = hist.metadata.get("default_metric")
    if not name or name not in specs:
        raise MetricError("no metric given and the history declares no default metric; pass metric=...")
    return metric_from_spec(specs[name], label=name)


def _keep_for(spec: Any) -> str:
    """Per-prompt references are needed to fit ``spec`` (not for mean_diff or given directions)."""
    if isinstance(spec, (Directions, Tensor)) or (isinstance(spec, str) and spec == "mean_diff"):
        return "none"
    return "reference"


class _Study:
    """The prepared inputs of one study (validated before any intervention)."""

    def __init__(self, cfg: AblationConfig, hist: History, probes: Any, metric: Any, lm: LensModel,
                 directions: Any, stats: HistoryStats | None, positions: Any) -> None:
        self.cfg, self.hist, self.lm = cfg, hist, lm
        self.acc = access(lm)
        pr = resolve_probes(hist, probes)
        self.tokenized = pr.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
        check_positions(positions, len(self.tokenized))
        self.metric = prepare_metric(metric, lm)
        self.choices: dict[str, str] = {}
        self.checkpoints = self._select_checkpoints()
        spec = directions if directions is not None else cfg.directions
        self.sites, stats, self.v_rev = self._select_layers(pr, stats, spec)
        self.layers = [s.layer for s in self.sites]
        self.site_map = {s.layer: s for s in self.sites}
        self.stats = stats
        self.mu = {layer: stats.mean(stats.aligned_name)[stats.layer_pos(layer)].float() for layer in self.layers}
        self.names = ["v_rev"] + [f"random_{ck}_{i}" for ck in cfg.control_kinds for i in range(cfg.controls)]
        self.ctypes = ["v_rev"] + [ck for ck in cfg.control_kinds for _ in range(cfg.controls)]
        self.table = {layer: self._directions(layer) for layer in self.layers}
        self.batches = list(self.tokenized.batches(cfg.batch_size))
        self.masks = [position_mask(positions, b) for b in self.batches]
        self.rows: list[dict[str, Any]] = []
        self.plan_: AblationPlan | None = None

    def _select_checkpoints(self) -> list[Checkpoint]:
        cfg, hist = self.cfg, self.hist
        if not any(k != "steer" for k in cfg.kinds):
            return []
        runs = list(cfg.runs) or None
        if cfg.steps == "auto":
            chosen = auto_steps(hist, runs, cfg.auto_steps)
            self.choices["steps"] = (f"auto: {cfg.auto_steps} log-spaced per run incl. the last "
                                     f"({', '.join(f'{r} {s}' for r, s in chosen.items())}); --steps all for every step")
            out = [c for r, steps in chosen.items() for c in select_checkpoints(hist, [r], steps)]
        else:
            out = select_checkpoints(hist, runs, None if cfg.steps == "all" else cfg.steps)
        if not out:
            raise HistoryError("no fine-tuning checkpoint selected for clamp / patch (runs=..., steps=...)")
        return out

    def _select_layers(self, probes: Any, stats: HistoryStats | None, spec: Any
                       ) -> tuple[list[Site], HistoryStats, Directions]:
        """The studied sites, the reference statistics there and v_rev (``layers="auto"``: the
        layers whose last-step drift is most aligned with v_rev)."""
        cfg, lm = self.cfg, self.lm
        if cfg.layers != "auto":
            sites = self.acc.sites(cfg.layers, cfg.site)
        elif stats is not None or isinstance(spec, Directions):
            given = spec.layers if isinstance(spec, Directions) else stats.layers  # type: ignore[union-attr]
            sites = self.acc.sites([x for x in given if stats is None or x in stats.layers], cfg.site)
        else:
            sites = self.acc.sites("all", cfg.site)
            if len(sites) > cfg.auto_layers:
                means = collect(self.hist.restricted(), probes, model=lm, layers=[s.layer for s in sites],
                                site=cfg.site, n_bootstrap=0, moments="none", keep=_keep_for(spec),
                                batch_size=cfg.batch_size, progress=False)
                sites = [s for s in sites if s.layer in self._auto_layers(means, sites, spec)]
        layers = [s.layer for s in sites]
        if stats is None:
            stats = reference_stats(self.hist, probes, lm, layers, cfg.batch_size, cfg.site)
        for layer in layers:
            stats.layer_pos(layer)
        stats, self.degenerate = without_degenerate(stats, what="ablation_study", layers=layers, stacklevel=5)
        if self.degenerate:  # constant over the probes: no covariance, no cov controls; left out
            sites = [s for s in sites if s.layer not in self.degenerate]
            layers = [s.layer for s in sites]
        v_rev = resolve_directions(spec, stats, layers=layers, d_model=lm.d_model)
        if cfg.layers == "auto" and len(layers) > cfg.auto_layers:  # statistics given: choose among theirs
            chosen = self._auto_layers(stats, sites, v_rev)
            sites = [s for s in sites if s.layer in chosen]
            v_rev = v_rev.select(chosen)
        return sites, stats, v_rev

    def _auto_layers(self, stats: HistoryStats, sites: list[Site], spec: Any) -> list[int]:
        layers = [s.layer for s in sites]
        v = resolve_directions(spec, stats, layers=layers, d_model=self.lm.d_model)
        last: dict[str, Checkpoint] = {}
        for ck in self.checkpoints:
            if ck.run not in last or int(ck.step) > int(last[ck.run].step):  # type: ignore[arg-type]
                last[str(ck.run)] = ck
        if not last:
            return layers[: self.cfg.auto_layers]
        means = [collect_checkpoint(self.lm, ck, self.tokenized, sites, n_bootstrap=0).mean for ck in last.values()]
        start = stats.mean(stats.aligned_name)[[stats.layer_pos(x) for x in layers]]
        scores = drift_scores(means, start, v.vectors, layers)
        chosen = auto_layers(scores, self.cfg.auto_layers)
        self.choices["layers"] = (f"auto: the {self.cfg.auto_layers} of {len(layers)} layers that moved furthest along "
                                  f"v_rev by the last step (mean drift·v_rev: "
                                  + ", ".join(f"{k}: {v:.3f}" for k, v in scores.items())
                                  + "); --layers all for every layer")
        return chosen

    def plan(self) -> AblationPlan:
        """The forward passes this study will run, priced by one timed forward."""
        cfg = self.cfg
        full = len(select_checkpoints(self.hist, list(cfg.runs) or None, None)) if self.checkpoints else 0
        out = AblationPlan(self.checkpoints, self.layers, self.acc.n_layers, tuple(cfg.kinds), len(self.names),
                           [len(b) for b in self.batches], cfg.max_rows, n_alphas=len(cfg.alphas),
                           choices=dict(self.choices), full_checkpoints=full, full_layers=len(self.acc.sites("all")))
        if self.batches:
            out.time_forward(self.acc, self.batches[0].tokens)
        self.plan_ = out
        return out

    def _directions(self, layer: int) -> Tensor:
        """v_rev then the controls at ``layer`` (one generator per layer: a layer's controls do not
        depend on which other layers are studied)."""
        gen = generator(self.cfg.seed, "controls", layer)
        rows = [self.v_rev[layer][None]]
        cov_all = self.stats[self.stats.aligned_name].covariance if "cov" in self.cfg.control_kinds else None
        for ck in self.cfg.control_kinds:
            cov = cov_all[self.stats.layer_pos(layer)] if ck == "cov" else None
            rows.append(random_directions(self.cfg.controls, self.lm.d_model, kind=ck, covariance=cov, generator=gen))
        return torch.cat(rows).float()

    def run(self, batch: ProbeBatch, i: int, stacks: list[Stack], name: str,
            sources: dict[int, Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        # model metrics (generation, judges) run their own forwards: one intervention per pass
        runner, model = (run_sequential, self.lm) if is_model_metric(self.metric) else (run_stacks, self.acc)
        try:
            return runner(model, batch, stacks, self.metric, sites=self.site_map, sources=sources,
                          mask=self.masks[i], strategy=self.cfg.strategy, max_rows=self.cfg.max_rows)
        except RevlensError as exc:
            raise type(exc)(f"checkpoint {name}: {exc}") from exc
        except (RuntimeError, ValueError, IndexError) as exc:
            raise RevlensError(f"while intervening on checkpoint {name}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ passes
    def aligned_pass(self) -> tuple[list[dict[int, Tensor]], float, dict[int, Tensor]]:
        """Patch sources, ``M(aligned)`` and steering sums on the aligned model."""
        cfg, n_dir = self.cfg, len(self.names)
        self.lm.load(self.hist.aligned)
        capture_sites = self.sites if "patch" in cfg.kinds else []
        sources, logits_rows = [], []
        with torch.no_grad():
            for batch in self.batches:
                logits, acts = self.acc.capture(batch.tokens, capture_sites)
                sources.append(acts)
                logits_rows.append(logits[torch.arange(len(batch)), batch.last_index.to(logits.device)].float().cpu())
            if isinstance(self.metric, KLTo) and self.metric.needs_reference:
                self.metric.set_reference(torch.cat(logits_rows))
            total = 0.0
            steer = {layer: torch.zeros(len(cfg.alphas) * n_dir, dtype=torch.float64) for layer in self.layers}
            for i, batch in enumerate(self.batches):
                stacks = [] if "steer" not in cfg.kinds else [
                    Stack(layer, "steer", self.table[layer].repeat(len(cfg.alphas), 1),
                          alphas=torch.tensor(cfg.alphas).repeat_interleave(n_dir))
                    for layer in self.layers
                ]
                clean, vals = self.run(batch, i, stacks, self.hist.aligned.name)
                for st, val in zip(stacks, vals):
                    steer[st.layer] += val.sum(1)
                total += float(clean.sum())
        return sources, total / len(self.tokenized), steer

    def checkpoint_pass(self, ck: Checkpoint, sources: list[dict[int, Tensor]]) -> tuple[float, dict]:
        """Clamp / patch at every layer along every direction on one checkpoint (means over prompts)."""
        self.lm.load(ck)
        kinds = [k for k in self.cfg.kinds if k != "steer"]
        sums = {(layer, kind): torch.zeros(len(self.names), dtype=torch.float64) for layer in self.layers for kind in kinds}
        clean_sum = 0.0
        with torch.no_grad():
            for i, batch in enumerate(self.batches):
                stacks = [Stack(layer, kind, self.table[layer], reference=self.mu[layer] if kind == "clamp" else None)
                          for layer in self.layers for kind in kinds]
                clean, vals = self.run(batch, i, stacks, ck.name, sources=sources[i])
                clean_sum += float(clean.sum())
                for st, val in zip(stacks, vals):
                    sums[(st.layer, st.kind)] += val.sum(1)
        n = len(self.tokenized)
        return clean_sum / n, {key: v / n for key, v in sums.items()}

    def emit_steer(self, steer: dict[int, Tensor], m_aligned: float) -> None:
        """The steering rows of every layer and alpha (on the aligned model)."""
        for layer in self.layers:
            per = steer[layer].view(len(self.cfg.alphas), len(self.names)) / len(self.tokenized)
            for ai, alpha in enumerate(self.cfg.alphas):
                self.emit("aligned", 0, layer, "steer", per[ai], m_aligned, m_aligned, alpha)

    def emit(self, run: str, step: int, layer: int, kind: str, values: Tensor, clean: float, m_aligned: float,
             alpha: float) -> None:
        gap = clean - m_aligned
        defined = kind != "steer" and abs(gap) > self.cfg.gap_tol * max(1.0, abs(clean), abs(m_aligned))
        n = len(self.tokenized)
        for j, name in enumerate(self.names):
            m = float(values[j])
            self.rows.append({
                "run": run, "step": step, "layer": layer, "kind": kind, "direction": name,
                "control_type": self.ctypes[j], "alpha": alpha, "metric": m, "metric_clean": clean,
                "metric_aligned": m_aligned, "effect": clean - m,
                "mediation_fraction": (clean - m) / gap if defined else math.nan, "n_prompts": n,
            })

    def report(self) -> CausalReport:
        effects = pd.DataFrame(self.rows, columns=EFFECT_COLUMNS).astype({
            "run": "str", "step": "int64", "layer": "int64", "kind": "str", "direction": "str",
            "control_type": "str", "alpha": "float64", "n_prompts": "int64"})
        config = {**self.cfg.to_dict(), "metric": metric_name(self.metric), "direction_method": self.v_rev.method,
                  "choices": dict(self.choices), "plan": self.plan_.to_dict() if self.plan_ is not None else None,
                  "runs": sorted({str(c.run) for c in self.checkpoints}),
                  "steps": sorted({int(c.step) for c in self.checkpoints}), "layers": self.layers,
                  "control_names": self.names, "n_prompts": len(self.tokenized),
                  "degenerate_layers": list(self.degenerate), "dtype": str(self.lm.dtype).removeprefix("torch.")}
        provenance = {"model": self.lm.source, "probe_fingerprint": self.tokenized.fingerprint(),
                      "aligned": self.hist.aligned.name, "aligned_fingerprint": self.hist.aligned.model_fingerprint(),
                      "checkpoints": {c.name: c.model_fingerprint() for c in self.checkpoints}}
        return CausalReport(effects=effects, config=config, directions=self.v_rev,
                            controls={layer: self.table[layer][1:].clone() for layer in self.layers},
                            provenance=provenance)


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def ablation_study(
    history: Any,
    probes: Any = None,
    metric: Any = None,
    *,
    config: AblationConfig | None = None,
    directions: Any = None,
    model: Any = None,
    stats: HistoryStats | None = None,
    positions: Any = None,
    device: Any = None,
    dtype: Any = None,
    progress: bool = True,
    **settings: Any,
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
        config: an :class:`AblationConfig`; ``**settings`` (any of its fields: ``layers``,
            ``steps`` (``"all"``, ``"last"``, a step or steps), ``runs``, ``kinds`` (``"clamp"``,
            ``"patch"``, ``"steer"``), ``controls``, ``control_kinds``, ``alphas``, ``seed``,
            ``batch_size``, ``strategy``, ``max_rows``, ``gap_tol``, ``site``) override it.
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

    Memory: the aligned activations at every selected layer are cached for all probes
    (``n_prompts × layers × pos × d`` floats) so patching needs one aligned pass.

    Raises:
        ConfigError: bad settings (named, before any forward pass). SiteError: a layer out of
        range. HistoryError: unknown run or step. MetricError: a metric returning the wrong shape
        or NaN, or raising.
    """
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
            for (layer, kind), values in sums.items():
                study.emit(str(ck.run), int(ck.step), layer, kind, values, clean, m_aligned, math.nan)
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
