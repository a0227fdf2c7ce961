"""The result of :func:`revlens.analyze`: tables, directions, provenance; saved and loaded exactly.

A saved report is a directory of plain files (no pickle), written atomically:

- ``drift.json``, ``directions.json``, ``metrics.json``: tables, column-wise JSON with the
  dtype of each column; floats are written with Python's shortest exact repr, so a load gives
  back bit-identical values (``NaN`` is written as ``null``);
- ``drift.csv``, ``directions.csv``: the same tables for spreadsheets (not read back);
- ``vectors/<method>.safetensors``: the directions (:meth:`Directions.save`);
- ``report.json``: config, provenance, the method list, the format version;
- ``revlens-manifest.json``: every file and its size (an incomplete directory is refused).
"""

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, no_type_check

import pandas as pd

from revlens._frames import read_frame, write_frame
from revlens._io import confined
from revlens._result import Result
from revlens.directions.base import Directions
from revlens.errors import ConfigError, HistoryError
from revlens.evaluate import Evaluation
from revlens.report.html import ReportHtml
from revlens.weights.report import WeightReport

__all__ = ["Report"]


def _fmt(block: Mapping[str, Any] | None, key: str) -> str:
    if not block:
        return "—"
    v = block[key]
    return f"{v['mean']:.3f}" + ("" if math.isnan(v["std"]) else f" ± {v['std']:.3f}")


def _safe_name(method: str, i: int) -> str:
    return (
        f"{i:02d}-{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in method)}.safetensors"
    )


class Report(ReportHtml, Result):
    """What :func:`revlens.analyze` measured.

    Attributes:
        drift: one row per (run, step, layer, method) — see :data:`revlens.drift.DRIFT_COLUMNS`
            (``cos``, CI ``cos_lo``/``cos_hi``, ``proj``, ``frac``, ``norm``, nulls ``null_iso_p99``,
            ``null_cov_p99``, ``p_iso``, ``p_cov``, ``significant``, ``significant_cov``...).
        directions: method -> :class:`Directions` (the vectors themselves).
        directions_table: one row per (layer, method): ``stability`` (bootstrap mean |cos| with
            the full-sample direction), ``perm_p`` (label-permutation p-value of
            ‖μ_base − μ_aligned‖), ``norm`` and ``agree_<method>`` (cos with each method's direction).
        metrics: the history's per-checkpoint evaluation table (harm, task accuracy...), if any.
        config: the analysis settings (:class:`revlens.analyze.AnalyzeConfig`).
        provenance: revlens version, date, checkpoints and content fingerprints, model source,
            number of prompts and the prompts.
        weights: the weight-space reversion of the same history (a
            :class:`revlens.weights.WeightReport`, from ``analyze(..., weights=True)``), or ``None``.

    Figures: :meth:`heatmap`, :meth:`trajectories`, :meth:`stability`, :meth:`agreement`,
    :meth:`behaviour`, :meth:`subspace_energy` (with ``subspaces`` / ``subspace_drift``: rank-k
    fits and the drift's energy in them, when analysed with ``ranks``); the paper's headline
    numbers: :meth:`headline` (dict) / :meth:`summary`
    (DataFrame).
    """

    FORMAT = "revlens-report/2"
    META = "report.json"

    def __init__(
        self,
        *,
        drift: pd.DataFrame,
        directions: Mapping[str, Directions] | pd.DataFrame,
        directions_table: pd.DataFrame | None = None,
        config: Mapping[str, Any],
        provenance: Mapping[str, Any],
        metrics: pd.DataFrame | None = None,
        vectors: Mapping[str, Directions] | None = None,
        lab_metrics: pd.DataFrame | None = None,
        weights: WeightReport | None = None,
        subspaces: Mapping[str, Directions] | None = None,
        subspace_drift: pd.DataFrame | None = None,
    ) -> None:
        if isinstance(
            directions, pd.DataFrame
        ):  # the revlens 0.1 call: directions=<table>, vectors=...
            warnings.warn(
                "Report(directions=<table>, vectors=...) is deprecated: pass directions=<dict of "
                "Directions> and directions_table=<table>",
                DeprecationWarning,
                stacklevel=2,
            )
            directions, directions_table = dict(vectors or {}), directions
        self.drift = drift
        self.directions: dict[str, Directions] = dict(directions)
        self.directions_table = directions_table if directions_table is not None else pd.DataFrame()
        self.config = dict(config)
        self.provenance = dict(provenance)
        self.metrics = metrics if metrics is not None else lab_metrics
        self.weights = weights
        self.subspaces: dict[str, Directions] = dict(subspaces or {})
        self.subspace_drift = subspace_drift

    # ------------------------------------------------------------------ deprecated names
    @property
    def vectors(self) -> dict[str, Directions]:
        """Deprecated alias of :attr:`directions`."""
        warnings.warn("Report.vectors is now Report.directions", DeprecationWarning, stacklevel=2)
        return self.directions

    @property
    def lab_metrics(self) -> pd.DataFrame | None:
        """Deprecated alias of :attr:`metrics`."""
        warnings.warn("Report.lab_metrics is now Report.metrics", DeprecationWarning, stacklevel=2)
        return self.metrics

    # ------------------------------------------------------------------ views
    @property
    def methods(self) -> list[str]:
        """Direction methods, in analysis order."""
        return list(self.directions)

    @property
    def runs(self) -> list[str]:
        """Run names, in table order."""
        return list(dict.fromkeys(self.drift["run"]))

    @property
    def layers(self) -> list[int]:
        """Analysed layers."""
        return sorted(int(x) for x in self.drift["layer"].unique())

    def headline(self, method: str | None = None, *, step: int = 20) -> dict[str, Any]:
        """The paper's headline quantities as a dict (see :func:`revlens.drift.headline`).

        Args:
            method: primary method (default ``"mean_diff"`` if analysed, else the first one).
            step: the "step 20" of the paper (the closest available step is used).
        """
        from revlens.drift.summary import headline

        if method is None:
            method = self._primary()
        return headline(self.drift, method=method, step=step)

    @property
    def positions(self) -> list[int]:
        """The post-instruction positions analysed separately (``[]`` for one position rule)."""
        return (
            sorted(int(p) for p in self.drift["position"].unique())
            if "position" in self.drift.columns
            else []
        )

    def _primary(self) -> str:
        """The method headlines and figures show by default: ``mean_diff`` (at the last position
        when several were analysed)."""
        for name in ("mean_diff", "mean_diff@-1"):
            if name in self.directions:
                return name
        return self.methods[-1] if self.positions else self.methods[0]

    def _figure_methods(self, method: Any) -> Any:
        """With several positions, figures default to one method at every position."""
        if method is not None or not self.positions:
            return method
        base = self._primary().split("@")[0]
        return [m for m in self.methods if m.split("@")[0] == base]

    def position_table(self, *, step: str | int = "final") -> pd.DataFrame:
        """One row per (position, layer, method) of a multi-position analysis: mean cos over the
        ordinary runs at ``step`` (``"final"``: each run's last), the share of those run-steps above
        the isotropic p99, and the direction's ``norm`` / ``perm_p`` / ``stability`` — to choose a
        direction per (position, layer).

        Raises:
            ConfigError: the report was made with one position rule.
        """
        if not self.positions:
            raise ConfigError(
                "this report analysed one position rule; use position=('post_instruction', k)"
            )
        from revlens.drift.summary import position_summary

        return position_summary(self.drift, self.directions_table, step=step)

    def summary(self, method: str | None = None, *, step: int = 20) -> pd.DataFrame:
        """:meth:`headline` as a tidy table: one row per (group, quantity) with ``mean``, ``std``,
        ``n`` (or ``count`` / ``total``) beside the paper's value."""
        from revlens.drift.summary import headline_frame

        return headline_frame(self.headline(method, step=step))

    def __repr__(self) -> str:
        kinds = self.drift.drop_duplicates("run").set_index("run")["kind"]
        runs = ", ".join(f"{r}{'' if k == 'run' else f' ({k})'}" for r, k in kinds.items())
        lines = [
            f"Report(runs: {runs}",
            f"       layers {self.layers}, methods {self.methods}, prompts {self.provenance.get('n_prompts')}",
        ]
        try:
            s = self.headline()
        except (ConfigError, HistoryError, KeyError, ValueError):
            return "\n".join(lines) + ")"
        r, c = s["runs"], s["control"]
        above = r["above_iso_p99"]
        lines.append(
            f"       {s['method']} best layer {s['best_layer']}: cos first {_fmt(r, 'cos_first')}, "
            f"step {s['step']} {_fmt(r, 'cos_step20')}, final {_fmt(r, 'final_cos')}, "
            f"above iso p99 {above['count']}/{above['total']}"
        )
        if c:
            lines.append(
                f"       control: step {s['step']} {_fmt(c, 'cos_step20')}, above iso p99 "
                f"{c['above_iso_p99']['count']}/{c['above_iso_p99']['total']}"
            )
        if self.weights is not None:
            lines.append("       + weight space: " + " ".join(repr(self.weights).split()))
        return "\n".join(lines) + ")"

    # ------------------------------------------------------------------ figures
    def heatmap(self, **kw: Any) -> Any:
        """Layer × step heatmap of cos(drift, v_rev) (:func:`revlens.plot.drift_heatmap`)."""
        from revlens.plot import drift_heatmap

        return drift_heatmap(self.drift, **{**kw, "method": self._figure_methods(kw.get("method"))})

    def trajectories(self, **kw: Any) -> Any:
        """cos(drift, v_rev) against step, per layer (:func:`revlens.plot.drift_trajectories`)."""
        from revlens.plot import drift_trajectories

        return drift_trajectories(
            self.drift, **{**kw, "method": self._figure_methods(kw.get("method"))}
        )

    def stability(self, **kw: Any) -> Any:
        """Bootstrap stability of each method's direction (:func:`revlens.plot.direction_stability`)."""
        from revlens.plot import direction_stability

        return direction_stability(self.directions_table, **kw)

    def agreement(self, **kw: Any) -> Any:
        """Cosine between methods' directions (:func:`revlens.plot.direction_agreement`)."""
        from revlens.plot import direction_agreement

        return direction_agreement(self.directions_table, **kw)

    def position_heatmap(
        self, *, method: str | None = None, step: str | int = "final", **kw: Any
    ) -> Any:
        """Layer × position heatmap of the mean cos(drift, v) of one method at ``step``
        (:func:`revlens.plot.position_heatmap`)."""
        from revlens.plot import position_heatmap

        base = method or self._primary().split("@")[0]
        return position_heatmap(self.position_table(step=step), method=base, **kw)

    @no_type_check  # validates its own arguments (typed errors), also under the test type-checker
    def with_metrics(self, metrics: Evaluation | pd.DataFrame) -> "Report":
        """Join an evaluation table (a :class:`revlens.evaluate.Evaluation` or its ``table``:
        ``checkpoint, role, run, kind, step, <metric>...``) into :attr:`metrics`, beside the
        history's own; returns ``self``. Columns already present are replaced by the new ones."""
        table = getattr(metrics, "table", metrics)
        if not isinstance(table, pd.DataFrame) or "checkpoint" not in table.columns:
            raise ConfigError(
                "with_metrics expects an Evaluation or a table with a 'checkpoint' column"
            )
        keys = ["checkpoint", "role", "run", "kind", "step"]
        if self.metrics is None:
            self.metrics = table.reset_index(drop=True)
            return self
        new = [c for c in table.columns if c not in keys]
        old = self.metrics.drop(columns=[c for c in new if c in self.metrics.columns])
        joined = old.merge(table[["checkpoint", *new]], on="checkpoint", how="outer")
        for key in keys[1:]:
            if key in table.columns and key in joined.columns:
                fill = table.set_index("checkpoint")[key]
                joined[key] = joined[key].where(joined[key].notna(), joined["checkpoint"].map(fill))
        self.metrics = joined
        return self

    def behaviour(self, **kw: Any) -> Any:
        """The history's evaluation metrics against step (:func:`revlens.plot.metrics_figure`)."""
        from revlens.plot import metrics_figure

        if self.metrics is None:
            raise ConfigError("this report has no metrics table (the history carried none)")
        return metrics_figure(self.metrics, **kw)

    def figure(self, kind: str = "heatmap", **kw: Any) -> Any:
        """Deprecated: call the named figure method (``report.heatmap()``...)."""
        names = ("heatmap", "trajectories", "stability", "agreement", "behaviour")
        if kind not in names:
            raise ConfigError(f"unknown figure kind {kind!r}; figure methods: {', '.join(names)}")
        warnings.warn(
            f"Report.figure({kind!r}) is deprecated; use Report.{kind}()",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, kind)(**kw)

    def subspace_energy(self, **kw: Any) -> Any:
        """The drift's energy in rank-k subspaces against k, beside its nulls
        (:func:`revlens.plot.subspace_energy`; needs ``analyze(..., ranks=...)``)."""
        from revlens.plot import subspace_energy

        if self.subspace_drift is None:
            raise ConfigError(
                "this report has no subspace table: analyze with ranks=(1, 2, 4, ...)"
            )
        return subspace_energy(self.subspace_drift, **kw)

    def _main_figure(self) -> Any:
        return self.heatmap()

    # ------------------------------------------------------------------ persistence
    def _write(self, d: Path) -> dict[str, Any]:
        (d / "vectors").mkdir()
        write_frame(self.drift, d / "drift.json")
        write_frame(self.directions_table, d / "directions.json")
        self.drift.to_csv(d / "drift.csv", index=False)
        self.directions_table.to_csv(d / "directions.csv", index=False)
        files = {}
        for i, (method, vec) in enumerate(self.directions.items()):
            files[method] = _safe_name(method, i)
            vec.save(d / "vectors" / files[method])
        if self.metrics is not None:
            write_frame(self.metrics, d / "metrics.json")
        subspaces = {}
        if self.subspaces:
            (d / "subspaces").mkdir()
            for i, (method, vec) in enumerate(self.subspaces.items()):
                subspaces[method] = _safe_name(method, i)
                vec.save(d / "subspaces" / subspaces[method])
        if self.subspace_drift is not None:
            write_frame(self.subspace_drift, d / "subspace_drift.json")
            self.subspace_drift.to_csv(d / "subspace_drift.csv", index=False)
        if self.weights is not None:
            self.weights.write_into(d / "weights")
        return {
            "config": self.config,
            "provenance": self.provenance,
            "vectors": files,
            "metrics": self.metrics is not None,
            "subspaces": subspaces,
            "subspace_drift": self.subspace_drift is not None,
            "weights": self.weights is not None,
        }

    @classmethod
    def _read(cls, d: Path, meta: dict[str, Any]) -> "Report":
        vectors = {
            m: Directions.load(confined(d / "vectors", f, "report vectors"))
            for m, f in meta["vectors"].items()
        }
        weights = None
        if meta.get("weights"):
            from revlens.weights.report import WeightReport

            weights = WeightReport.read_from(d / "weights")
        subspaces = {
            m: Directions.load(confined(d / "subspaces", f, "report subspaces"))
            for m, f in (meta.get("subspaces") or {}).items()
        }
        return cls(
            drift=read_frame(d / "drift.json"),
            directions=vectors,
            directions_table=read_frame(d / "directions.json"),
            config=meta["config"],
            provenance=meta["provenance"],
            metrics=read_frame(d / "metrics.json") if meta.get("metrics") else None,
            subspaces=subspaces,
            subspace_drift=read_frame(d / "subspace_drift.json")
            if meta.get("subspace_drift")
            else None,
            weights=weights,
        )
