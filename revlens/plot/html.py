"""Offline HTML reports: one self-contained file per report, readable with no network.

This module is the page and nothing else: it knows no result class. A result renders its own
sections — what it needs from itself stays beside it (:mod:`revlens.report.html`,
:mod:`revlens.causal.html`, :mod:`revlens.weights.html`) — through the small
:class:`HtmlRenderable` protocol; :func:`write_html` adds the configuration and provenance and
writes the file.

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
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import plotly.graph_objects as go

from revlens._io import check_writable_dir, write_text
from revlens._numbers import format_mean_std
from revlens._version import __version__
from revlens.errors import OutputError, RevlensError

__all__ = [
    "HtmlPage",
    "HtmlRenderable",
    "markup",
    "write_causal_report",
    "write_html",
    "write_report",
    "write_weights_report",
]

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


def escape(value: Any) -> str:
    """``str(value)`` HTML-escaped (quotes too): every name and prompt from the data goes through it."""
    return html.escape(str(value), quote=True)


_e = escape


def markup(text: str) -> str:
    """Escaped ``text`` with its markdown ``code`` and ``**bold**`` spans as HTML."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


class HtmlPage:
    """Collects sections; embeds plotly.js with the first figure only."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.n_figures = 0

    def add(self, fragment: str) -> None:
        """Append an already-escaped HTML fragment."""
        self.parts.append(fragment)

    def figure(self, fig: go.Figure, caption: str = "") -> None:
        """Add a figure (plotly.js inlined with the first one) and its caption."""
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
        """The whole page: head, sections, a stamp with the revlens version and the date."""
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


def mean_std_cell(block: Mapping[str, Any] | None, pct: bool = False) -> str:
    """``{"mean", "std", "n"}`` → "0.412 ± 0.031 (n=3)"; a count block → "k / n"."""
    if not block:
        return "—"
    if "count" in block:
        return f"{int(block['count'])} / {int(block['total'])}"
    text = format_mean_std(block, pct=pct)
    if text == "n/a":
        return "—"
    return text + (f" <small>(n={int(block['n'])})</small>" if block.get("n") else "")


def table(header: list[str], rows: list[list[str]], table_id: str | None = None) -> str:
    """An HTML table; cells are already-escaped HTML fragments."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    tid = f' id="{table_id}"' if table_id else ""
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def frame(df: pd.DataFrame, *, max_rows: int = 500) -> str:
    """A DataFrame as an escaped HTML table (at most ``max_rows`` rows, with a note when cut)."""
    shown = df.head(max_rows)
    text = shown.to_html(
        index=False, escape=True, na_rep="—", float_format=lambda x: f"{x:.4g}", border=0
    )
    more = f'<p class="note">showing {max_rows} of {len(df)} rows</p>' if len(df) > max_rows else ""
    return text + more


_Page = HtmlPage
_ms, _table, _frame = mean_std_cell, table, frame


def config_section(page: HtmlPage, config: Mapping[str, Any] | None) -> None:
    """The configuration as JSON (nothing without one)."""
    if config:
        page.add(
            f"<h2>Configuration</h2><pre>{_e(json.dumps(config, indent=2, default=str))}</pre>"
        )


def provenance_section(page: HtmlPage, prov: Mapping[str, Any] | None) -> None:
    """Provenance: scalar fields, the chat template, checkpoints with fingerprints, the prompts."""
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
        rows.append(
            [
                "chat template",
                f"{_e(template.get('name'))} (sha {_e(template.get('sha'))}; from "
                f"{_e(template.get('origin'))})",
            ]
        )
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


@runtime_checkable
class HtmlRenderable(Protocol):
    """What the HTML writer needs of a result: a default title, the configuration and provenance
    it was made with, and its own sections (``Report``, ``CausalReport``, ``WeightReport``)."""

    html_title: str
    config: Mapping[str, Any] | None
    provenance: Mapping[str, Any] | None

    def html_sections(self, page: HtmlPage) -> None:
        """Add this result's sections (figures, tables) to ``page``."""


def write_html(result: HtmlRenderable, path: str | Path, *, title: str | None = None) -> Path:
    """Write ``result`` as one self-contained HTML file: its own sections, then the configuration
    and provenance. Written atomically: a failed render keeps an old file as it was.

    Returns:
        the path written.
    """
    page = HtmlPage(title or result.html_title)
    result.html_sections(page)
    config_section(page, getattr(result, "config", None))
    provenance_section(page, getattr(result, "provenance", None))
    return _write_page(path, page.render())


def write_report(report: HtmlRenderable, path: str | Path, *, title: str | None = None) -> Path:
    """Write a drift :class:`~revlens.report.Report` as one self-contained HTML file (its sections:
    :mod:`revlens.report.html`). The same as :func:`write_html`."""
    return write_html(report, path, title=title)


def write_weights_report(
    weights: HtmlRenderable, path: str | Path, *, title: str | None = None
) -> Path:
    """Write a :class:`~revlens.weights.WeightReport` as one self-contained HTML file (its sections:
    :mod:`revlens.weights.html`). The same as :func:`write_html`."""
    return write_html(weights, path, title=title)


def write_causal_report(
    report: HtmlRenderable, path: str | Path, *, title: str | None = None
) -> Path:
    """Write a ``CausalReport`` as one self-contained HTML file (its sections:
    :mod:`revlens.causal.html`). The same as :func:`write_html`."""
    return write_html(report, path, title=title)
