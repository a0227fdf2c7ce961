"""The result of :func:`~revlens.causal.ablation_study`: effects, summary, save / load.

A saved causal report is a directory of plain files (no pickle), written atomically:
``effects.json`` (column-wise JSON with each column's dtype; floats in Python's shortest exact
repr, so a load is bit-identical), ``effects.csv`` / ``summary.csv`` for spreadsheets (not read
back), ``directions.safetensors`` (v_rev), ``controls.safetensors`` (the random directions) and
``causal.json`` (config, provenance, format).
"""

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from revlens._frames import read_frame, write_frame
from revlens._result import Result
from revlens.causal.html import CausalHtml
from revlens.causal.kinds import Test, intervention, interventions, kind_is, of_test
from revlens.directions import Directions
from revlens.errors import ConfigError

__all__ = ["EFFECT_COLUMNS", "CausalReport", "summarize"]

EFFECT_COLUMNS = [
    "run",
    "step",
    "layer",
    "kind",
    "rank",
    "split",
    "direction",
    "control_type",
    "alpha",
    "metric",
    "metric_clean",
    "metric_aligned",
    "effect",
    "mediation_fraction",
    "n_prompts",
]


def _sign(x: pd.Series) -> pd.Series:
    return pd.Series(np.where(x.to_numpy() < 0, -1.0, 1.0), index=x.index)


def with_rank_columns(effects: pd.DataFrame) -> pd.DataFrame:
    """``effects`` with ``rank`` (1) and ``split`` (``"all"``) filled in when absent (tables of
    studies made before subspaces)."""
    if "rank" in effects.columns and "split" in effects.columns:
        return effects
    df = effects.copy()
    if "rank" not in df.columns:
        df.insert(df.columns.get_loc("kind") + 1, "rank", 1)
    if "split" not in df.columns:
        df.insert(df.columns.get_loc("rank") + 1, "split", "all")
    return df.astype({"rank": "int64", "split": "str"})


def summarize(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (run, step, layer, kind, rank, split, alpha): v_rev (or its rank-k subspace) against its
    controls (random k-dim subspaces of the same rank, on the same prompts).

    ``score`` orients effects so that larger = more reversion explained: ``effect·sign(gap)`` for
    necessity tests such as clamp / patch (gap = ``metric_clean − metric_aligned``),
    ``(metric − metric_aligned)·sign`` for sufficiency tests such as steer (sign of the mean gap of
    the study's checkpoints, + if none; :mod:`revlens.causal.kinds`). ``z`` and the
    one-sided empirical ``p_value`` = (1 + #controls with score ≥ v_rev's) / (1 + #controls) use
    that score; ``best`` flags the layer with the largest v_rev mediation fraction (score where
    it is undefined) per (run, step, kind, alpha).
    """
    df = with_rank_columns(effects).copy()
    gap = df["metric_clean"] - df["metric_aligned"]
    is_steer = pd.Series(kind_is(df["kind"], "sufficiency"), index=df.index, dtype=bool)
    mean_gap = float(gap[~is_steer].mean()) if bool((~is_steer).any()) else 1.0
    steer_sign = -1.0 if mean_gap < 0 else 1.0
    df["score"] = np.where(
        is_steer, (df["metric"] - df["metric_aligned"]) * steer_sign, df["effect"] * _sign(gap)
    )
    df["alpha_key"] = df["alpha"].fillna(-np.inf)
    keys = ["run", "step", "layer", "kind", "rank", "split", "alpha_key"]
    v = df[df["control_type"] == "v_rev"].set_index(keys)
    c = df[df["control_type"] != "v_rev"]
    g = c.groupby(keys, sort=False)
    out = v[
        [
            "alpha",
            "metric",
            "metric_clean",
            "metric_aligned",
            "effect",
            "mediation_fraction",
            "score",
        ]
    ].copy()
    stats = pd.DataFrame(
        {
            "ctrl_mediation_mean": g["mediation_fraction"].mean(),
            "ctrl_mediation_std": g["mediation_fraction"].std(ddof=1),
            "ctrl_mediation_p95": g["mediation_fraction"].quantile(0.95),
            "ctrl_effect_mean": g["effect"].mean(),
            "ctrl_effect_std": g["effect"].std(ddof=1),
            "ctrl_effect_p05": g["effect"].quantile(0.05),
            "ctrl_effect_p95": g["effect"].quantile(0.95),
            "ctrl_score_mean": g["score"].mean(),
            "ctrl_score_std": g["score"].std(ddof=1),
            "n_controls": g["score"].count(),
        }
    )
    for ctype in sorted(set(c["control_type"])):
        sub = c[c["control_type"] == ctype].groupby(keys, sort=False)["mediation_fraction"]
        stats[f"{ctype}_mediation_mean"] = sub.mean()
    out = out.join(stats, how="left")
    out["z"] = (out["score"] - out["ctrl_score_mean"]) / out["ctrl_score_std"]
    exceed = c.join(out["score"].rename("score_v"), on=keys)
    ge = (exceed["score"] >= exceed["score_v"]).groupby([exceed[k] for k in keys], sort=False).sum()
    out["p_value"] = (1.0 + ge.reindex(out.index).fillna(0.0)) / (
        1.0 + out["n_controls"].fillna(0.0)
    )
    out["n_controls"] = out["n_controls"].fillna(0).astype("int64")
    out = out.drop(columns=["ctrl_score_mean", "ctrl_score_std"]).reset_index()
    by = [out["run"], out["step"], out["kind"], out["rank"], out["split"], out["alpha_key"]]
    mf = out["mediation_fraction"]
    has_mf = mf.notna().groupby(by, sort=False).transform("any")
    key = pd.Series(np.where(has_mf, mf.fillna(-np.inf), out["score"]), index=out.index)
    out["best"] = False
    out.loc[key.groupby(by, sort=False).idxmax().to_numpy(), "best"] = True  # first layer on ties
    out = out.drop(columns=["alpha_key"])
    cols = ["run", "step", "layer", "kind", "rank", "split", "alpha"]
    return out[cols + [c for c in out.columns if c not in cols]].reset_index(drop=True)


class CausalReport(CausalHtml, Result):
    """What :func:`~revlens.causal.ablation_study` measured.

    Attributes:
        effects: one row per (run, step, layer, kind, rank, split, direction[, alpha]): ``rank``
            is the subspace dimension k (1: one direction), ``split`` the prompts the means are
            over (``"all"``; with several ranks also ``"select"`` / ``"test"``); ``metric`` under the
            intervention (mean over prompts), ``metric_clean`` (M(θ_t)), ``metric_aligned``
            (M(aligned)), ``effect`` = clean − intervened, ``mediation_fraction`` =
            effect / (clean − aligned) (NaN where that gap is ~0, and for steer rows).
            ``direction`` is ``"v_rev"``, ``"random_iso_k"`` or ``"random_cov_k"``;
            ``control_type`` ``"v_rev" | "iso" | "cov"``. Steer rows are on the aligned model
            (``run="aligned"``, ``step=0``, ``alpha`` set).
        config: the study's settings (:class:`~revlens.causal.AblationConfig` fields and more).
        directions: the v_rev directions used.
        controls: layer -> control directions ``[n, d]`` or k-frames ``[n, k, d]`` (rows in
            ``config["control_names"]`` order; the first ``j`` rows of a frame are its rank-j control).
        provenance: model, probe fingerprint, checkpoints and their content fingerprints.

    Tables: :meth:`summary` (v_rev against its controls), :meth:`mean_over_runs`,
    :meth:`dose_response`, :meth:`rank_table` / :meth:`rank_choice` (subspaces: mediation vs k,
    k chosen on held-out prompts). Figures: :meth:`mediation_heatmap`, :meth:`control_bands`,
    :meth:`steer_dose_response`, :meth:`mediation_vs_k`.
    """

    FORMAT = "revlens-causal/2"
    META = "causal.json"

    def __init__(
        self,
        *,
        effects: pd.DataFrame,
        config: dict[str, Any] | None = None,
        directions: Directions | None = None,
        controls: dict[int, Tensor] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.effects = with_rank_columns(effects)
        self.config = dict(config or {})
        self.directions = directions
        self.controls = dict(controls or {})
        self.provenance = dict(provenance or {})
        self._summary = summarize(self.effects)

    @property
    def ranks(self) -> list[int]:
        """The subspace ranks k studied (``[1]``: one direction)."""
        return sorted(int(k) for k in self.effects["rank"].unique())

    def _base_effects(self) -> pd.DataFrame:
        """The rows the one-direction figures draw: the smallest rank, all prompts."""
        e = self.effects
        return e[(e["rank"] == e["rank"].min()) & (e["split"] == "all")] if not e.empty else e

    # ------------------------------------------------------------------ tables
    def summary(self) -> pd.DataFrame:
        """Per (run, step, layer, kind, alpha): v_rev against its controls (see :func:`summarize`)."""
        return self._summary

    def dose_response(self) -> pd.DataFrame:
        """Steering rows of the summary: per (layer, alpha) ``delta`` = M(aligned + αv) − M(aligned)
        beside the controls' mean and p95 of the same delta."""
        s = self._of_test(self._summary, "sufficiency")
        return (
            pd.DataFrame(
                {
                    "layer": s["layer"],
                    "alpha": s["alpha"],
                    "metric": s["metric"],
                    "delta": s["metric"] - s["metric_aligned"],
                    "ctrl_delta_mean": -s["ctrl_effect_mean"],
                    "ctrl_delta_p95": -s["ctrl_effect_p05"],
                    "z": s["z"],
                    "p_value": s["p_value"],
                }
            )
            .sort_values(["layer", "alpha"])
            .reset_index(drop=True)
        )

    def mean_over_runs(self) -> pd.DataFrame:
        """Clamp / patch summary averaged over runs per (step, layer, kind): mean and std."""
        s = self._of_test(self._summary, "necessity")
        cols = [
            "mediation_fraction",
            "effect",
            "ctrl_mediation_mean",
            "ctrl_mediation_p95",
            "z",
            "p_value",
        ]
        keys = ["step", "layer", "kind", "rank", "split"]
        g = s.groupby(keys)[cols]
        out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_std"))
        out["n_runs"] = s.groupby(keys)["run"].nunique()
        return out.reset_index()

    def rank_table(self, kind: str = "clamp", step: int | None = None) -> pd.DataFrame:
        """Mediation vs the subspace rank k per (split, layer, k), beside random k-dim subspaces
        (:func:`revlens.causal.ranks.rank_table`)."""
        from revlens.causal.ranks import rank_table

        return rank_table(self.effects, kind, step)

    def rank_choice(self, kind: str = "clamp", step: int | None = None) -> dict[str, Any]:
        """The (layer, k) chosen on the selection prompts by the study's ``rank_rule`` and its
        mediation on the held-out test prompts (:func:`revlens.causal.ranks.rank_choice`)."""
        from revlens.causal.ranks import rank_choice

        return rank_choice(self.effects, kind, step, rule=self.config.get("rank_rule", "margin"))

    def best_layer(
        self, kind: str = "clamp", step: int | None = None, *, rank: int | None = None
    ) -> int:
        """The layer with the largest mean-over-runs mediation fraction on all prompts (at ``step``:
        last), for subspaces of ``rank`` (default: the smallest studied)."""
        m = self.mean_over_runs()
        rank = min(self.ranks) if rank is None else int(rank)
        m = m[(m["kind"] == kind) & (m["rank"] == rank) & (m["split"] == "all")]
        if m.empty:
            raise ConfigError(
                f"no {kind!r} rows in this report; kinds: {sorted(set(self._summary['kind']))}"
            )
        step = int(m["step"].max()) if step is None else step
        m = m[m["step"] == step]
        if m.empty:
            raise ConfigError(f"step {step} is not in this report")
        return int(m.loc[m["mediation_fraction_mean"].fillna(-np.inf).idxmax(), "layer"])

    def __repr__(self) -> str:
        c = self.config
        lines = [
            f"CausalReport(metric={c.get('metric')!r}, runs={c.get('runs')}, steps={c.get('steps')}, "
            f"layers={c.get('layers')}, kinds={c.get('kinds')}, controls={c.get('controls')}×"
            f"{'+'.join(c.get('control_kinds', []))}, prompts={c.get('n_prompts')}"
        ]
        s = self._summary
        if "kind" in s.columns and not self._of_test(s, "necessity").empty:
            m = self.mean_over_runs()
            for (kind, step), grp in m[
                (m["rank"] == m["rank"].min()) & (m["split"] == "all")
            ].groupby(["kind", "step"]):
                if grp["mediation_fraction_mean"].isna().all():
                    continue
                r = grp.loc[grp["mediation_fraction_mean"].idxmax()]
                lines.append(
                    f"  {kind} step {step}: best layer {int(r['layer'])}, mediation "
                    f"{r['mediation_fraction_mean']:.3f} (controls {r['ctrl_mediation_mean_mean']:.3f}, "
                    f"p95 {r['ctrl_mediation_p95_mean']:.3f}; z {r['z_mean']:.1f}, p {r['p_value_mean']:.3f})"
                )
        if len(self.ranks) > 1:
            for kind in of_test(self.config.get("kinds", []), "necessity"):
                ch = self.rank_choice(kind)
                t = ch["test"]
                where = (
                    "held-out test prompts"
                    if ch["held_out"]
                    else "all prompts (no split: not held out)"
                )
                lines.append(
                    f"  {kind} ranks {self.ranks}: chosen k={ch['rank']} at layer {ch['layer']} "
                    f"({ch['rule']}); on {where}: mediation {t['mediation_mean']:.3f} "
                    f"(random k-subspaces p95 {t['ctrl_p95']:.3f})"
                )
        if "kind" in s.columns and not self._of_test(s, "sufficiency").empty:
            d = self.dose_response()
            top = d.loc[d["delta"].idxmax()]
            lines.append(
                f"  {', '.join(self.kinds('sufficiency'))}: max delta {top['delta']:.3f} at layer "
                f"{int(top['layer'])}, alpha {top['alpha']:g} "
                f"(controls {top['ctrl_delta_mean']:.3f}, p95 {top['ctrl_delta_p95']:.3f})"
            )
        return "\n".join(lines) + ")"

    # ------------------------------------------------------------------ figures
    def mediation_heatmap(self, **kw: Any) -> Any:
        """Layer × step mediation of v_rev (:func:`revlens.plot.mediation_heatmap`)."""
        from revlens.plot import mediation_heatmap

        return mediation_heatmap(self._base_effects(), **kw)

    def control_bands(self, **kw: Any) -> Any:
        """v_rev's mediation per layer inside its controls' band (:func:`revlens.plot.control_bands`)."""
        from revlens.plot import control_bands

        return control_bands(self._base_effects(), **kw)

    def mediation_vs_k(self, kind: str = "clamp", step: int | None = None, **kw: Any) -> Any:
        """Mediation fraction against the subspace rank k, per layer, inside the band of random
        k-dim subspaces (5–95 %, per control type), on the held-out test prompts when the study
        split them, the chosen k marked (:func:`revlens.plot.mediation_vs_k`)."""
        from revlens.plot import mediation_vs_k

        choice = self.rank_choice(kind, step)
        return mediation_vs_k(self.rank_table(kind, step), choice=choice, **kw)

    def steer_dose_response(self, **kw: Any) -> Any:
        """Steering dose–response against controls (:func:`revlens.plot.steer_dose_response`)."""
        from revlens.plot import steer_dose_response

        return steer_dose_response(self._base_effects(), **kw)

    def figure(self, kind: str = "mediation", **kw: Any) -> Any:
        """Deprecated: call the named figure method."""
        names = {
            "mediation": "mediation_heatmap",
            "controls": "control_bands",
            "steer": "steer_dose_response",
        }
        if kind not in names:
            raise ConfigError(
                f"unknown figure kind {kind!r}; figure methods: {', '.join(names.values())}"
            )
        warnings.warn(
            f"CausalReport.figure({kind!r}) is deprecated; use CausalReport.{names[kind]}()",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, names[kind])(**kw)

    def kinds(self, test: Test | None = None) -> list[str]:
        """The intervention kinds in this report, in registry order (of one ``test`` if given)."""
        present = set(self.effects["kind"])
        return [k.name for k in interventions(test=test) if k.name in present]

    def kind_figures(self, kind: str) -> list[Any]:
        """The figures of one intervention kind, each a zero-argument callable (what the HTML page
        draws per kind): a necessity test's mediation heatmap and control bands (and mediation vs k
        with several ranks); a sufficiency test's dose–response."""
        if intervention(kind).test == "sufficiency":
            return [lambda: self.steer_dose_response(intervention=kind)]
        out = [
            lambda: self.mediation_heatmap(intervention=kind),
            lambda: self.control_bands(intervention=kind),
        ]
        return out + ([lambda: self.mediation_vs_k(kind)] if len(self.ranks) > 1 else [])

    def _of_test(self, frame: pd.DataFrame, test: Test) -> pd.DataFrame:
        return frame[kind_is(frame["kind"], test)] if not frame.empty else frame

    def _main_figure(self) -> Any:
        necessity = self.kinds("necessity")
        if necessity and len(self.ranks) > 1:
            return self.mediation_vs_k(necessity[0])
        if necessity:
            return self.mediation_heatmap(intervention=necessity[0])
        sufficiency = self.kinds(
            "sufficiency"
        )  # none: the figure's own error names what is present
        return self.steer_dose_response(**({"intervention": sufficiency[0]} if sufficiency else {}))

    # ------------------------------------------------------------------ persistence
    def _write(self, d: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        write_frame(self.effects, d / "effects.json")
        self.effects.to_csv(d / "effects.csv", index=False)
        self._summary.to_csv(d / "summary.csv", index=False)
        if self.directions is not None:
            self.directions.save(d / "directions.safetensors")
        if self.controls:
            save_file(
                {str(k): v.contiguous() for k, v in self.controls.items()},
                str(d / "controls.safetensors"),
            )
        return {
            "config": self.config,
            "provenance": self.provenance,
            "directions": self.directions is not None,
            "controls": bool(self.controls),
        }

    @classmethod
    def _read(cls, d: Path, meta: dict[str, Any]) -> "CausalReport":
        from safetensors.torch import load_file

        directions = (
            Directions.load(d / "directions.safetensors") if meta.get("directions") else None
        )
        controls = (
            {int(k): v for k, v in load_file(str(d / "controls.safetensors")).items()}
            if meta.get("controls")
            else {}
        )
        return cls(
            effects=read_frame(d / "effects.json"),
            config=meta["config"],
            directions=directions,
            controls=dict(sorted(controls.items())),
            provenance=meta["provenance"],
        )

    def equals(self, other: "CausalReport") -> bool:
        """Exact equality of tables, config and vectors (used to test save / load)."""
        try:
            pd.testing.assert_frame_equal(self.effects, other.effects, check_exact=True)
            pd.testing.assert_frame_equal(self._summary, other._summary, check_exact=True)
        except AssertionError:
            return False
        same_dirs = (self.directions is None) == (other.directions is None) and (
            self.directions is None or torch.equal(self.directions.basis, other.directions.basis)
        )  # type: ignore[union-attr]
        same_ctrl = self.controls.keys() == other.controls.keys() and all(
            torch.equal(self.controls[k], other.controls[k]) for k in self.controls
        )
        return bool(same_dirs and same_ctrl and self.config == other.config)
