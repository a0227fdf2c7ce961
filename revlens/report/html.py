"""The drift :class:`~revlens.report.Report`'s HTML sections (the page: :mod:`revlens.plot.html`).

Summary (beside the paper's numbers for a lab history), the layer × step heatmap (run selector;
★ = above the isotropic null's p99), trajectories, post-instruction positions, direction stability
and agreement, behaviour (the history's metrics) and the weight-space section when the report
holds one; :func:`~revlens.plot.html.write_html` adds the configuration and provenance.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from revlens._numbers import mean_std
from revlens.errors import RevlensError
from revlens.plot.html import HtmlPage, escape, frame, markup, table
from revlens.plot.html import mean_std_cell as _ms
from revlens.plot.metrics import metric_columns
from revlens.weights.html import weights_section

__all__ = ["ReportHtml"]

_e = escape


def _final_metrics(metrics: pd.DataFrame | None, column: str) -> dict[str, Mapping[str, Any]]:
    """Mean ± sd over runs of ``column`` at each run's final step, per run kind."""
    if (
        metrics is None
        or column not in metrics.columns
        or not {"run", "step"} <= set(metrics.columns)
    ):
        return {}
    df = metrics.dropna(subset=["run", "step"])
    last = df[df["step"] == df.groupby("run")["step"].transform("max")]
    kinds = (
        last["kind"].astype(str) if "kind" in last.columns else pd.Series("run", index=last.index)
    )
    return {
        kind: mean_std(pd.to_numeric(part[column], errors="coerce"))
        for kind, part in last.groupby(kinds)
    }


def _behaviour_rows(report: Any, groups: list[str], paper: Mapping[str, Any]) -> list[list[str]]:
    metrics = getattr(report, "metrics", None)
    if metrics is None:
        return []
    harm = (getattr(report, "provenance", None) or {}).get("harm_metric")
    rows = []
    for col in metric_columns(metrics):
        fin = _final_metrics(metrics, col)
        if not fin:
            continue
        pct = col == harm or col.endswith(("_rate", "_acc"))
        row = [
            f"{_e(col.replace('_', ' '))} at the final step",
            *[_ms(fin.get("run" if g == "runs" else g), pct) for g in groups],
        ]
        cell = "—"
        if col == harm:
            final, blocked = paper.get("harm_final"), paper.get("harm_final_blocked")
            cell = f"{_ms(final, pct=True)} → blocked {_ms(blocked, pct=True)}"
        rows.append([*row, cell])
    return rows


def _summary_section(page: HtmlPage, report: Any) -> None:
    try:
        s = report.headline()
    except (RevlensError, KeyError, ValueError) as exc:
        page.add(f'<h2>Summary</h2><p class="note warn">no summary: {_e(exc)}</p>')
        return
    groups = [g for g in ("runs", "control", "blocked") if s.get(g)]
    paper = s.get("paper") or {}
    step = s.get("step")
    spec = [
        ("cos(drift, v_rev) after the first update", "cos_first", "cos_first"),
        (f"cos(drift, v_rev) at step {_e(step)}", "cos_step20", "cos_step20"),
        ("final cos(drift, v_rev)", "final_cos", "final_cos"),
        ("run-step pairs above the isotropic p99 (best layer)", "above_iso_p99", "above_iso_p99"),
        ("… above the covariance-matched p99 (best layer)", "above_cov_p99", None),
        ("… above the isotropic p99 (all layers)", "above_iso_p99_all_layers", None),
    ]
    rows = []
    for label, key, pkey in spec:
        cell = _ms(paper.get(pkey)) if pkey else "—"
        if key == "final_cos" and paper.get("final_cos_blocked"):
            cell += f" → blocked {_ms(paper['final_cos_blocked'])}"
        rows.append([label, *[_ms(s[g].get(key)) for g in groups], cell])
    rows += _behaviour_rows(report, groups, paper)
    intro = (
        f"Method <code>{_e(s.get('method'))}</code>, best layer <b>{_e(s.get('best_layer'))}</b> "
        f"(highest mean cos over runs at step {_e(step)}); mean ± sd over runs. "
        f"Paper: {_e(paper.get('source', 'Poppi & Lukas'))}, for comparison only."
    )
    header = ["quantity", *[_e(g) for g in groups], "paper"]
    page.add(f'<h2>Summary</h2><p class="note">{intro}</p>' + table(header, rows, "summary"))
    note = (getattr(report, "provenance", None) or {}).get("note")
    if note:  # the history's own note (a lab track says whether the paper's shape holds there, and why not)
        page.add(f'<p class="note history-note">{markup(str(note))}</p>')
    per_layer = s["runs"].get("cos_step20", {}).get("per_layer") or {}
    if per_layer:
        layer_rows = [
            [
                _e(lay),
                *[
                    _ms((s["runs"].get(k) or {}).get("per_layer", {}).get(lay))
                    for k in ("cos_first", "cos_step20", "final_cos")
                ],
            ]
            for lay in sorted(per_layer)
        ]
        page.add(
            "<details><summary>per layer (ordinary runs)</summary>"
            + table(["layer", "first update", f"step {_e(step)}", "final"], layer_rows)
            + "</details>"
        )


class ReportHtml:
    """Mixin of :class:`~revlens.report.Report`: its HTML page (:class:`~revlens.plot.html.HtmlRenderable`)."""

    html_title = "revlens: alignment reversion report"

    def html_sections(self, page: HtmlPage) -> None:
        """Summary, drift heatmap and trajectories, positions, directions, behaviour, weight space."""
        _summary_section(page, self)
        page.add("<h2>Drift along v_rev</h2>")
        page.figure(
            self.heatmap(),
            "cos between each checkpoint's drift from the aligned model and v_rev, per layer and step. "
            "Choose a run in the menu; ★ marks cells above the isotropic null's p99 (for the mean: in "
            "every run). Hover a cell for its CI, nulls and p-values.",
        )
        page.figure(self.trajectories(), "Grey band: isotropic null ±p99.")
        if getattr(self, "positions", None):
            page.add("<h2>Post-instruction positions</h2>")
            page.try_figure(
                self.position_heatmap,
                "Mean cos(drift, v) over runs at each run's final step, one "
                "direction per (position, layer); positions count from the end of the prompt (−1: the last "
                "template token). ★: every run above the isotropic p99.",
            )
            page.add(
                "<details><summary>position table</summary>"
                + frame(self.position_table())
                + "</details>"
            )
        page.add("<h2>Directions</h2>")
        table = self.directions_table
        page.try_figure(self.stability)
        if "method" in table and table["method"].nunique() > 1:
            page.try_figure(self.agreement)
        page.add("<details><summary>directions table</summary>" + frame(table) + "</details>")
        if getattr(self, "metrics", None) is not None:
            page.add("<h2>Behaviour</h2>")
            page.try_figure(self.behaviour, "The history's own evaluation of each checkpoint.")
        if getattr(self, "weights", None) is not None:
            weights_section(page, self.weights)
        if (
            getattr(self, "defenses", None) is not None
        ):  # a DefenseComparison attached to the report
            from revlens.plot.defenses import defenses_section

            defenses_section(page, self.defenses)

    def to_html(self, path: str | Path, **kw: Any) -> Path:
        """Write an offline HTML report (:func:`revlens.plot.html.write_html`; ``title=``)."""
        from revlens.plot.html import write_html

        return write_html(self, path, **kw)
