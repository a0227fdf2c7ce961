"""WeightReport draws itself (named figures), writes an offline HTML "Weight space" section (alone
and inside analyze's report), and the `revlens weights` command writes its files."""

import pytest

import revlens
from revlens.cli import main
from revlens.errors import ConfigError


def test_figures(planted_report):
    fig = planted_report.heatmap("revert")
    units = {"(whole block)", "attn.c_attn.weight", "mlp.c_fc.weight", "ln_1.weight"}
    assert units <= {a.text for a in fig.layout.annotations}
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons][:2] == ["mean over runs", "planted"]
    assert any("control" in b.label for b in buttons)
    n_units = len(fig.layout.annotations)
    assert len(fig.data) == len(buttons) * n_units and sum(t.visible for t in fig.data) == n_units
    frac = planted_report.heatmap("frac_left", k=4)
    assert "top-4" in frac.layout.title.text
    traj = planted_report.trajectories("cos")
    assert {t.name for t in traj.data} >= {"planted", "control (control)"}
    sub = planted_report.subspaces("both")
    assert [a.text for a in sub.layout.annotations] == ["k = 1", "k = 4"]
    assert planted_report.spectrum_figure().data
    with pytest.raises(ConfigError, match="measure"):
        planted_report.heatmap("nope")
    with pytest.raises(ConfigError, match="k=3"):
        planted_report.heatmap("frac_left", k=3)


def test_offline_html(planted_report, tmp_path):
    html = planted_report.to_html(tmp_path / "w.html").read_text()
    assert "<h2>Weight space</h2>" in html and 'id="weights-summary"' in html
    import re

    assert html.count("* plotly.js v") == 1 and not re.findall(r"<script[^>]*\bsrc=", html)
    start = html.index("* plotly.js v")
    page = html[:start] + html[html.index("</script>", start) :]
    assert not re.search(r"https?:|//cdn", page)  # nothing loaded from elsewhere
    assert "planted/step-3" in html and "adapter" in html  # the checkpoints read, and their kind


@pytest.mark.slow
def test_analyze_with_weights_attaches_saves_and_renders(planted, tmp_path):
    import tiny

    history = revlens.History.from_dirs(
        base=planted["base"],
        aligned=planted["aligned"],
        runs={"planted": planted["runs"]["planted"]},
    )
    report = revlens.analyze(
        history,
        list(tiny.PROMPTS),
        methods="mean_diff",
        n_null=20,
        n_bootstrap=0,
        n_stability=0,
        weights=revlens.WeightsConfig(ks=(2,), n_random=4),
        progress=False,
    )
    assert (
        report.weights is not None and report.weights.ks == [2] and report.config["weights"] is True
    )
    assert "weight space" in repr(report)
    report.save(tmp_path / "r")
    back = revlens.load(tmp_path / "r")
    assert back.weights.model.equals(report.weights.model)
    html = back.to_html(tmp_path / "r.html").read_text()
    assert "<h2>Drift along v_rev</h2>" in html and "<h2>Weight space</h2>" in html
    with pytest.raises(ConfigError, match="HistoryStats"):
        from revlens.collect import collect

        stats = collect(history, list(tiny.PROMPTS), n_bootstrap=0, progress=False)
        revlens.analyze(stats, methods="mean_diff", weights=True, progress=False)


def test_cli_weights(planted, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "weights",
            "--history",
            str(planted["root"]),
            "--out",
            str(out),
            "--ks",
            "1",
            "2",
            "--n-random",
            "4",
            "--params",
            "c_fc",
            "--no-progress",
        ]
    )
    assert code == 0
    for name in (
        "weights.csv",
        "weights-model.csv",
        "weights-layers.csv",
        "summary.json",
        "report.html",
    ):
        assert (out / name).is_file(), name
    saved = revlens.load(out / "weights")
    assert saved.config["ks"] == [1, 2] and saved.config["n_random"] == 4
    assert set(saved.runs) == {"planted", "lora", "merged", "control"}
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    assert main(["weights", "--history", str(planted["root"]), "--out", str(out), "--ks", "x"]) == 2
    assert "--ks takes integers" in capsys.readouterr().err
    assert (
        main(["weights", "--history", str(planted["root"]), "--out", str(out), "--params", "zzz"])
        == 2
    )
