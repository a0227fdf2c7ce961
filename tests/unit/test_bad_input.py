"""Bad input, as a hostile user gives it: one typed RevlensError per case, naming the culprit,
before any expensive work; nothing half-written; no hook left behind (issue 17).

"Before any work" is checked with a *booby-trapped* history: its aligned checkpoint is deleted
after the history was built, so anything that reaches collection fails with a CheckpointError —
a settings error must arrive first.
"""

import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny
from revlens import History, Probes, analyze, collect
from revlens.causal import ablation_study, logit_diff
from revlens.directions import Directions
from revlens.errors import (
    CacheError,
    CheckpointError,
    ConfigError,
    HistoryError,
    MetricError,
    OutputError,
    ProbeError,
    RevlensError,
    SiteError,
)


@pytest.fixture(scope="module")
def trapped(tmp_path_factory):
    """A valid history whose aligned weights vanish once it is built."""
    root = tmp_path_factory.mktemp("trap")
    dirs = tiny.write_history(root, n_runs=1, steps=(1, 2))
    hist = History.from_dirs(
        base=dirs["base"], aligned=dirs["aligned"], runs={"r": dirs["runs"]["seed0"]}
    )
    shutil.rmtree(dirs["aligned"])
    return hist


ANALYZE = [
    ({"n_null": 2.5}, ConfigError, "n_null must be an integer, got 2.5"),
    ({"n_null": "10"}, ConfigError, "n_null must be an integer, got '10'"),
    ({"n_null": -1}, ConfigError, "n_null must be >= 0"),
    ({"n_bootstrap": -3}, ConfigError, "n_bootstrap must be >= 0"),
    ({"n_stability": True}, ConfigError, "n_stability must be an integer"),
    ({"batch_size": "8"}, ConfigError, "batch_size must be an integer, got '8'"),
    ({"batch_size": 2.5}, ConfigError, "batch_size must be an integer"),
    ({"batch_size": 0}, ConfigError, "batch_size must be >= 1"),
    ({"seed": "x"}, ConfigError, "seed must be an integer"),
    ({"layers": 1.5}, SiteError, "1.5"),
    ({"layers": "some"}, SiteError, "'some'"),
    ({"layers": []}, SiteError, "layers is empty"),
    ({"layers": [1, "2"]}, SiteError, "'2'"),
    ({"methods": "lda"}, ConfigError, "unknown direction method 'lda'; valid methods: mean_diff"),
    ({"methods": []}, ConfigError, "methods is empty"),
    ({"methods": [3]}, ConfigError, "cannot use int"),
    ({"site": "resid_everywhere"}, ConfigError, "site='resid_everywhere'"),
    ({"position": "first"}, ConfigError, "position='first'"),
    ({"colour": "red"}, ConfigError, r"unknown setting\(s\) \['colour'\]"),
    ({"config": {"n_null": 5}}, ConfigError, "config must be a AnalyzeConfig, got dict"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), ANALYZE, ids=[str(c[0]) for c in ANALYZE])
def test_analyze_settings_fail_before_any_work(trapped, kwargs, error, match):
    with pytest.raises(error, match=match):
        analyze(trapped, tiny.PROMPTS, progress=False, **kwargs)


ABLATE = [
    ({"controls": 0}, ConfigError, "controls must be >= 1"),
    ({"controls": 2.5}, ConfigError, "controls must be an integer"),
    ({"kinds": ("ablate",)}, ConfigError, "kinds='ablate'"),
    ({"kinds": "steer"}, ConfigError, "needs alphas"),
    ({"kinds": ("steer",), "alphas": [1.0, math.inf]}, ConfigError, "alphas must be finite"),
    ({"control_kinds": ("gauss",)}, ConfigError, "control_kinds='gauss'"),
    ({"strategy": "fast"}, ConfigError, "strategy='fast'"),
    ({"max_rows": 0}, ConfigError, "max_rows must be >= 1"),
    ({"gap_tol": -1}, ConfigError, "gap_tol must be >= 0"),
    ({"positions": "first"}, ConfigError, "positions='first'"),
    ({"steps": [0]}, ConfigError, "step 0 must be >= 1"),
    ({"steps": "some"}, SiteError, "'some'"),
    ({"batch_size": "4"}, ConfigError, "batch_size must be an integer"),
    ({"seed": 1.5}, ConfigError, "seed must be an integer"),
    ({"site": "resid_everywhere"}, ConfigError, "site='resid_everywhere'"),
    ({"directions": 5}, ConfigError, "directions"),
    ({"warp": 9}, ConfigError, r"unknown setting\(s\) \['warp'\]"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), ABLATE, ids=[str(c[0]) for c in ABLATE])
def test_ablation_settings_fail_before_any_work(trapped, kwargs, error, match):
    with pytest.raises(error, match=match):
        ablation_study(trapped, tiny.PROMPTS, logit_diff(["w1"], ["w2"]), progress=False, **kwargs)


COLLECT = [
    ({"moments": "some"}, ConfigError, "moments='some'"),
    ({"keep": "x"}, ConfigError, "keep='x'"),
    ({"n_bootstrap": 1.5}, ConfigError, "n_bootstrap must be an integer"),
    ({"site": "nowhere"}, ConfigError, "site='nowhere'"),
    ({"batch_size": -1}, ConfigError, "batch_size must be >= 1"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), COLLECT, ids=[str(c[0]) for c in COLLECT])
def test_collect_settings_fail_before_any_work(trapped, kwargs, error, match):
    with pytest.raises(error, match=match):
        collect(trapped, tiny.PROMPTS, progress=False, **kwargs)


def test_a_cache_dir_that_is_a_file(trapped, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CacheError, match="cache_dir .*/f exists and is not a directory"):
        collect(trapped, tiny.PROMPTS, cache_dir=tmp_path / "f", progress=False)


def test_metric_errors_name_the_metric(tiny_history, tiny_lm):
    def broken(logits, batch):
        raise KeyError("harm_tokens")

    def flat(logits, batch):
        return logits[:, 0, 0:2]

    kw = {
        "layers": [1],
        "steps": [1],
        "runs": ["seed0"],
        "kinds": ("clamp",),
        "controls": 1,
        "progress": False,
        "model": tiny_lm,
    }
    with pytest.raises(MetricError, match="metric 'broken' raised KeyError: 'harm_tokens'"):
        ablation_study(tiny_history, tiny.PROMPTS, broken, **kw)
    with pytest.raises(MetricError, match=r"metric 'flat' returned shape \(\d+, 2\)"):
        ablation_study(tiny_history, tiny.PROMPTS, flat, **kw)
    with pytest.raises(MetricError, match="metric must be a callable"):
        ablation_study(tiny_history, tiny.PROMPTS, "harm", **kw)


# ------------------------------------------------------------------ probes
def test_probe_inputs(tmp_path):
    with pytest.raises(ProbeError, match="empty"):
        Probes([])
    with pytest.raises(ProbeError, match=r"prompt 1 .*not valid text"):
        Probes(["w1", "w2 \ud800"])
    with pytest.raises(ProbeError, match="got 1 labels for 2 prompts"):
        Probes(["w1", "w2"], labels=["x"])
    with pytest.raises(SiteError, match="position mask must be a bool tensor"):
        Probes(["w1"], position=torch.ones(2, 3))
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ProbeError, match=r"latin1.jsonl is not UTF-8"):
        Probes.from_jsonl(tmp_path / "latin1.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "w1"}\n{oops\n')
    with pytest.raises(ProbeError, match=r"bad.jsonl:2: not valid JSON"):
        Probes.from_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "notext.jsonl").write_text('{"prompt_text": "w1"}\n')
    with pytest.raises(ProbeError, match=r"notext.jsonl:1"):
        Probes.from_jsonl(tmp_path / "notext.jsonl")
    with pytest.raises(ProbeError, match="does not exist"):
        Probes.from_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("probes", [42, object(), {"text": "w1"}])
def test_probe_sets_of_the_wrong_type(tiny_history, probes):
    with pytest.raises(ProbeError, match="cannot make a probe set from"):
        collect(tiny_history, probes, progress=False)


# ------------------------------------------------------------------ histories
def _copy(tiny_dirs, root: Path) -> Path:
    for name in ("base", "aligned"):
        shutil.copytree(tiny_dirs[name], root / name)
    shutil.copytree(tiny_dirs["runs"]["seed0"][1], root / "s1")
    return root


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (42, HistoryError, "cannot read a history from int"),
        ({"base": "x"}, HistoryError, "needs keys base and aligned"),
        ({"base": "x", "aligned": "y", "colour": 1}, HistoryError, "needs keys base and aligned"),
        ("/no/such/dir", HistoryError, "no such file or directory"),
    ],
)
def test_history_load_refuses(spec, error, match):
    with pytest.raises(error, match=match):
        History.load(spec)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("{not json", HistoryError, "not valid JSON"),
        ('{"aligned": "aligned"}', HistoryError, r"missing key\(s\) \['base'\]"),
        ('{"base": "../../etc", "aligned": "aligned"}', ConfigError, "leaves its directory"),
        ('{"base": "/etc", "aligned": "aligned"}', ConfigError, "must be relative"),
        (
            '{"base": "base", "aligned": "aligned", "runs": {"r": {"x": "s1"}}}',
            HistoryError,
            "step 'x' is not an integer",
        ),
        (
            '{"base": "base", "aligned": "aligned", "runs": {"r": {"0": "s1"}}}',
            HistoryError,
            "step 0 must be >= 1",
        ),
        (
            '{"base": "base", "aligned": "aligned", "runs": {"r": {"1": "s1"}}, "controls": {"r": {"1": "s1"}}}',
            HistoryError,
            "run name 'r' is used twice",
        ),
        (
            '{"base": "base", "aligned": "aligned", "metrics": "m.json"}',
            HistoryError,
            "m.json does not exist",
        ),
        ("[1, 2]", HistoryError, "expected a JSON object"),
    ],
)
def test_history_json_refuses(tiny_dirs, tmp_path, text, error, match):
    root = _copy(tiny_dirs, tmp_path / "h")
    (root / "history.json").write_text(text)
    with pytest.raises(error, match=match):
        History.load(root)


def test_a_device_file_is_not_a_checkpoint(tiny_dirs):
    with pytest.raises(CheckpointError, match="/dev/zero is not a weights file"):
        History.from_dirs(
            base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {1: "/dev/zero"}}
        )


@pytest.mark.parametrize("damage", ["truncated", "empty", "header"])
def test_damaged_safetensors_name_checkpoint_and_file(tiny_dirs, tmp_path, damage):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dirs["runs"]["seed0"][1], bad)
    f = bad / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(
        {"truncated": raw[: len(raw) // 2], "empty": b"", "header": b"\xff" * 8 + raw[8:]}[damage]
    )
    with pytest.raises(CheckpointError, match=r"checkpoint r/step-1: .*model.safetensors"):
        History.from_dirs(
            base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {1: bad}}
        )


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/revlens-pwned",))


def test_a_malicious_pickle_is_refused_and_never_runs(tiny_dirs, tmp_path):
    Path("/tmp/revlens-pwned").unlink(missing_ok=True)
    (tmp_path / "evil.bin").write_bytes(pickle.dumps({"x": _Payload()}))
    hist = History.from_dirs(
        base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {1: tmp_path / "evil.bin"}}
    )
    with pytest.raises(CheckpointError, match="evil.bin"):
        collect(hist, tiny.PROMPTS, n_bootstrap=0, progress=False)
    assert not Path("/tmp/revlens-pwned").exists()


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("{not json", "cannot read the model config"),
        ('{"model_type": "gpt-unknown-family"}', "not usable by transformers"),
    ],
)
def test_a_bad_architecture_config_is_named(tiny_dirs, tmp_path, config, match):
    root = _copy(tiny_dirs, tmp_path / "h")
    (root / "aligned" / "config.json").write_text(config)
    hist = History.from_dirs(
        base=root / "base", aligned=root / "aligned", runs={"r": {1: root / "s1", 2: root / "s1"}}
    )
    with pytest.raises(CheckpointError, match=match):
        collect(hist, tiny.PROMPTS, progress=False)


# ------------------------------------------------------------------ results on disk
@pytest.fixture(scope="module")
def report(tiny_history):
    return analyze(
        tiny_history,
        tiny.PROMPTS,
        methods=["mean_diff"],
        n_null=10,
        n_bootstrap=4,
        n_stability=0,
        progress=False,
    )


def test_saving_onto_a_file_or_html_onto_a_dir(report, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        report.save(tmp_path / "file")
    with pytest.raises(OutputError, match="is not a directory|exists and is not a directory"):
        report.save(tmp_path / "file" / "sub")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="it is a directory"):
        report.to_html(tmp_path / "dir")
    assert (tmp_path / "file").read_text() == "x"


def test_loading_broken_results(report, tmp_path):
    import revlens
    from revlens.report import Report

    with pytest.raises(ConfigError, match="holds no saved revlens result"):
        revlens.load(tmp_path)
    report.save(tmp_path / "r")
    meta_path = tmp_path / "r" / "report.json"
    text = meta_path.read_text()
    meta_path.write_text(text[: len(text) // 2])  # truncated (size differs from the manifest)
    with pytest.raises(ConfigError, match="report.json has changed"):
        Report.load(tmp_path / "r")
    report.save(tmp_path / "r2")
    (tmp_path / "r2" / "revlens-manifest.json").unlink()  # an interrupted write
    with pytest.raises(ConfigError, match="is incomplete"):
        Report.load(tmp_path / "r2")
    report.save(tmp_path / "r3")
    meta = json.loads((tmp_path / "r3" / "report.json").read_text())
    meta["vectors"] = {"mean_diff": "../../../etc/passwd"}
    body = json.dumps(meta, indent=1)
    (tmp_path / "r3" / "report.json").write_text(body)
    man = json.loads((tmp_path / "r3" / "revlens-manifest.json").read_text())
    man["files"]["report.json"] = len(body.encode())
    (tmp_path / "r3" / "revlens-manifest.json").write_text(json.dumps(man))
    with pytest.raises(ConfigError, match="leaves its directory"):
        Report.load(tmp_path / "r3")


def test_a_dead_writers_temp_file_is_cleaned(tmp_path):
    from revlens.collect.cache import StatsCache

    StatsCache(tmp_path)
    stale = tmp_path / ".stats-abc.safetensors.999999.x1.tmp"  # pid 999999 is not running
    stale.write_bytes(b"half")
    StatsCache(tmp_path)
    assert not stale.exists()


def test_directions_inputs(tmp_path):
    with pytest.raises(ConfigError, match=r"zero norm at layer\(s\) \[2\]"):
        Directions.from_tensor(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), [1, 2])
    with pytest.raises(ConfigError, match="linearly dependent"):
        Directions.from_tensor(torch.ones(1, 2, 3), [1])
    (tmp_path / "d.safetensors").write_bytes(b"nope")
    with pytest.raises(ConfigError, match="cannot read directions file"):
        Directions.load(tmp_path / "d.safetensors")


def test_numpy_integers_are_valid(tiny_history):
    stats = collect(
        tiny_history, tiny.PROMPTS, layers=[np.int64(1)], n_bootstrap=np.int32(2), progress=False
    )
    assert stats.layers == [1]


def test_every_error_is_a_revlens_error():
    import revlens.errors as e

    for name in e.__all__:
        obj = getattr(e, name)
        if isinstance(obj, type):
            assert issubclass(obj, RevlensError), name


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def cli_history(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-bad")
    tiny.write_history(root, n_runs=1, steps=(1, 2))
    (root / "probes.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in tiny.PROMPTS)
    )
    (root / "a-file").write_text("x")
    return root


CLI = [
    (
        ["analyze", "--history", "{h}", "--probes", "{h}/probes.jsonl", "--out", "{h}/a-file"],
        "exists and is not a directory",
    ),
    (
        ["analyze", "--history", "{h}", "--probes", "{h}/probes.jsonl", "--out", "{h}/a-file/sub"],
        "is not a directory",
    ),
    (
        ["analyze", "--history", "{h}", "--out", "{o}", "--n-null", "many"],
        "--n-null takes an integer, got 'many'",
    ),
    (
        ["analyze", "--history", "{h}", "--out", "{o}", "--layers", "1", "x"],
        "--layers takes integers or 'all'",
    ),
    (["analyze", "--history", "{h}/nope", "--out", "{o}"], "no such file or directory"),
    (
        [
            "ablate",
            "--history",
            "{h}",
            "--probes",
            "{h}/probes.jsonl",
            "--out",
            "{o}",
            "--metric",
            "toxicity",
        ],
        "unknown metric 'toxicity'",
    ),
    (["ablate", "--history", "{h}", "--out", "{o}", "--alphas", "a"], "--alphas takes numbers"),
    (
        ["ablate", "--history", "{h}", "--out", "{o}", "--steps", "first"],
        "--steps takes integers, 'last' or 'all'",
    ),
    (["report", "{h}"], "holds no saved revlens report"),
    (["lab", "--out", "{h}/a-file/sub", "--steps", "1"], "is not a directory"),
    (["replicate", "--out", "{h}/a-file"], "exists and is not a directory"),
    (["replicate", "--out", "{o}", "--track", "nope"], "--track: unknown track(s) ['nope']"),
    (["replicate", "--out", "{o}", "--track", "lora", "lora"], "--track names a track twice"),
    (["replicate", "--out", "{o}", "--pairs", "7"], "--pairs: no shipped pair [7]"),
    (
        ["replicate", "--out", "{o}", "--seeds", "0", "0"],
        "--seeds must be distinct non-negative integers",
    ),
    (["replicate", "--out", "{o}", "--workers", "0"], "--workers must be an integer >= 1"),
    (["lab", "--out", "{o}", "--workers", "2"], "--workers applies to --track real only"),
    (
        ["replicate", "--out", "{o}", "--track", "real", "--workers", "0"],
        "workers must be an integer >= 1",
    ),
    (
        ["lab", "--out", "{o}", "--track", "real", "--workers", "0"],
        "workers must be an integer >= 1",
    ),
    (
        ["replicate", "--out", "{o}", "--track", "real", "--lab", "{h}/nolab"],
        "not a built real-track lab",
    ),
    (
        ["replicate", "--out", "{o}", "--track", "real", "--lab", "{h}"],
        "not a built real-track lab",
    ),
]


@pytest.mark.parametrize(("argv", "message"), CLI, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CLI])
def test_cli_exits_2_with_one_line(cli_history, tmp_path, capsys, argv, message):
    from revlens.cli import main

    args = [a.format(h=cli_history, o=tmp_path / "out") for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"revlens {args[0]}: error:"), err
    assert message in err[0], err[0]
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_cli_interrupt_and_internal_errors(cli_history, tmp_path, capsys, monkeypatch):
    import revlens.commands.analyze as command
    from revlens.cli import main

    argv = ["analyze", "--history", str(cli_history), "--out", str(tmp_path / "o")]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(
        command, "run", interrupted
    )  # main builds its parser on each call: it binds this run
    assert main(argv) == 130 and "interrupted" in capsys.readouterr().err

    def buggy(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(command, "run", buggy)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: ZeroDivisionError" in err[0] and "--debug" in err[0]
