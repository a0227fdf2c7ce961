"""The ``revlens`` command line, in-process (``revlens.cli.main``) and as the console script."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import tiny
from revlens.cli import main
from revlens.errors import ConfigError
from revlens.report import Report

EVIL = "w1 <script>alert(1)</script>"


@pytest.fixture(scope="module")
def history_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-history")
    tiny.write_history(root, n_runs=2, steps=(1, 2, 3))  # base/, aligned/, run0/step-N, run1/...
    probes = root / "probes.jsonl"
    probes.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*tiny.PROMPTS, EVIL]))
    return root


@pytest.fixture(scope="module")
def analyzed(history_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-out") / "analysis"
    argv = ["analyze", "--history", str(history_dir), "--probes", str(history_dir / "probes.jsonl"),
            "--methods", "mean_diff", "pca", "--n-bootstrap", "10", "--n-null", "20", "--out", str(out),
            "--no-progress"]  # fmt: skip
    return out, argv


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("analyze", "ablate", "report", "weights", "lab"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["analyze", "ablate", "report", "weights"])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert f"usage: revlens {cmd}" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: revlens" in capsys.readouterr().out


def test_analyze_writes_outputs(analyzed, capsys):
    out, argv = analyzed
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    assert stdout.strip().splitlines()[-1] == str(out / "report.html")
    drift = pd.read_csv(out / "drift.csv")
    assert {"run", "step", "layer", "method", "cos", "significant"} <= set(drift.columns)
    assert set(drift["run"]) == {"run0", "run1"} and set(drift["method"]) == {"mean_diff", "pca"}
    summary = json.loads((out / "summary.json").read_text())  # strict JSON: no NaN
    assert summary["method"] == "mean_diff" and "paper" in summary
    assert math.isfinite(summary["runs"]["final_cos"]["mean"])
    html = (out / "report.html").read_text()
    assert html.count("Plotly.newPlot(") == 4 and "&lt;script&gt;alert(1)" in html
    assert EVIL not in html
    saved = Report.load(out / "report")
    pd.testing.assert_frame_equal(
        saved.drift[drift.columns].reset_index(drop=True), drift, check_dtype=False
    )

    # `revlens report` re-renders the saved report (from the output dir or the report/ dir)
    (out / "report.html").unlink()
    code, stdout, _ = _run(["report", str(out)], capsys)
    assert code == 0 and (out / "report.html").is_file()
    assert stdout.strip() == str(out / "report.html")
    code, _, _ = _run(
        ["report", str(out / "report"), "--out", str(out / "again.html"), "--title", "X"], capsys
    )
    assert code == 0 and "<title>X</title>" in (out / "again.html").read_text()


def test_ablate_writes_tables_and_html(history_dir, tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["ablate", "--history", str(history_dir), "--probes", str(history_dir / "probes.jsonl"),
            "--kinds", "clamp", "steer", "--alphas", "0", "2", "--steps", "3", "--controls", "2",
            "--layers", "1", "2", "--out", str(out), "--no-progress"]  # fmt: skip
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and stdout.strip() == str(out / "report.html")
    effects = pd.read_csv(out / "effects.csv")
    assert set(effects["kind"]) == {"clamp", "steer"} and set(effects["layer"]) == {1, 2}
    assert set(effects["control_type"]) == {"v_rev", "iso", "cov"}
    assert set(effects.loc[effects["kind"] == "clamp", "step"]) == {3}
    assert len(pd.read_csv(out / "summary.csv")) > 0
    html = (out / "report.html").read_text()
    assert html.count("Plotly.newPlot(") == 3  # clamp heatmap + control bands, steer
    assert not (out / "o").exists()
    (out / "report.html").unlink()
    code, _, _ = _run(["report", str(out)], capsys)
    assert code == 0 and (out / "report.html").read_text().count("Plotly.newPlot(") == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["analyze", "--history", "/no/such/dir", "--out", "{tmp}"], "no such file or directory"),
        (["analyze", "--history", "{hist}", "--out", "{tmp}"], "probe"),
        (
            [
                "analyze",
                "--history",
                "{hist}",
                "--probes",
                "{hist}/probes.jsonl",
                "--methods",
                "magic",
                "--out",
                "{tmp}",
            ],
            "unknown direction method 'magic'",
        ),
        (["analyze", "--history", "{hist}/run0", "--out", "{tmp}"], "no history.json"),
        (["analyze", "--history", "{hist}", "--layers", "x", "--out", "{tmp}"], "--layers"),
        (["report", "{hist}"], "no saved revlens report"),
        (["ablate", "--history", "{hist}", "--kinds", "steer", "--out", "{tmp}"], "--alphas"),
        (["ablate", "--history", "{hist}", "--metric", "logit_diff", "--out", "{tmp}"], "--pos"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, history_dir, tmp_path, capsys):
    argv = [a.format(hist=history_dir, tmp=tmp_path / "o") for a in argv]
    code, _, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"revlens {argv[0]}: error:") and message in lines[0]
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def test_debug_shows_the_traceback(history_dir, tmp_path):
    from revlens.errors import HistoryError

    with pytest.raises(HistoryError):
        main(["--debug", "analyze", "--history", str(history_dir / "run0"), "--out", str(tmp_path)])


def test_history_spec_file_and_control_runs(history_dir, tmp_path):
    from revlens.commands._common import load_history

    root = tmp_path / "h"
    shutil.copytree(history_dir, root)
    shutil.copytree(root / "run1", root / "control0")
    h = load_history(str(root))
    assert sorted(h.runs) == ["control0", "run0", "run1"] and h.runs["control0"].control
    spec = {
        "base": "base",
        "aligned": "aligned",
        "runs": {"a": {"1": "run0/step-1", "2": "run0/step-2"}},
    }
    (root / "history.json").write_text(json.dumps(spec))
    h = load_history(str(root))
    assert list(h.runs) == ["a"] and list(h.runs["a"].steps) == [1, 2]


def test_history_declared_metric_names(tmp_path):
    """``--metric harm`` on a lab history is the metric the history declares as data, and it equals
    the lab's own harm log-odds exactly (the library runs no lab code for it)."""
    import json
    import shutil

    import torch

    from revlens.commands.ablate import make_metric
    from revlens.history import History
    from revlens.lab import asset_dir, encode_prompts, harm_logodds_metric, probe_prompts
    from revlens.lab.runner import METRICS_SPEC

    pair = asset_dir() / "pair0"
    for name in ("base", "aligned"):
        shutil.copytree(pair / name, tmp_path / name)
    (tmp_path / "history.json").write_text(
        json.dumps(
            {
                "base": "base",
                "aligned": "aligned",
                "metadata": {"metrics_spec": METRICS_SPEC, "default_metric": "harm"},
            }
        )
    )
    hist = History.load(tmp_path)
    metric = make_metric("harm", hist)
    assert metric.name == "harm" and make_metric(None, hist).name == "harm"
    tok = hist.tokenizer()
    metric.bind(tok)
    batch = encode_prompts(tok, probe_prompts()[:3])
    logits = torch.randn(
        3, batch.tokens.shape[1], len(tok), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(metric(logits, batch), harm_logodds_metric(tok)(logits, batch))
    with pytest.raises(ConfigError, match="this history declares harm, harm_rate"):
        make_metric("toxicity", hist)


def test_console_script_help():
    exe = Path(sys.executable).parent / "revlens"
    assert exe.is_file(), "the revlens console script is not installed in this environment"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "analyze" in proc.stdout and "ablate" in proc.stdout and "report" in proc.stdout
