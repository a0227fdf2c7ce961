"""The result of :func:`revlens.analyze`: tables, directions, provenance; saved and loaded exactly.

A saved report is a directory of plain files (no pickle):

- ``drift.json``, ``directions.json``, ``lab_metrics.json``: tables, column-wise JSON with the
  dtype of each column; floats are written with Python's shortest exact repr, so a load gives
  back bit-identical values (``NaN`` is written as ``null``);
- ``drift.csv``, ``directions.csv``: the same tables for spreadsheets (not read back);
- ``vectors/<method>.safetensors``: the directions (:meth:`Directions.save`);
- ``report.json``: config, provenance, the method list, the format version.
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from revlens.directions.base import Directions
from revlens.errors import ConfigError, HistoryError
from revlens.report.frames import read_frame, write_frame

__all__ = ["Report"]

_FORMAT = "revlens-report/1"




def _fmt(block: Mapping[str, Any] | None, key: str) -> str:
    if not block:
        return "—"
    v = block[key]
    return f"{v['mean']:.3f}" + ("" if math.isnan(v["std"]) else f" ± {v['std']:.3f}")


class Report:
    """What :func:`revlens.analyze` measured.

    Attributes:
        drift: one row per (run, step, layer, method) — see :data:`revlens.drift.DRIFT_COLUMNS`
            (``cos``, CI ``cos_lo``/``cos_hi``, ``proj``, ``frac``, ``norm``, nulls ``null_iso_p99``,
            ``null_cov_p99``, ``p_iso``, ``p_cov``, ``significant``, ``significant_cov``...).
        directions: one row per (layer, method): ``stability`` (bootstrap mean |cos| with the
            full-sample direction), ``perm_p`` (label-permutation p-value of ‖μ_base − μ_aligned‖),
            ``norm`` (‖μ_base − μ_aligned‖) and ``agree_<method>`` (cos with each method's direction).
        vectors: method -> :class:`Directions`.
        config: the analysis settings.
        provenance: revlens version, date, checkpoints and content fingerprints, model source,
            number of prompts and the prompts.
        lab_metrics: the lab's metrics table for a lab history, else ``None``.
    """

    def __init__(
        self,
        *,
        drift: pd.DataFrame,
        directions: pd.DataFrame,
        vectors: Mapping[str, Directions],
        config: Mapping[str, Any],
        provenance: Mapping[str, Any],
        lab_metrics: pd.DataFrame | None = None,
    ) -> None:
        self.drift = drift
        self.directions = directions
        self.vectors = dict(vectors)
        self.config = dict(config)
        self.provenance = dict(provenance)
        self.lab_metrics = lab_metrics

    # ------------------------------------------------------------------ views
    @property
    def directions_table(self) -> pd.DataFrame:
        """Alias of :attr:`directions`."""
        return self.directions

    @property
    def methods(self) -> list[str]:
        """Direction methods, in analysis order."""
        return list(self.vectors)

    @property
    def runs(self) -> list[str]:
        """Run names, in table order."""
        return list(dict.fromkeys(self.drift["run"]))

    @property
    def layers(self) -> list[int]:
        """Analysed layers."""
        return sorted(int(x) for x in self.drift["layer"].unique())

    def summary(self, method: str | None = None, *, step: int = 20) -> dict[str, Any]:
        """The paper's headline quantities (see :func:`revlens.drift.headline`).

        Args:
            method: primary method (default ``"mean_diff"`` if analysed, else the first one).
            step: the "step 20" of the paper (the closest available step is used).
        """
        from revlens.drift.summary import headline

        if method is None:
            method = "mean_diff" if "mean_diff" in self.vectors else self.methods[0]
        return headline(self.drift, method=method, step=step)

    def __repr__(self) -> str:
        kinds = self.drift.drop_duplicates("run").set_index("run")["kind"]
        runs = ", ".join(f"{r}{'' if k == 'run' else f' ({k})'}" for r, k in kinds.items())
        lines = [
            f"Report(runs: {runs}",
            f"       layers {self.layers}, methods {self.methods}, "
            f"prompts {self.provenance.get('n_prompts')}",
        ]
        try:
            s = self.summary()
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
        return "\n".join(lines) + ")"

    # ------------------------------------------------------------------ rendering (lazy)
    def figure(self, kind: str = "heatmap", **kw: Any) -> Any:
        """A plotly figure of this report (see :func:`revlens.plot.report_figure`)."""
        from revlens.plot import report_figure

        return report_figure(self, kind, **kw)

    def to_html(self, path: Any, **kw: Any) -> Any:
        """Write an offline HTML report (see :func:`revlens.report.html.write_report`)."""
        from revlens.report.html import write_report

        return write_report(self, path, **kw)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Any) -> Path:
        """Write the report to ``directory`` (created); returns its path."""
        d = Path(directory)
        (d / "vectors").mkdir(parents=True, exist_ok=True)
        write_frame(self.drift, d / "drift.json")
        write_frame(self.directions, d / "directions.json")
        self.drift.to_csv(d / "drift.csv", index=False)
        self.directions.to_csv(d / "directions.csv", index=False)
        files = {}
        for i, (method, vec) in enumerate(self.vectors.items()):
            fname = f"{i:02d}-{''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in method)}.safetensors"
            vec.save(d / "vectors" / fname)
            files[method] = fname
        if self.lab_metrics is not None:
            write_frame(self.lab_metrics, d / "lab_metrics.json")
        meta = {
            "format": _FORMAT,
            "config": self.config,
            "provenance": self.provenance,
            "vectors": files,
            "lab_metrics": self.lab_metrics is not None,
        }
        (d / "report.json").write_text(json.dumps(meta, indent=1, default=str))
        return d

    @classmethod
    def load(cls, directory: Any) -> "Report":
        """Inverse of :meth:`save`.

        Raises:
            ConfigError: ``directory`` holds no saved report, or one of another format.
        """
        d = Path(directory)
        if not (d / "report.json").is_file():
            raise ConfigError(f"{d} holds no saved revlens report (report.json)")
        meta = json.loads((d / "report.json").read_text())
        if meta.get("format") != _FORMAT:
            raise ConfigError(
                f"{d / 'report.json'} has format {meta.get('format')!r}; expected {_FORMAT!r}"
            )
        vectors = {m: Directions.load(d / "vectors" / f) for m, f in meta["vectors"].items()}
        lab = read_frame(d / "lab_metrics.json") if meta.get("lab_metrics") else None
        return cls(
            drift=read_frame(d / "drift.json"),
            directions=read_frame(d / "directions.json"),
            vectors=vectors,
            config=meta["config"],
            provenance=meta["provenance"],
            lab_metrics=lab,
        )
