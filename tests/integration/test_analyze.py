"""``revlens.analyze`` end to end on a tiny real GPT-2 history with a planted reversion direction.

Block 1's MLP output bias (``transformer.h.1.mlp.c_proj.bias``) is added straight into the
residual stream after block 1, so shifting it by ``s·u`` shifts every prompt's activation at
layer 2 by exactly ``s·u`` (and approximately at layer 3). The history:

- aligned: a random tiny GPT-2 (3 blocks, d_model 32); base = aligned with the bias + 1.0·u;
- runs ``up0``, ``up1``: bias + s·0.05·u (+ small seeded noise) at steps 1 and 20: drift along u;
- run ``ortho``: the same along w ⊥ u; control ``ctl``: from base, along w.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tiny
from revlens.analyze import analyze
from revlens.collect import collect
from revlens.directions import MeanDiff
from revlens.errors import ConfigError, HistoryError, ProbeError
from revlens.history import History
from revlens.report import Report

BIAS = "transformer.h.1.mlp.c_proj.bias"
PROMPTS = [" ".join(f"w{(7 * i + 3 * j) % 30}" for j in range(1 + i % 5)) for i in range(16)]


def _vectors(d: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    w = torch.randn(d, generator=g)
    w -= (w @ u) * u
    return u, w / w.norm()


def _shifted(model, delta: torch.Tensor, path: Path) -> Path:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd[BIAS] += delta
    out = tiny.tiny_model(0, n_layer=3)
    out.load_state_dict(sd)
    return tiny.save(out, path, tokenizer=False)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    u, w = _vectors()
    aligned = tiny.tiny_model(0, n_layer=3)
    g = torch.Generator().manual_seed(5)
    dirs = {
        "aligned": tiny.save(aligned, root / "aligned"),
        "base": _shifted(aligned, 1.0 * u, root / "base"),
    }
    runs, controls = {}, {}
    for name, vec in (("up0", u), ("up1", u), ("ortho", w)):
        runs[name] = {
            s: _shifted(
                aligned, s * 0.05 * vec + 0.003 * torch.randn(32, generator=g), root / name / str(s)
            )
            for s in (1, 20)
        }
    base_model = tiny.tiny_model(0, n_layer=3)
    base_model.load_state_dict({**aligned.state_dict(), BIAS: aligned.state_dict()[BIAS] + u})
    controls["ctl"] = {
        s: _shifted(base_model, s * 0.05 * w, root / "ctl" / str(s)) for s in (1, 20)
    }
    hist = History.from_dirs(
        base=dirs["base"], aligned=dirs["aligned"], runs=runs, controls=controls
    )
    return u, w, hist


@pytest.fixture(scope="module")
def report(planted):
    _, _, hist = planted
    return analyze(hist, PROMPTS, layers=[2, 3], n_bootstrap=20, n_null=200, progress=False)


def test_mean_diff_recovers_the_planted_direction(planted, report):
    u, _, _ = planted
    v = report.directions["mean_diff"]
    assert v.layers == (2, 3)
    for layer in (2, 3):
        assert float(v[layer] @ u) > 0.99
    t = report.directions_table[report.directions_table.method == "mean_diff"]
    assert (t["stability"] > 0.99).all() and (t["perm_p"] < 0.01).all()
    assert float(report.directions["pca"][2] @ u) > 0.99  # a constant shift is the paired-PCA axis


def test_drift_along_the_planted_direction_is_significant(report):
    df = report.drift[report.drift.method == "mean_diff"]
    up = df[df.run.isin(["up0", "up1"])]
    assert (up.loc[up.step == 20, "cos"] > 0.99).all()
    assert up["significant"].all() and (up["p_iso"] < 1e-6).all()
    ortho = df[df.run == "ortho"]
    assert not ortho["significant"].any() and (ortho["cos"].abs() < 0.3).all()
    ctl = df[df.run == "ctl"]
    assert ctl["control"].all() and not ctl["significant"].any()


def test_summary_and_round_trip(report, tmp_path):
    s = report.headline()
    assert s["best_layer"] in (2, 3) and s["step"] == 20
    assert s["runs"]["cos_step20"]["per_layer"][2]["mean"] > 0.6  # two planted runs and ortho
    assert s["runs"]["above_iso_p99"] == {"count": 4, "total": 6}  # up0, up1 x 2 steps; ortho none
    assert s["control"]["above_iso_p99"] == {"count": 0, "total": 2}
    prov = report.provenance
    assert len(prov["checkpoints"]) == 10 and all(
        len(c["fingerprint"]) == 32 for c in prov["checkpoints"].values()
    )
    assert prov["n_prompts"] == 16 and prov["prompts"] == PROMPTS
    report.save(tmp_path / "rep")
    back = Report.load(tmp_path / "rep")
    import pandas.testing as pdt

    pdt.assert_frame_equal(back.drift, report.drift, check_exact=True)
    pdt.assert_frame_equal(back.directions_table, report.directions_table, check_exact=True)


def test_identical_layers_and_bad_input(planted):
    _, _, hist = planted
    stats = collect(hist, PROMPTS, layers=[1, 2], n_bootstrap=0, progress=False)
    with pytest.raises(
        ConfigError, match=r"layer\(s\) \[1\]"
    ):  # base == aligned before block 1's bias
        MeanDiff().fit(stats)
    with pytest.raises(ConfigError, match=r"layer\(s\) \[1\]"):
        analyze(stats, methods=("pca",), progress=False)
    with pytest.raises(ProbeError, match="no probes given"):
        analyze(hist, None, progress=False)
    with pytest.raises(ConfigError, match="valid methods"):
        analyze(hist, PROMPTS, methods=("mean_diff", "lda"), progress=False)
    one = History(base=hist.base, aligned=hist.aligned, runs={"up0": hist.runs["up0"]})
    one.runs["up0"] = type(one.runs["up0"])("up0", {1: hist.runs["up0"].steps[1]})
    with pytest.raises(HistoryError, match="run 'up0' has 1 step"):
        analyze(one, PROMPTS, progress=False)


def test_subspace_drift_in_analyze(planted, tmp_path):
    """analyze(ranks=...): rank-k fits, the drift's energy beside its nulls, saved and drawn."""
    import pandas.testing as pdt
    import plotly.graph_objects as go

    _, _, hist = planted
    stats = collect(
        hist,
        PROMPTS,
        layers=[3],
        moments="reference",
        keep="reference",
        n_bootstrap=20,
        progress=False,
    )
    rep = analyze(
        stats, methods=("pca",), ranks=(1, 2, 4), n_null=100, n_stability=3, progress=False
    )
    sub = rep.subspace_drift
    assert rep.subspaces["pca"].rank == 4 and set(sub["rank"]) == {1, 2, 4}
    up = sub[(sub.run.isin(["up0", "up1"])) & (sub.step == 20)]
    assert (up["energy"] > 0.9).all() and up["significant"].all()
    k1 = sub[sub["rank"] == 1].reset_index(drop=True)
    frac = rep.drift[rep.drift.method == "pca"].reset_index(drop=True)["frac"]
    assert (k1["energy"] - frac).abs().max() < 1e-5  # rank-1 of the rank-4 fit = the direction
    assert isinstance(rep.subspace_energy(), go.Figure)
    back = Report.load(rep.save(tmp_path / "rep"))
    pdt.assert_frame_equal(back.subspace_drift, sub, check_exact=True)
    assert torch.equal(back.subspaces["pca"].basis, rep.subspaces["pca"].basis)
    # bad input, named: a constant shift spans one direction; mean_diff needs a base per rank
    exact = collect(
        hist,
        PROMPTS,
        layers=[2],
        moments="reference",
        keep="reference",
        n_bootstrap=0,
        progress=False,
    )
    with pytest.raises(ConfigError, match=r"spans only 1 direction\(s\) at layer 2"):
        analyze(exact, methods=("pca",), ranks=(1, 2), n_null=10, progress=False)
    with pytest.raises(ConfigError, match="need as many base checkpoints"):
        analyze(hist, PROMPTS, ranks=(2,), subspace_methods=("mean_diff",), progress=False)
    with pytest.raises(ConfigError, match="ranks must be >= 1"):
        analyze(hist, PROMPTS, ranks=(0,), progress=False)
