"""The ``CausalReport``'s HTML sections (the page: :mod:`revlens.plot.html`): the summary table
(v_rev against its controls), each intervention kind's figures (``kind_figures``: mediation heatmaps
and control bands, steering dose–response) and the effects table."""

from pathlib import Path
from typing import Any

import pandas as pd

from revlens.plot.html import HtmlPage, escape, frame

__all__ = ["CausalHtml"]

_e = escape


class CausalHtml:
    """Mixin of :class:`~revlens.causal.CausalReport`: its HTML page (:class:`~revlens.plot.html.HtmlRenderable`)."""

    html_title = "revlens: causal mediation report"

    def html_sections(self, page: HtmlPage) -> None:
        """Summary against the controls, each kind's figures, the effects table."""
        effects = self.effects
        summary = self.summary()
        mean = self.mean_over_runs()
        if isinstance(mean, pd.DataFrame) and not mean.empty:
            page.add(
                "<h2>Summary: v_rev against random-direction controls (mean over runs)</h2>"
                + frame(mean)
            )
        if isinstance(summary, pd.DataFrame):
            page.add(
                "<details><summary>summary per run (z, one-sided p against the controls)</summary>"
                + frame(summary)
                + "</details>"
            )
        for (
            kind
        ) in self.kinds():  # each intervention kind's own figures (the kind object says which)
            page.add(f"<h2>{_e(kind)}</h2>")
            for draw in self.kind_figures(kind):
                page.try_figure(draw)
        page.add("<details><summary>effects table</summary>" + frame(effects) + "</details>")

    def to_html(self, path: str | Path, **kw: Any) -> Path:
        """Write an offline HTML report (:func:`revlens.plot.html.write_html`; ``title=``)."""
        from revlens.plot.html import write_html

        return write_html(self, path, **kw)
