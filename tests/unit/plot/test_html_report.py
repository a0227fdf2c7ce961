"""The offline HTML writer: one self-contained file, escaped data, atomic writes."""

import re

import pandas as pd
import pytest
import torch

from revlens._version import __version__
from revlens.causal import CausalReport
from revlens.directions import Directions
from revlens.errors import ConfigError
from revlens.plot.html import write_causal_report, write_report
from revlens.report import Report

EVIL = "<script>alert(1)</script>"


def _report(drift, directions, *, lab: bool) -> Report:
    vectors = {m: Directions.from_tensor(torch.nn.functional.normalize(torch.randn(3, 8), dim=-1),
                                         [0, 1, 2], method=m) for m in ("mean_diff", "pca")}  # fmt: skip
    metrics = None
    if lab:
        metrics = pd.DataFrame({
            "kind": ["run"] * 4 + ["control"] * 2,
            "run": ["seed0", "seed0", "<b>seed1</b>", "<b>seed1</b>", "ctrl", "ctrl"],
            "step": [0, 20, 0, 20, 0, 20], "harm_rate": [0.0, 0.8, 0.0, 0.6, 0.0, 0.1],
            "harm_logodds": [-2, 1, -2, 0.5, -2, -1.5], "task_acc": [0.1, 1.0, 0.1, 1.0, 0.1, 1.0],
            "task_loss": [3.0, 0.1, 3.0, 0.1, 3.0, 0.2],
        })  # fmt: skip
    prov = {"revlens_version": __version__, "date": "2026-06-30T12:00:00+00:00", "model": "tiny",
            "harm_metric": "harm_rate" if lab else None, "n_prompts": 2, "prompts": ["w1 w2", EVIL],
            "checkpoints": {"aligned": {"role": "aligned", "run": None, "step": 0, "fingerprint": "ab12cd",
                                        "source": "/x/aligned"},
                            "<b>seed1</b>/step-1": {"role": "run", "run": "<b>seed1</b>", "step": 1,
                                                    "fingerprint": "ef34", "source": "/x/s1"}}}  # fmt: skip
    return Report(drift=drift, directions=vectors, directions_table=directions, config={"seed": 0, "note": EVIL},
                  provenance=prov, metrics=metrics)  # fmt: skip


@pytest.fixture(scope="module")
def written(drift, directions, tmp_path_factory):
    """The same tables written without and with a metrics table (the history's evaluations)."""
    d = tmp_path_factory.mktemp("html")
    plain = write_report(_report(drift, directions, lab=False), d / "sub" / "r.html", title="T <i>")
    lab = write_report(_report(drift, directions, lab=True), d / "lab.html")
    return {"plain": plain, "lab": lab, "dir": d}


def test_single_self_contained_file(written):
    path = written["plain"]
    assert path == written["dir"] / "sub" / "r.html" and path.is_file()
    raw = path.read_text()
    n_fig = raw.count("Plotly.newPlot(")
    assert n_fig == 4  # heatmap, trajectories, stability, agreement
    assert len(re.findall(r"<script[^>]*\bsrc=", raw)) == 0  # nothing loaded from elsewhere
    start = raw.index("* plotly.js v")
    page = raw[:start] + raw[raw.index("</script>", start) :]  # the page without the library
    assert not re.search(r"https?:|//cdn", page)  # no CDN, no remote link
    assert raw.count("* plotly.js v") == 1  # the library inlined exactly once
    assert len(raw) > 1_000_000
    assert "<title>T &lt;i&gt;</title>" in raw
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]  # no temporary left behind


def test_data_is_escaped(written):
    raw = written["lab"].read_text()
    assert "alert(1)" in raw
    assert EVIL not in raw and "<b>seed1</b>" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "&lt;b&gt;seed1&lt;/b&gt;" in raw


def test_summary_beside_the_paper_and_behaviour_rows_from_the_metrics(written):
    lab, plain = written["lab"].read_text(), written["plain"].read_text()
    table = re.search(r'<table id="summary">.*?</table>', lab, re.S).group(0)
    assert "<th>paper</th>" in table and "0.647 ± 0.021" in table and "24 / 24" in table
    # the declared harm metric gets the paper's harm numbers beside it
    assert "harm rate at the final step" in table
    assert "19.0% ± 4.0%" in table and "blocked 8.5% ± 1.5%" in table
    assert "70.0% ± 14.1%" in table  # harm at the final step, mean ± sd over the two runs
    assert "task acc at the final step" in table and "harm logodds at the final step" in table
    assert "<th>control</th>" in table
    plain_table = re.search(r'<table id="summary">.*?</table>', plain, re.S).group(0)
    assert "<th>paper</th>" in plain_table and "harm rate" not in plain_table
    assert lab.count("Plotly.newPlot(") == 5  # + behaviour


def test_config_and_provenance(written):
    raw = written["plain"].read_text()
    assert f"revlens {__version__}" in raw
    ck = re.search(r'<table id="checkpoints">.*?</table>', raw, re.S).group(0)
    assert "ab12cd" in ck and "ef34" in ck and "/x/aligned" in ck
    assert "2026-06-30T12:00:00+00:00" in raw
    assert "&quot;seed&quot;: 0" in raw


def test_failed_render_keeps_the_old_file(drift, directions, tmp_path):
    path = tmp_path / "r.html"
    path.write_text("old report")
    before = path.read_bytes()
    broken = _report(drift.drop(columns="cos"), directions, lab=False)
    with pytest.raises(ConfigError):
        write_report(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_causal_report(effects, tmp_path):
    e = effects.copy()
    e.loc[e["kind"] == "steer", ["run", "step"]] = ["aligned", 0]
    rep = CausalReport(effects=e, config={"metric": EVIL}, provenance={"model": "<b>m</b>"})
    path = write_causal_report(rep, tmp_path / "c.html")
    raw = path.read_text()
    assert raw.count("Plotly.newPlot(") == 5  # clamp ×2, patch ×2, steer
    assert raw.count("* plotly.js v") == 1
    assert EVIL not in raw and "<b>m</b>" not in raw and "&lt;b&gt;m&lt;/b&gt;" in raw
    assert "mediation_fraction_mean" in raw
    assert rep.to_html(tmp_path / "c2.html").is_file()


def test_the_page_knows_no_result_class_each_result_renders_itself(drift, directions, effects):
    """plot/html.py (stage 1) is the page; each result's sections sit beside it and it reaches them only
    through the HtmlRenderable protocol, typed — no `Any` standing in for a class six stages up."""
    import inspect

    from revlens.plot import html
    from revlens.weights import WeightReport

    for result in (_report(drift, directions, lab=False), CausalReport(effects=effects)):
        assert isinstance(result, html.HtmlRenderable), type(result)
    for cls in (Report, CausalReport, WeightReport):
        assert isinstance(cls.html_title, str) and callable(cls.html_sections), cls
        assert (
            cls.html_sections.__module__ != html.__name__
        )  # rendered beside the class, not in plot/
    for fn in (
        html.write_html,
        html.write_report,
        html.write_causal_report,
        html.write_weights_report,
    ):
        first = next(iter(inspect.signature(fn).parameters.values()))
        assert first.annotation is html.HtmlRenderable, fn.__name__
    source = inspect.getsource(html)
    for member in ("headline", "heatmap", "kind_figures", "mean_over_runs", "spectrum_figure"):
        assert member not in source, member


def test_the_historys_note_is_shown_under_the_summary_escaped(drift, directions, tmp_path):
    """A lab history's note (does the paper's shape hold on its track, and why not) sits under the
    summary table: markdown code / bold as HTML, anything else escaped; no note, no paragraph."""
    rep = _report(drift, directions, lab=True)
    rep.provenance["note"] = f"Track `remap`: the shape does **not** hold. {EVIL}"
    html = write_report(rep, tmp_path / "n.html").read_text()
    para = re.search(r'<p class="note history-note">(.*?)</p>', html, re.S).group(1)
    assert para.startswith("Track <code>remap</code>: the shape does <b>not</b> hold.")
    assert EVIL not in para and "&lt;script&gt;" in para
    assert html.index("history-note") > html.index('<table id="summary">')
    assert (
        "history-note"
        not in write_report(_report(drift, directions, lab=True), tmp_path / "m.html").read_text()
    )
