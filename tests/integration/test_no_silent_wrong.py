"""The silent-wrong cases a hostile review found in revlens 0.1 (issue 17), as regression tests.

W1/W2: a booted model reused across histories whose checkpoints share names; W3: a cache key that
ignored config.json; W4: a report overwritten by a save that was killed half-way; W5: integer
weights cast silently. Each test first makes the two situations differ, so it could fail.
"""

import json
import shutil

import pytest
import torch

import tiny
from revlens import History, collect
from revlens.causal import ablation_study, logit_diff
from revlens.errors import ShapeMismatchError


@pytest.fixture(scope="module")
def two_histories(tmp_path_factory):
    """H1 and H2: same architecture, same checkpoint names, different weights."""
    root = tmp_path_factory.mktemp("two")
    h1 = tiny.write_history(root / "h1", n_runs=1, steps=(1, 2))
    base2 = tiny.perturbed(tiny.tiny_model(0), 0.3, 77)
    aligned2 = tiny.perturbed(base2, 0.05, 78)
    d2 = root / "h2"
    tiny.save(base2, d2 / "base")
    tiny.save(aligned2, d2 / "aligned")
    runs2 = {
        s: tiny.save(
            tiny.perturbed(aligned2, 0.02 * s, 80 + s), d2 / "run0" / f"step-{s}", tokenizer=False
        )
        for s in (1, 2)
    }
    make = History.from_dirs
    return (
        make(base=h1["base"], aligned=h1["aligned"], runs={"seed0": h1["runs"]["seed0"]}),
        make(base=d2 / "base", aligned=d2 / "aligned", runs={"seed0": runs2}),
    )


def test_w1_a_model_booted_by_one_history_is_reloaded_for_another(two_histories):
    h1, h2 = two_histories
    metric = logit_diff(["w1", "w2"], ["w3"])
    kw = {
        "layers": [1],
        "steps": [2],
        "kinds": ("clamp", "patch"),
        "controls": 2,
        "progress": False,
    }
    fresh = ablation_study(h2, tiny.PROMPTS, metric, **kw)
    lm = h1.boot()  # holds H1's "aligned": the same name as H2's
    reused = ablation_study(h2, tiny.PROMPTS, metric, model=lm, **kw)
    m_h1_aligned = (
        ablation_study(h1, tiny.PROMPTS, metric, model=lm, **kw).effects["metric_aligned"].iloc[0]
    )
    assert (
        abs(fresh.effects["metric_aligned"].iloc[0] - m_h1_aligned) > 1e-3
    )  # the histories differ
    torch.testing.assert_close(
        torch.tensor(reused.effects["metric"].to_numpy()),
        torch.tensor(fresh.effects["metric"].to_numpy()),
        atol=1e-6,
        rtol=0,
    )


def test_w2_collect_with_a_reused_model_and_a_cache_stores_the_right_statistics(
    two_histories, tmp_path
):
    h1, h2 = two_histories
    lm = h1.boot()
    collect(h1, tiny.PROMPTS, model=lm, cache_dir=tmp_path, n_bootstrap=0, progress=False)
    via_reused = collect(
        h2, tiny.PROMPTS, model=lm, cache_dir=tmp_path, n_bootstrap=0, progress=False
    )
    clean = collect(h2, tiny.PROMPTS, n_bootstrap=0, progress=False)
    for name in ("base", "aligned", "seed0/step-1"):
        torch.testing.assert_close(via_reused.mean(name), clean.mean(name), atol=1e-6, rtol=0)
    # and a later clean process reading the cache gets H2's numbers, not H1's
    again = collect(h2, tiny.PROMPTS, cache_dir=tmp_path, n_bootstrap=0, progress=False)
    torch.testing.assert_close(again.mean("aligned"), clean.mean("aligned"), atol=1e-6, rtol=0)


def test_w3_the_cache_key_holds_the_architecture_config(tmp_path):
    dirs = tiny.write_history(tmp_path / "h", n_runs=1, steps=(1, 2))
    hist = History.from_dirs(
        base=dirs["base"], aligned=dirs["aligned"], runs={"r": dirs["runs"]["seed0"]}
    )
    first = collect(hist, tiny.PROMPTS, cache_dir=tmp_path / "cache", n_bootstrap=0, progress=False)
    # same weights, another activation function: every statistic changes
    for d in (dirs["base"], dirs["aligned"], *dirs["runs"]["seed0"].values()):
        cfg = json.loads((d / "config.json").read_text())
        cfg["activation_function"] = "relu"
        (d / "config.json").write_text(json.dumps(cfg))
    hist2 = History.from_dirs(
        base=dirs["base"], aligned=dirs["aligned"], runs={"r": dirs["runs"]["seed0"]}
    )
    second = collect(
        hist2, tiny.PROMPTS, cache_dir=tmp_path / "cache", n_bootstrap=0, progress=False
    )
    no_cache = collect(hist2, tiny.PROMPTS, n_bootstrap=0, progress=False)
    assert not torch.allclose(first.mean("aligned"), no_cache.mean("aligned"), atol=1e-4)
    torch.testing.assert_close(second.mean("aligned"), no_cache.mean("aligned"), atol=1e-7, rtol=0)


def test_w4_a_killed_save_leaves_the_old_report_whole(tiny_history, tmp_path, monkeypatch):
    import revlens
    from revlens.report import Report

    report = revlens.analyze(
        tiny_history,
        tiny.PROMPTS,
        methods=["mean_diff"],
        n_null=20,
        n_bootstrap=5,
        n_stability=0,
        progress=False,
    )
    report.save(tmp_path / "r")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    other = Report(
        drift=report.drift.assign(cos=0.0),
        directions=report.directions,
        directions_table=report.directions_table,
        config={"new": True},
        provenance={},
    )

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while writing the vectors

    monkeypatch.setattr(type(next(iter(report.directions.values()))), "save", killed)
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "r")
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert after == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    back = Report.load(tmp_path / "r")
    assert back.config == json.loads(json.dumps(report.config)) and back.drift.equals(report.drift)


def test_w5_integer_weights_are_refused_not_cast(tiny_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "int"
    shutil.copytree(tiny_dirs["aligned"], bad)
    sd = load_file(str(bad / "model.safetensors"))
    key = next(k for k in sd if k.endswith("c_fc.weight"))
    sd[key] = sd[key].round().to(torch.int32)
    save_file(sd, str(bad / "model.safetensors"))
    hist = History.from_dirs(
        base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {1: bad, 2: bad}}
    )
    with pytest.raises(ShapeMismatchError, match=r"int32"):
        collect(hist, tiny.PROMPTS, n_bootstrap=0, progress=False)
