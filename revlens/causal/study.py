"""Layer-wise causal ablation studies: does motion along v_rev mediate reversion?

:func:`ablation_study` intervenes on every selected checkpoint's forward pass at every selected
layer — ``clamp`` (remove the drift along v relative to ``μ_l(aligned)``) and ``patch`` (take
the v-coordinate from the aligned model's activation on the same prompt) — and, on the aligned
model, ``steer`` (add α·v) — along ``v_rev`` and along ``controls`` random directions per layer
(isotropic and covariance-matched). All interventions of a batch share forward passes
(:mod:`revlens.causal.batched`); the result is a :class:`~revlens.causal.report.CausalReport`.
"""

import logging
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from revlens.causal.batched import Stack, Strategy, capture, run_stacks
from revlens.causal.controls import random_directions
from revlens.causal.inputs import (
    Positions,
    StepSpec,
    check_config,
    check_positions,
    position_mask,
    prepare_metric,
    reference_stats,
    select_checkpoints,
    study_directions,
)
from revlens.causal.metrics import KLTo, metric_name
from revlens.causal.report import CausalReport
from revlens.collect import HistoryStats, resolve_probes
from revlens.errors import HistoryError, RevlensError
from revlens.history import History
from revlens.hooks import LayerSpec, resolve_sites
from revlens.model import LensModel
from revlens.probes import ProbeBatch, TokenizedProbes

__all__ = ["ablation_study"]

log = logging.getLogger(__name__)


def ablation_study(
    history: Any,
    probes: Any,
    metric: Any,
    *,
    directions: Any = "mean_diff",
    layers: LayerSpec = "all",
    steps: StepSpec = None,
    runs: Sequence[str] | str | None = None,
    kinds: Sequence[str] = ("clamp", "patch"),
    controls: int = 16,
    control_kinds: Sequence[str] = ("iso", "cov"),
    alphas: Sequence[float] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    model: Any = None,
    stats: HistoryStats | None = None,
    positions: Positions = "all",
    strategy: Strategy = "grow",
    max_rows: int = 2048,
    gap_tol: float = 1e-6,
    progress: bool = True,
) -> CausalReport:
    """Clamp / patch / steer along v_rev and random controls at every layer × checkpoint.

    Args:
        history: a :class:`History` (or anything ``History.load`` accepts, e.g. a lab dir).
        probes: a :class:`Probes`, a list of prompts, a JSONL path (``None`` for a lab history).
        metric: ``metric(logits [batch, pos, vocab], batch: ProbeBatch) -> Tensor[batch]``, e.g.
            :func:`~revlens.causal.metrics.logit_diff` or a lab metric.
        directions: method name (``"mean_diff"``...), estimator, :class:`Directions` or tensor
            ``[layer, d]`` (see :func:`revlens.directions.resolve_directions`).
        layers: ``"all"`` or revlens layer indices (resid_post: 0 = embeddings .. n_layers).
        steps: ``None`` (all), ``"last"``, a step or a list of steps, for each selected run.
        runs: run names (default: every non-control run).
        kinds: among ``"clamp"``, ``"patch"`` (on each checkpoint) and ``"steer"`` (on aligned).
        controls: random control directions per layer and control kind (>= 1).
        control_kinds: ``"iso"`` (uniform on the sphere) and/or ``"cov"`` (N(0, Σ_aligned)).
        alphas: steering grid (needed for ``"steer"``), in activation units.
        seed: seed of the control directions (one ``torch.Generator`` per layer, seeded by
            ``(seed, layer)``, so a layer's controls do not depend on the other layers chosen).
        batch_size: prompts per batch (each forward holds up to ``max_rows`` rows).
        model: a booted :class:`LensModel` / bridge to reuse (default: boot one); on return it
            holds the last checkpoint's weights.
        stats: :class:`HistoryStats` with the base and aligned statistics (second moments of the
            aligned model for ``"cov"``); default: collected here on base and aligned only.
        positions: where to intervene: ``"all"`` (every position, the default), ``"last"`` (each
            prompt's last real token) or a bool mask ``[n_prompts, pos]``.
        strategy: ``"grow"`` (batched, clean prefix reused), ``"repeat"`` (batched) or
            ``"loop"`` (one intervention per forward); see :mod:`revlens.causal.batched`.
        gap_tol: mediation fraction is NaN where ``|M(θ_t) − M(aligned)| <= gap_tol·max(1, |M|)``.
        progress: show a tqdm bar.

    Memory: the aligned activations at every selected layer are cached for all probes
    (``n_prompts × layers × pos × d`` floats) so patching needs one aligned pass.

    Raises:
        ConfigError: bad kinds, controls < 1, non-finite alphas, bad batch size...
        SiteError: a layer out of range.  HistoryError: unknown run or step.
        MetricError: metric returning the wrong shape or NaN; bad token sets.
    """
    kinds, control_kinds, alpha_list = check_config(
        kinds, control_kinds, controls, alphas, batch_size, strategy, max_rows
    )
    hist = History.load(history)
    pr = resolve_probes(hist, probes)
    lm = LensModel.boot(model) if model is not None else hist.boot()
    bridge = lm.bridge
    sites = resolve_sites(bridge, layers)
    chosen = [s.layer for s in sites]
    site_map = {s.layer: s for s in sites}
    tokenized: TokenizedProbes = pr.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    check_positions(positions, len(tokenized))
    metric = prepare_metric(metric, lm)
    checkpoints = select_checkpoints(hist, runs, steps) if any(k != "steer" for k in kinds) else []
    if any(k != "steer" for k in kinds) and not checkpoints:
        raise HistoryError(
            "no fine-tuning checkpoint selected for clamp / patch (runs=..., steps=...)"
        )
    if stats is None:
        stats = reference_stats(hist, pr, lm, chosen, batch_size)
    for layer in chosen:
        stats.layer_pos(layer)
    v_rev = study_directions(directions, stats, chosen, lm.d_model)
    aligned_name = stats.aligned_name
    mu = {layer: stats.mean(aligned_name)[stats.layer_pos(layer)].float() for layer in chosen}
    names = ["v_rev"] + [f"random_{ck}_{i}" for ck in control_kinds for i in range(controls)]
    ctypes = ["v_rev"] + [ck for ck in control_kinds for _ in range(controls)]
    table: dict[int, Tensor] = {}
    for layer in chosen:
        # one generator per layer: a layer's controls do not depend on which other layers are studied
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + layer)
        rows = [v_rev[layer][None]]
        for ck in control_kinds:
            cov = stats[aligned_name].covariance[stats.layer_pos(layer)] if ck == "cov" else None
            rows.append(
                random_directions(controls, lm.d_model, kind=ck, covariance=cov, generator=gen)
            )  # type: ignore[arg-type]
        table[layer] = torch.cat(rows).float()
    n_dir = len(names)
    batches = list(tokenized.batches(batch_size))
    masks = [position_mask(positions, b) for b in batches]
    run_kw = {"sites": site_map, "strategy": strategy, "max_rows": max_rows}
    total = len(checkpoints) + 1
    bar = tqdm(total=total, desc="ablation", unit="ckpt", disable=not progress)

    # ---- aligned pass: sources for patch, M(aligned), reference logits for kl_to, steering
    if lm.loaded != hist.aligned.name:
        lm.load_weights(hist.aligned.state_dict(), name=hist.aligned.name)
    needs_ref = isinstance(metric, KLTo) and metric.needs_reference
    sources: list[dict[int, Tensor]] = []
    aligned_sum = 0.0
    steer_sum = {
        layer: torch.zeros(len(alpha_list) * n_dir, dtype=torch.float64) for layer in chosen
    }
    ref_rows: Tensor | None = None
    bar.set_postfix_str(hist.aligned.name)
    with torch.no_grad():
        for batch in batches:
            logits, acts = capture(
                bridge, batch.tokens.to(lm.device), sites if "patch" in kinds else []
            )
            sources.append(acts)
            if needs_ref:
                last = (
                    logits[torch.arange(len(batch)), batch.last_index.to(logits.device)]
                    .float()
                    .cpu()
                )
                ref_rows = (
                    torch.zeros(len(tokenized), last.shape[-1]) if ref_rows is None else ref_rows
                )
                ref_rows[batch.indices] = last
        if needs_ref:
            metric.set_reference(ref_rows)  # type: ignore[union-attr,arg-type]
        for bi, batch in enumerate(batches):
            if "steer" in kinds:
                stacks = [
                    Stack(
                        layer,
                        "steer",
                        table[layer].repeat(len(alpha_list), 1),
                        alphas=torch.tensor(alpha_list).repeat_interleave(n_dir),
                    )
                    for layer in chosen
                ]
                clean, vals = _run(
                    bridge, batch, stacks, metric, hist.aligned.name, mask=masks[bi], **run_kw
                )
                for layer, val in zip(chosen, vals):
                    steer_sum[layer] += val.sum(1)
            else:
                clean, _ = _run(
                    bridge, batch, [], metric, hist.aligned.name, mask=masks[bi], **run_kw
                )
            aligned_sum += float(clean.sum())
    bar.update(1)
    n = len(tokenized)
    m_aligned = aligned_sum / n
    rows: list[dict[str, Any]] = []

    def emit(
        run: str, step: int, layer: int, kind: str, values: Tensor, clean: float, alpha: float
    ) -> None:
        gap = clean - m_aligned
        defined = kind != "steer" and abs(gap) > gap_tol * max(1.0, abs(clean), abs(m_aligned))
        for j in range(n_dir):
            m = float(values[j])
            rows.append(
                {
                    "run": run,
                    "step": step,
                    "layer": layer,
                    "kind": kind,
                    "direction": names[j],
                    "control_type": ctypes[j],
                    "alpha": alpha,
                    "metric": m,
                    "metric_clean": clean,
                    "metric_aligned": m_aligned,
                    "effect": clean - m,
                    "mediation_fraction": (clean - m) / gap if defined else math.nan,
                    "n_prompts": n,
                }
            )

    # ---- each fine-tuning checkpoint: clamp / patch at every layer along every direction
    try:
        for ck in checkpoints:
            bar.set_postfix_str(ck.name)
            lm.load_weights(ck.state_dict(), name=ck.name)
            clean_sum = 0.0
            sums = {
                (layer, kind): torch.zeros(n_dir, dtype=torch.float64)
                for layer in chosen
                for kind in kinds
                if kind != "steer"
            }
            with torch.no_grad():
                for bi, batch in enumerate(batches):
                    stacks = [
                        Stack(
                            layer,
                            kind,
                            table[layer],
                            reference=mu[layer] if kind == "clamp" else None,
                        )
                        for layer in chosen
                        for kind in kinds
                        if kind != "steer"
                    ]
                    clean, vals = _run(
                        bridge,
                        batch,
                        stacks,
                        metric,
                        ck.name,
                        sources=sources[bi],
                        mask=masks[bi],
                        **run_kw,
                    )
                    clean_sum += float(clean.sum())
                    for st, val in zip(stacks, vals):
                        sums[(st.layer, st.kind)] += val.sum(1)
            m_clean = clean_sum / n
            for (layer, kind), total_ in sums.items():
                emit(str(ck.run), int(ck.step), layer, kind, total_ / n, m_clean, math.nan)  # type: ignore[arg-type]
            bar.update(1)
    finally:
        bar.close()
    for layer in chosen:
        per = (steer_sum[layer] / n).view(len(alpha_list), n_dir)
        for ai, alpha in enumerate(alpha_list):
            emit("aligned", 0, layer, "steer", per[ai], m_aligned, alpha)
    effects = pd.DataFrame(
        rows,
        columns=[
            "run",
            "step",
            "layer",
            "kind",
            "direction",
            "control_type",
            "alpha",
            "metric",
            "metric_clean",
            "metric_aligned",
            "effect",
            "mediation_fraction",
            "n_prompts",
        ],
    )
    effects = effects.astype(
        {
            "run": "str",
            "step": "int64",
            "layer": "int64",
            "kind": "str",
            "direction": "str",
            "control_type": "str",
            "alpha": "float64",
            "n_prompts": "int64",
        }
    )
    config = {
        "metric": metric_name(metric),
        "runs": sorted({str(c.run) for c in checkpoints}),
        "steps": sorted({int(c.step) for c in checkpoints}),
        "layers": chosen,
        "kinds": kinds,
        "controls": controls,
        "control_kinds": control_kinds,
        "alphas": alpha_list,
        "seed": int(seed),
        "batch_size": batch_size,
        "positions": positions if isinstance(positions, str) else "mask",
        "strategy": strategy,
        "direction_method": v_rev.method,
        "control_names": names,
        "n_prompts": n,
        "site": "resid_post",
        "gap_tol": gap_tol,
    }
    provenance = {
        "model": lm.source,
        "probe_fingerprint": tokenized.fingerprint(),
        "aligned": hist.aligned.name,
        "checkpoints": [c.name for c in checkpoints],
    }
    return CausalReport(
        effects=effects,
        config=config,
        directions=v_rev,
        controls={layer: table[layer][1:].clone() for layer in chosen},
        provenance=provenance,
    )


def _run(
    bridge: Any, batch: ProbeBatch, stacks: list[Stack], metric: Any, name: str, **kw: Any
) -> tuple[Tensor, list[Tensor]]:
    try:
        return run_stacks(bridge, batch, stacks, metric, **kw)
    except RevlensError as exc:
        raise type(exc)(f"checkpoint {name}: {exc}") from exc
    except (RuntimeError, ValueError, IndexError) as exc:
        raise RevlensError(f"while intervening on checkpoint {name}: {exc}") from exc
