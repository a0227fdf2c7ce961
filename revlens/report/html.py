"""Offline HTML reports: one self-contained file per report, readable with no network.

plotly.js is embedded inline once (the first figure; the others reuse it), so the page makes no
request at all. Every name and prompt from the data is HTML-escaped. Files are written
atomically (a temporary file in the same directory, then ``os.replace``).
"""

import datetime
import html
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from revlens._version import __version__
from revlens.errors import RevlensError

__all__ = ["write_causal_report", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:1.5em 2em 4em}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0} .note{color:#555;font-size:.92em;max-width:60em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;background:#fff}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#fff;border:1px solid #ddd;padding:.8em;overflow:auto;font-size:.85em}
.figure{background:#fff;border:1px solid #e4e4e4;margin:1em 0;padding:.3em}
details{margin:.6em 0} summary{cursor:pointer;font-weight:600}
code{font-size:.9em} .warn{color:#a33}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _Page:
    """Collects sections; embeds plotly.js with the first figure only."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.n_figures = 0

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def figure(self, fig: go.Figure, caption: str = "") -> None:
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=self.n_figures == 0,
            include_mathjax=False,
            div_id=f"revlens-fig-{self.n_figures}",
            config={"displaylogo": False, "responsive": True},
        )
        self.n_figures += 1
        cap = f'<p class="note">{caption}</p>' if caption else ""
        self.add(f'<div class="figure">{div}</div>{cap}')

    def try_figure(self, make: Callable[[], go.Figure], caption: str = "") -> None:
        """Add a figure, or a one-line note saying why it could not be drawn."""
        try:
            fig = make()
        except RevlensError as exc:
            self.add(f'<p class="note warn">figure not drawn: {_e(exc)}</p>')
            return
        self.figure(fig, caption)

    def render(self) -> str:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(self.title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{_e(self.title)}</h1>"
            f'<p class="sub">revlens {_e(__version__)} · rendered {_e(stamp)}</p>'
            + "\n".join(self.parts)
            + "</main></body></html>\n"
        )


def _write_atomic(path: Any, text: str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _ms(block: Mapping[str, Any] | None, pct: bool = False) -> str:
    """``{"mean", "std", "n"}`` → "0.412 ± 0.031 (n=3)"; a count block → "k / n"."""
    if not block:
        return "—"
    if "count" in block:
        return f"{int(block['count'])} / {int(block['total'])}"
    mean, std = block.get("mean", math.nan), block.get("std", math.nan)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    digits = 1 if pct else 3
    s = f"{mean * scale:.{digits}f}{unit}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f" ± {std * scale:.{digits}f}{unit}"
    if block.get("n"):
        s += f" <small>(n={int(block['n'])})</small>"
    return s


def _table(header: list[str], rows: list[list[str]], table_id: str | None = None) -> str:
    """Cells are already-escaped HTML fragments."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    tid = f' id="{table_id}"' if table_id else ""
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame(df: pd.DataFrame, *, max_rows: int = 500) -> str:
    shown = df.head(max_rows)
    text = shown.to_html(
        index=False, escape=True, na_rep="—", float_format=lambda x: f"{x:.4g}", border=0
    )
    more = f'<p class="note">showing {max_rows} of {len(df)} rows</p>' if len(df) > max_rows else ""
    return text + more


def _is_lab(report: Any) -> bool:
    prov = getattr(report, "provenance", None) or {}
    return getattr(report, "lab_metrics", None) is not None or bool(
        prov.get("lab_dir") or prov.get("lab")
    )


def _final_lab(metrics: pd.DataFrame | None, column: str) -> dict[str, Mapping[str, Any]]:
    """Mean ± sd over runs of ``column`` at each run's final step, per role."""
    if (
        metrics is None
        or column not in metrics.columns
        or not {"run", "step"} <= set(metrics.columns)
    ):
        return {}
    df = metrics.dropna(subset=["step"])
    last = df[df["step"] == df.groupby("run")["step"].transform("max")]
    roles = (
        last["role"].astype(str) if "role" in last.columns else pd.Series("run", index=last.index)
    )
    out = {}
    for role, part in last.groupby(roles):
        v = pd.to_numeric(part[column], errors="coerce").dropna()
        out["control" if role.startswith("control") else role] = {
            "mean": float(v.mean()) if len(v) else math.nan,
            "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "n": len(v),
        }
    return out


def _summary_section(page: _Page, report: Any) -> None:
    try:
        s = report.summary()
    except (RevlensError, KeyError, ValueError) as exc:
        page.add(f'<h2>Summary</h2><p class="note warn">no summary: {_e(exc)}</p>')
        return
    lab = _is_lab(report)
    groups = [g for g in ("runs", "control", "blocked") if s.get(g)]
    paper = s.get("paper") or {}
    header = ["quantity", *[_e(g) for g in groups]] + (["paper"] if lab else [])
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
        row = [label, *[_ms(s[g].get(key)) for g in groups]]
        if lab:
            cell = _ms(paper.get(pkey)) if pkey else "—"
            if key == "final_cos" and paper.get("final_cos_blocked"):
                cell += f" → blocked {_ms(paper['final_cos_blocked'])}"
            row.append(cell)
        rows.append(row)
    metrics = getattr(report, "lab_metrics", None)
    for label, col, pct, pkey in (
        ("harmfulness rate at the final step", "harm_rate", True, "harm_final"),
        ("harm log-odds at the final step", "harm_logodds", False, None),
        ("task accuracy at the final step", "task_acc", False, None),
    ):
        fin = _final_lab(metrics, col)
        if not fin:
            continue
        row = [label, *[_ms(fin.get(g if g != "runs" else "run"), pct) for g in groups]]
        if lab:
            cell = _ms(paper.get(pkey), pct=True) if pkey else "—"
            if pkey and paper.get("harm_final_blocked"):
                cell += f" → blocked {_ms(paper['harm_final_blocked'], pct=True)}"
            row.append(cell)
        rows.append(row)
    intro = (
        f"Method <code>{_e(s.get('method'))}</code>, best layer <b>{_e(s.get('best_layer'))}</b> "
        f"(highest mean cos over runs at step {_e(step)}); mean ± sd over runs."
    )
    if lab:
        intro += f" Paper: {_e(paper.get('source', 'Poppi & Lukas'))}."
    page.add(f'<h2>Summary</h2><p class="note">{intro}</p>' + _table(header, rows, "summary"))
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
            + _table(["layer", "first update", f"step {_e(step)}", "final"], layer_rows)
            + "</details>"
        )


def _config_section(page: _Page, config: Mapping[str, Any] | None) -> None:
    if config:
        page.add(
            f"<h2>Configuration</h2><pre>{_e(json.dumps(config, indent=2, default=str))}</pre>"
        )


def _provenance_section(page: _Page, prov: Mapping[str, Any] | None) -> None:
    if not prov:
        return
    scalar_keys = [
        k
        for k, v in prov.items()
        if k not in ("checkpoints", "prompts") and not isinstance(v, (dict, list))
    ]
    rows = [[_e(k), _e(prov[k])] for k in scalar_keys]
    page.add("<h2>Provenance</h2>" + _table(["field", "value"], rows))
    cks = prov.get("checkpoints") or {}
    if isinstance(cks, Mapping) and cks:
        cols = ["role", "run", "step", "fingerprint", "source"]
        ck_rows = [
            [
                f"<code>{_e(name)}</code>",
                *[_e(info.get(c, "")) if isinstance(info, Mapping) else _e(info) for c in cols],
            ]
            for name, info in cks.items()
        ]
        page.add(
            "<h3>Checkpoints (content fingerprints)</h3>"
            + _table(["checkpoint", *cols], ck_rows, "checkpoints")
        )
    prompts = prov.get("prompts")
    if prompts:
        items = "".join(f"<li><code>{_e(p)}</code></li>" for p in prompts)
        page.add(
            f'<details><summary>{len(prompts)} probe prompts</summary><ol id="prompts">{items}</ol></details>'
        )


def write_report(report: Any, path: Any, *, title: str | None = None) -> Path:
    """Write a drift :class:`~revlens.report.Report` as one self-contained HTML file.

    Sections: summary (beside the paper's numbers for a lab history), the layer × step heatmap
    (run selector; ★ = above the isotropic null's p99), trajectories, direction stability and
    agreement, lab behaviour (for a lab), the configuration and provenance (revlens version,
    date, checkpoints with content fingerprints, prompts).

    Returns:
        the path written.
    """
    from revlens import plot

    page = _Page(title or "revlens: alignment reversion report")
    _summary_section(page, report)
    page.add("<h2>Drift along v_rev</h2>")
    page.figure(
        plot.report_figure(report, "heatmap"),
        "cos between each checkpoint's drift from the aligned model and v_rev, per layer and step. "
        "Choose a run in the menu; ★ marks cells above the isotropic null's p99 (for the mean: in "
        "every run). Hover a cell for its CI, nulls and p-values.",
    )
    page.figure(plot.report_figure(report, "trajectories"), "Grey band: isotropic null ±p99.")
    page.add("<h2>Directions</h2>")
    page.figure(plot.report_figure(report, "stability"))
    methods = report.directions["method"].nunique() if "method" in report.directions else 0
    if methods > 1:
        page.try_figure(lambda: plot.report_figure(report, "agreement"))
    page.add(
        "<details><summary>directions table</summary>" + _frame(report.directions) + "</details>"
    )
    metrics = getattr(report, "lab_metrics", None)
    if metrics is not None:
        page.add("<h2>Lab behaviour</h2>")
        page.try_figure(lambda: plot.lab_metrics_figure(metrics))
    _config_section(page, getattr(report, "config", None))
    _provenance_section(page, getattr(report, "provenance", None))
    return _write_atomic(path, page.render())


def write_causal_report(report: Any, path: Any, *, title: str | None = None) -> Path:
    """Write a ``CausalReport`` as one self-contained HTML file: the summary table (v_rev
    against its controls), mediation heatmaps and control bands per intervention kind, the
    steering dose–response, the configuration and provenance.

    Returns:
        the path written.
    """
    from revlens import plot

    page = _Page(title or "revlens: causal mediation report")
    effects = report.effects
    summary = getattr(report, "summary", None)
    mean = report.mean_over_runs() if hasattr(report, "mean_over_runs") else None
    if isinstance(mean, pd.DataFrame) and not mean.empty:
        page.add(
            "<h2>Summary: v_rev against random-direction controls (mean over runs)</h2>"
            + _frame(mean)
        )
    if isinstance(summary, pd.DataFrame):
        page.add(
            "<details><summary>summary per run (z, one-sided p against the controls)</summary>"
            + _frame(summary)
            + "</details>"
        )
    kinds = set(effects["kind"]) if "kind" in effects.columns else set()
    for kind in ("clamp", "patch"):
        if kind in kinds:
            page.add(f"<h2>{kind}</h2>")
            page.try_figure(lambda k=kind: plot.causal_figure(report, "mediation", intervention=k))
            page.try_figure(lambda k=kind: plot.causal_figure(report, "controls", intervention=k))
    if "steer" in kinds:
        page.add("<h2>steer</h2>")
        page.try_figure(lambda: plot.causal_figure(report, "steer"))
    page.add("<details><summary>effects table</summary>" + _frame(effects) + "</details>")
    _config_section(page, getattr(report, "config", None))
    _provenance_section(page, getattr(report, "provenance", None))
    return _write_atomic(path, page.render())
