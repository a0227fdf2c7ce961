"""The :class:`~revlens.weights.WeightReport`'s HTML sections (the page: :mod:`revlens.plot.html`);
the drift report's page shows the same "Weight space" section (:func:`weights_section`)."""

from pathlib import Path
from typing import Any

import pandas as pd

from revlens.errors import RevlensError
from revlens.plot.html import HtmlPage, escape, frame, table

__all__ = ["WeightsHtml", "weights_section"]

_e = escape

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


def weights_section(page: HtmlPage, weights: Any) -> None:
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
        page.add(
            table(header, rows, "weights-summary")
            + '<p class="note">mean ± sd over runs; whole model.</p>'
        )
    page.try_figure(
        lambda: weights.heatmap("revert"),
        "Reverted fraction per block and module type (first panel: "
        "the whole block). Choose a run in the menu; hover for the null's p99.",
    )
    page.try_figure(
        lambda: weights.trajectories("revert"),
        "Whole model; dotted: the isotropic null's p99 per run.",
    )
    page.try_figure(lambda: weights.trajectories("cos"))
    page.try_figure(
        lambda: weights.subspaces("left"),
        "Grey: random subspaces of the same rank (mean, p99) and chance.",
    )
    page.try_figure(
        weights.spectrum_figure, "Cumulative share of ‖V‖² in its top singular directions."
    )
    model = getattr(weights, "model", None)
    if isinstance(model, pd.DataFrame) and not model.empty:
        page.add("<details><summary>whole-model table</summary>" + frame(model) + "</details>")
    prov = getattr(weights, "provenance", {}) or {}
    page.add(
        f'<p class="note">{_e(prov.get("bytes_read", 0) / 1e6)} MB read in {_e(prov.get("seconds"))} s '
        f"({_e(prov.get('gb_per_s'))} GB/s).</p>"
    )


class WeightsHtml:
    """Mixin of :class:`~revlens.weights.WeightReport`: its HTML page (:class:`~revlens.plot.html.HtmlRenderable`)."""

    html_title = "revlens: weight-space reversion report"

    def html_sections(self, page: HtmlPage) -> None:
        """The "Weight space" section and the history's behaviour metrics."""
        weights_section(page, self)
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            from revlens.plot.metrics import metrics_figure

            page.add("<h2>Behaviour</h2>")
            page.try_figure(
                lambda: metrics_figure(metrics), "The history's own evaluation of each checkpoint."
            )

    def to_html(self, path: str | Path, **kw: Any) -> Path:
        """Write an offline HTML report of this result alone (:func:`revlens.plot.html.write_html`)."""
        from revlens.plot.html import write_html

        return write_html(self, path, **kw)
