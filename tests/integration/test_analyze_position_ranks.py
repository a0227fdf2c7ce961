"""analyze(position=("post_instruction", k), ranks=...) fits rank-k subspaces at every position (they
were silently dropped before: the saved config listed the ranks, the report had no subspace)."""

import json
import warnings

import pytest

import families
import revlens
from revlens.collect import collect, without_degenerate
from revlens.directions import PairedPCA
from revlens.drift import subspace_drift_table
from revlens.errors import ConfigError

PROMPTS = [f"w{i} w{i + 3} w{i + 7}" for i in range(10, 22)] + [
    f"w{i} w{i + 1}" for i in range(60, 68)
]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-llama-ranks")
    dirs = families.write_history(root, "llama", n_runs=2, steps=(1, 2, 3))
    hist = revlens.History.from_dirs(base=dirs["base"], aligned=dirs["aligned"], runs=dirs["runs"])
    f = root / "probes.jsonl"
    f.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS)
    )
    return hist, f, hist.boot()


def test_ranks_at_post_instruction_positions(chat, tmp_path):
    hist, f, lm = chat
    kw = {"n_null": 20, "n_stability": 2, "n_bootstrap": 10, "seed": 0}
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # the constant embedding layer under RoPE is dropped
        report = revlens.analyze(
            hist,
            f,
            model=lm,
            position=("post_instruction", 3),
            ranks=(1, 2),
            methods=("pca",),
            progress=False,
            **kw,
        )
    assert report.positions == [-3, -2, -1]
    assert sorted(report.subspaces) == ["pca@-1", "pca@-2", "pca@-3"]
    assert all(s.rank == 2 and list(s.layers) == [1, 2] for s in report.subspaces.values())
    sd = report.subspace_drift
    assert (
        set(sd["position"]) == {-3, -2, -1}
        and set(sd["rank"]) == {1, 2}
        and set(sd["base_method"]) == {"pca"}
    )
    # position -2 equals fitting and projecting that position's statistics alone
    by_pos = collect(
        hist,
        f,
        position=("post_instruction", 3),
        model=lm,
        moments="reference",
        keep="reference",
        n_bootstrap=10,
        bootstrap_seed=0,
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        stats, _ = without_degenerate(by_pos["-2"], what="test")
    alone = PairedPCA(n_components=2, n_bootstrap=2, seed=0).fit(stats).direction_
    assert (alone.basis - report.subspaces["pca@-2"].basis).abs().max() < 1e-6
    expected = subspace_drift_table(stats, {"pca": alone}, ranks=(1, 2), n_null=20, seed=0)
    got = sd[sd["position"] == -2].drop(columns=["position", "base_method"]).reset_index(drop=True)
    got["method"] = "pca"
    cols = [c for c in expected.columns if expected[c].dtype.kind == "f"]
    assert (got[cols] - expected[cols]).abs().max().max() < 1e-9
    back = revlens.load(report.save(tmp_path / "saved"))
    assert sorted(back.subspaces) == sorted(report.subspaces) and len(back.subspace_drift) == len(
        sd
    )


def test_ranks_a_history_cannot_have_fail_before_work(chat):
    hist, f, lm = chat
    with pytest.raises(ConfigError, match="mean_diff"):
        revlens.analyze(
            hist,
            f,
            model=lm,
            position=("post_instruction", 3),
            ranks=(1, 2),
            subspace_methods=("mean_diff",),
            progress=False,
        )
