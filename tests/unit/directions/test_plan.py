"""The fit plan: which path each estimator takes, how many refits, announced before fitting."""

import logging

import numpy as np
import torch

import revlens
from revlens.directions import LinearProbe
from revlens.directions.plan import fit_directions, plan_fits


def test_plan_at_the_issue_shape_cuts_only_the_probe_refits():
    plan = plan_fits(
        ["mean_diff", "pca", "probe", "whitened"],
        n_layers=30,
        n_prompts=16,
        d_model=576,
        n_stability=20,
    )
    by = {m.method: m for m in plan.methods}
    assert by["whitened"].path == "span m=32" and by["whitened"].refits == 600
    assert by["pca"].path == "span m=16" and by["mean_diff"].n_stability == 20
    assert 2 <= by["probe"].n_stability < 20 and "budget" in by["probe"].note
    line = plan.describe()
    assert line.startswith("fit: 30 layers × 16 prompts × d=576") and "total ≈" in line
    # the cut is decided on the nominal machine: the same sizes always give the same refits
    again = plan_fits(["probe"], n_layers=30, n_prompts=16, d_model=576, n_stability=20)
    assert again.n_stability("probe", 20) == by["probe"].n_stability


def test_plan_takes_the_dense_path_when_the_span_is_not_smaller_and_prices_it_higher():
    small = plan_fits(["whitened"], n_layers=4, n_prompts=16, d_model=1024, n_stability=0)
    large = plan_fits(["whitened"], n_layers=4, n_prompts=1024, d_model=1024, n_stability=0)
    assert small.methods[0].path.startswith("span") and large.methods[0].path == "dense d×d"
    assert large.seconds > 100 * small.seconds
    huge = plan_fits(["whitened"], n_layers=32, n_prompts=4096, d_model=4096, n_stability=20)
    assert huge.n_stability("whitened", 20) == 0 and huge.methods[0].refits == 0
    assert (
        plan_fits(
            [LinearProbe(), "custom"], n_layers=2, n_prompts=4, d_model=8, n_stability=5
        ).methods
        == ()
    )


def _history(make_stats):
    g = torch.Generator().manual_seed(1)
    n, d = 10, 32
    aligned = torch.randn(n, 2, d, generator=g, dtype=torch.float64)
    base = (
        aligned
        + torch.randn(2, d, generator=g, dtype=torch.float64)
        + 0.3 * torch.randn(n, 2, d, generator=g, dtype=torch.float64)
    )
    steps = [
        aligned
        + t * (base - aligned) / 4
        + 0.1 * torch.randn(n, 2, d, generator=g, dtype=torch.float64)
        for t in (1, 2)
    ]
    return make_stats(
        {"base": base, "aligned": aligned, "r1": steps[0], "r2": steps[1]},
        runs={"seed0": {1: "r1", 2: "r2"}},
    )


def test_fit_directions_announces_the_plan_then_the_time(make_stats, caplog):
    stats = _history(make_stats)
    given = LinearProbe(n_bootstrap=2)
    with caplog.at_level(logging.INFO, logger="revlens.directions.plan"):
        vectors, stability = fit_directions(
            ["whitened", "pca", given],
            stats,
            n_stability=4,
            seed=0,
            progress=False,
            collect_seconds=1.5,
        )
    assert list(vectors) == ["whitened", "pca", "probe"]
    assert given.get_params()["n_bootstrap"] == 2 and np.isfinite(stability["probe"]).all()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fit:")]
    assert lines[0].startswith(
        "fit: 2 layers × 10 prompts × d=32: whitened (span m=20): 2 fits + 8 refits"
    )
    assert "3 methods fitted in" in lines[-1] and "(collect took 1.5 s)" in lines[-1]


def test_analyze_prints_the_fit_plan(make_stats, caplog):
    stats = _history(make_stats)
    with caplog.at_level(logging.INFO, logger="revlens.directions.plan"):
        report = revlens.analyze(
            stats,
            methods=["mean_diff", "whitened"],
            n_null=10,
            n_stability=3,
            n_bootstrap=4,
            progress=False,
        )
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "whitened (span m=20): 2 fits + 6 refits" in text and "2 methods fitted in" in text
    assert set(report.directions) == {"mean_diff", "whitened"}
