"""Drift projections on synthetic statistics with a planted drift."""

import numpy as np
import pytest
import torch

from revlens.directions import Directions, MeanDiff
from revlens.drift import DRIFT_COLUMNS, drift_table, isotropic_p99, project
from revlens.errors import ConfigError


@pytest.fixture
def history(make_stats):
    """d=24, 2 layers, 30 prompts: runs 'along' (drift along u), 'ortho' (drift along w ⊥ u)
    and a control run from base drifting along u."""
    g = torch.Generator().manual_seed(0)
    n, d = 30, 24
    eye = torch.eye(d, dtype=torch.float64)
    u, w = eye[0], eye[1]
    aligned = torch.randn(n, 2, d, generator=g, dtype=torch.float64)

    def noisy(x):
        return x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)

    acts = {"base": noisy(aligned + 2 * u), "aligned": aligned}
    for s in (1, 2):
        acts[f"along/{s}"] = noisy(aligned + 0.5 * s * u)
        acts[f"ortho/{s}"] = noisy(aligned + 0.5 * s * w)
        acts[f"ctl/{s}"] = noisy(acts["base"] + 0.5 * s * u)
    stats = make_stats(
        acts,
        runs={"along": {1: "along/1", 2: "along/2"}, "ortho": {1: "ortho/1", 2: "ortho/2"}},
        controls={"ctl": {1: "ctl/1", 2: "ctl/2"}},
    )
    return u, stats


def test_project_math():
    d = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    p = project(d, torch.tensor([2.0, 0.0]))
    assert p["cos"][0] == pytest.approx(0.6) and p["proj"][0] == pytest.approx(3.0)
    assert p["frac"][0] == pytest.approx(0.36) and p["norm"][0] == pytest.approx(5.0)
    assert np.isnan(float(p["cos"][1])) and float(p["norm"][1]) == 0.0


def test_drift_table_planted(history):
    _, stats = history
    v = MeanDiff(n_bootstrap=0).fit(stats).direction_
    df = drift_table(stats, {"mean_diff": v}, n_null=300, seed=0)
    assert list(df.columns) == DRIFT_COLUMNS
    assert len(df) == 3 * 2 * 2  # runs x steps x layers x 1 method
    assert df["null_iso_p99"].eq(isotropic_p99(24)).all()
    along = df[df.run == "along"]
    assert (
        (along["cos"] > 0.99).all()
        and along["significant"].all()
        and along["significant_cov"].all()
    )
    # percentile interval of the paired bootstrap (v held fixed); near cos = 1 it sits below the
    # estimate, since noise can only lower |cos| there
    assert (along["cos_lo"] < along["cos_hi"]).all() and (along["cos_lo"] > 0.95).all()
    assert np.allclose(along["frac"], along["cos"] ** 2)
    assert np.allclose(along["proj"], along["cos"] * along["norm"])
    assert np.allclose(
        along.sort_values(["layer", "step"])["proj"], [0.5, 1.0, 0.5, 1.0], atol=0.05
    )
    ortho = df[df.run == "ortho"]
    assert not ortho["significant"].any() and not ortho["significant_cov"].any()
    assert (ortho["cos"].abs() < 0.1).all() and (ortho["p_iso"] > 0.1).all()
    # the control run is measured from base, not aligned
    ctl = df[df.run == "ctl"]
    assert (
        ctl["control"].all()
        and (ctl["kind"] == "control").all()
        and not df[df.run != "ctl"]["control"].any()
    )
    assert np.allclose(ctl.sort_values(["layer", "step"])["proj"], [0.5, 1.0, 0.5, 1.0], atol=0.05)
    assert (df["significant"] == (df["cos"] > df["null_iso_p99"])).all()
    assert (df["significant_cov"] == (df["cos"] > df["null_cov_p99"])).all()


def test_cov_null_is_seeded(history):
    _, stats = history
    v = Directions.from_tensor(
        torch.randn(2, 24, generator=torch.Generator().manual_seed(1)), [0, 1]
    )
    a = drift_table(stats, v, n_null=100, seed=3)
    b = drift_table(stats, v, n_null=100, seed=3)
    c = drift_table(stats, v, n_null=100, seed=4)
    assert a.equals(b)
    assert not np.allclose(a["null_cov_p99"], c["null_cov_p99"])
    off = drift_table(stats, v, n_null=0)
    assert (
        off["null_cov_p99"].isna().all()
        and off["p_cov"].isna().all()
        and not off["significant_cov"].any()
    )


def test_drift_table_bad_input(history, make_stats):
    _, stats = history
    v = MeanDiff(n_bootstrap=0).fit(stats).direction_
    with pytest.raises(ConfigError, match="no directions"):
        drift_table(stats, {})
    with pytest.raises(ConfigError, match="ci"):
        drift_table(stats, v, ci=1.5)
    no_moments = make_stats(
        {n: torch.zeros(4, 2, 24) + (n == "base") for n in ("base", "aligned", "r/1", "r/2")},
        runs={"r": {1: "r/1", 2: "r/2"}},
        second=False,
    )
    with pytest.raises(ConfigError, match="second moments"):
        drift_table(no_moments, v, n_null=10)
