"""Offline HTML reports: one self-contained file per report, readable with no network.

plotly.js is embedded inline once (the first figure; the others reuse it), so the page makes no
request at all. Every name and prompt from the data is HTML-escaped. Files are written
atomically (a temporary file in the same directory, then ``os.replace``).
"""

import datetime
import html
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from revlens._io import check_writable_dir, write_text
from revlens._numbers import format_mean_std, mean_std
from revlens._version import __version__
from revlens.errors import OutputError, RevlensError
from revlens.plot.metrics import metric_columns

__all__ = ["write_causal_report", "write_report", "write_weights_report"]

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


def _write_page(path: Any, text: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"cannot write the HTML report to {out}: it is a directory")
    check_writable_dir(out.parent, "HTML report folder")
    return write_text(out, text)


def _ms(block: Mapping[str, Any] | None, pct: bool = False) -> str:
    """``{"mean", "std", "n"}`` → "0.412 ± 0.031 (n=3)"; a count block → "k / n"."""
    if not block:
        return "—"
    if "count" in block:
        return f"{int(block['count'])} / {int(block['total'])}"
    text = format_mean_std(block, pct=pct)
    if text == "n/a":
        return "—"
    return text + (f" <small>(n={int(block['n'])})</small>" if block.get("n") else "")


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


def _final_metrics(metrics: pd.DataFrame | None, column: str) -> dict[str, Mapping[str, Any]]:
    """Mean ± sd over runs of ``column`` at each run's final step, per run kind."""
    if metrics is None or column not in metrics.columns or not {"run", "step"} <= set(metrics.columns):
        return {}
    df = metrics.dropna(subset=["run", "step"])
    last = df[df["step"] == df.groupby("run")["step"].transform("max")]
    kinds = last["kind"].astype(str) if "kind" in last.columns else pd.Series("run", index=last.index)
    return {kind: mean_std(pd.to_numeric(part[column], errors="coerce")) for kind, part in last.groupby(kinds)}


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
        row = [f"{_e(col.replace('_', ' '))} at the final step",
               *[_ms(fin.get("run" if g == "runs" else g), pct) for g in groups]]
        cell = "—"
        if col == harm:
            cell = f"{_ms(paper.get('harm_final'), pct=True)} → blocked {_ms(paper.get('harm_final_blocked'), pct=True)}"
        rows.append([*row, cell])
    return rows


def _markup(text: str) -> str:
    """Escaped ``text`` with its markdown ``code`` and ``**bold**`` spans as HTML."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _summary_section(page: _Page, report: Any) -> None:
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
    page.add(f'<h2>Summary</h2><p class="note">{intro}</p>' + _table(header, rows, "summary"))
    note = (getattr(report, "provenance", None) or {}).get("note")
    if note:  # the history's own note (a lab track says whether the paper's shape holds there, and why not)
        page.add(f'<p class="note history-note">{_markup(str(note))}</p>')
    per_layer = s["runs"].get("cos_step20", {}).get("per_layer") or {}
    if per_layer:
        layer_rows = [
            [_e(lay), *[_ms((s["runs"].get(k) or {}).get("per_layer", {}).get(lay))
                        for k in ("cos_first", "cos_step20", "final_cos")]]
            for lay in sorted(per_layer)
        ]
        page.add("<details><summary>per layer (ordinary runs)</summary>"
                 + _table(["layer", "first update", f"step {_e(step)}", "final"], layer_rows) + "</details>")


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
    template = prov.get("chat_template")
    if isinstance(template, Mapping):
        rows.append(["chat template", f"{_e(template.get('name'))} (sha {_e(template.get('sha'))}; from "
                                      f"{_e(template.get('origin'))})"])
    page.add("<h2>Provenance</h2>" + _table(["field", "value"], rows))
    cks = prov.get("checkpoints") or {}
    if isinstance(cks, Mapping) and cks:
        cols = ["role", "run", "step", "fingerprint", "source"]
        if any(isinstance(i, Mapping) and "kind" in i for i in cks.values()):
            cols.insert(3, "kind")  # full checkpoint or adapter (weight-space reports)
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
    page = _Page(title or "revlens: alignment reversion report")
    _summary_section(page, report)
    page.add("<h2>Drift along v_rev</h2>")
    page.figure(
        report.heatmap(),
        "cos between each checkpoint's drift from the aligned model and v_rev, per layer and step. "
        "Choose a run in the menu; ★ marks cells above the isotropic null's p99 (for the mean: in "
        "every run). Hover a cell for its CI, nulls and p-values.",
    )
    page.figure(report.trajectories(), "Grey band: isotropic null ±p99.")
    if getattr(report, "positions", None):
        page.add("<h2>Post-instruction positions</h2>")
        page.try_figure(report.position_heatmap, "Mean cos(drift, v) over runs at each run's final step, one "
                        "direction per (position, layer); positions count from the end of the prompt (−1: the last "
                        "template token). ★: every run above the isotropic p99.")
        page.add("<details><summary>position table</summary>" + _frame(report.position_table()) + "</details>")
    page.add("<h2>Directions</h2>")
    table = report.directions_table
    page.try_figure(report.stability)
    if "method" in table and table["method"].nunique() > 1:
        page.try_figure(report.agreement)
    page.add("<details><summary>directions table</summary>" + _frame(table) + "</details>")
    if getattr(report, "metrics", None) is not None:
        page.add("<h2>Behaviour</h2>")
        page.try_figure(report.behaviour, "The history's own evaluation of each checkpoint.")
    if getattr(report, "weights", None) is not None:
        _weights_section(page, report.weights)
    if getattr(report, "defenses", None) is not None:  # a DefenseComparison attached to the report
        from revlens.plot.defenses import defenses_section

        defenses_section(page, report.defenses)
    _config_section(page, getattr(report, "config", None))
    _provenance_section(page, getattr(report, "provenance", None))
    return _write_page(path, page.render())


_WEIGHTS_INTRO = (
    "The same history read from the weights, with no forward pass. Per weight matrix, "
    "<code>V = W_aligned − W_base</code> is what alignment moved and <code>ΔW_t = W_t − W_start</code> "
    "what fine-tuning moved (from aligned; from base for control runs, which therefore have nothing to "
    "undo). <b>cos(ΔW, −V)</b> on the flattened weights and the <b>reverted fraction</b> "
    "<code>−⟨ΔW, V⟩ / ‖V‖²</code> (1 = all of alignment undone along V) are shown beside the exact "
    "isotropic null's p99 (ΔW a random direction of weight space); the share of ‖ΔW‖² inside V's top-k "
    "singular subspaces beside random subspaces of the same rank (mean, p99) and chance (k/m). "
    "Sums over a block or the whole model are exact (inner products and energies add)."
)


def _weights_section(page: _Page, weights: Any) -> None:
    """The "Weight space" section: summary, heatmaps, model-level trajectories, subspaces, spectrum."""
    page.add(f'<h2>Weight space</h2><p class="note">{_WEIGHTS_INTRO}</p>')
    try:
        summary = weights.summary()
    except (RevlensError, KeyError, ValueError) as exc:
        page.add(f'<p class="note warn">no weight-space summary: {_e(exc)}</p>')
        summary = None
    if summary is not None:
        header = [_e(c) for c in summary.columns]
        rows = [[_e(v) for v in r] for r in summary.itertuples(index=False)]
        page.add(_table(header, rows, "weights-summary") + '<p class="note">mean ± sd over runs; whole model.</p>')
    page.try_figure(lambda: weights.heatmap("revert"), "Reverted fraction per block and module type (first panel: "
                    "the whole block). Choose a run in the menu; hover for the null's p99.")
    page.try_figure(lambda: weights.trajectories("revert"), "Whole model; dotted: the isotropic null's p99 per run.")
    page.try_figure(lambda: weights.trajectories("cos"))
    page.try_figure(lambda: weights.subspaces("left"), "Grey: random subspaces of the same rank (mean, p99) and chance.")
    page.try_figure(weights.spectrum_figure, "Cumulative share of ‖V‖² in its top singular directions.")
    model = getattr(weights, "model", None)
    if isinstance(model, pd.DataFrame) and not model.empty:
        page.add("<details><summary>whole-model table</summary>" + _frame(model) + "</details>")
    prov = getattr(weights, "provenance", {}) or {}
    page.add(f'<p class="note">{_e(prov.get("bytes_read", 0) / 1e6)} MB read in {_e(prov.get("seconds"))} s '
             f'({_e(prov.get("gb_per_s"))} GB/s).</p>')


def write_weights_report(weights: Any, path: Any, *, title: str | None = None) -> Path:
    """Write a :class:`~revlens.weights.WeightReport` as one self-contained HTML file: the "Weight
    space" section, the history's behaviour metrics, the configuration and the checkpoints read.

    Returns:
        the path written.
    """
    page = _Page(title or "revlens: weight-space reversion report")
    _weights_section(page, weights)
    metrics = getattr(weights, "metrics", None)
    if metrics is not None:
        from revlens.plot.metrics import metrics_figure

        page.add("<h2>Behaviour</h2>")
        page.try_figure(lambda: metrics_figure(metrics), "The history's own evaluation of each checkpoint.")
    _config_section(page, getattr(weights, "config", None))
    _provenance_section(page, getattr(weights, "provenance", None))
    return _write_page(path, page.render())


def write_causal_report(report: Any, path: Any, *, title: str | None = None) -> Path:
    """Write a ``CausalReport`` as one self-contained HTML file: the summary table (v_rev
    against its controls), each intervention kind's figures (``report.kind_figures``: mediation
    heatmaps and control bands, steering dose–response), the configuration and provenance.

    Returns:
        the path written.
    """
    page = _Page(title or "revlens: causal mediation report")
    effects = report.effects
    summary = report.summary()
    mean = report.mean_over_runs()
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
    for kind in report.kinds():  # each intervention kind's own figures (the kind object says which)
        page.add(f"<h2>{_e(kind)}</h2>")
        for draw in report.kind_figures(kind):
            page.try_figure(draw)
    page.add("<details><summary>effects table</summary>" + _frame(effects) + "</details>")
    _config_section(page, getattr(report, "config", None))
    _provenance_section(page, getattr(report, "provenance", None))
    return _write_page(path, page.render())
