"""Drift against rank-k subspaces: the exact Beta null against Monte Carlo, k = 1 equals the
direction table, planted drifts inside / outside a subspace, the covariance-matched null."""

import numpy as np
import pytest
import torch
from scipy import stats as sps

from revlens.directions import Directions, PairedPCA
from revlens.directions.subspace import random_frames
from revlens.drift import (
    SUBSPACE_COLUMNS,
    drift_table,
    energy_pvalue,
    energy_quantile,
    subspace_drift_table,
    subspace_energy,
)
from revlens.errors import ConfigError


@pytest.mark.parametrize(("d", "k"), [(8, 1), (24, 3), (128, 16)])
def test_exact_beta_null_matches_monte_carlo(d, k):
    g = torch.Generator().manual_seed(d + k)
    u = torch.randn(20000, d, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    basis = random_frames(1, k, d, generator=torch.Generator().manual_seed(1))[
        0
    ]  # any fixed subspace
    energy = subspace_energy(u, basis)[:, -1].numpy()
    assert sps.kstest(energy, sps.beta(k / 2, (d - k) / 2).cdf).pvalue > 1e-3
    assert np.quantile(energy, 0.99) == pytest.approx(energy_quantile(d, k, 0.99), rel=0.05)
    assert energy.mean() == pytest.approx(k / d, rel=0.03)
    assert float(np.mean(energy >= energy_quantile(d, k, 0.9))) == pytest.approx(0.1, abs=0.01)
    assert energy_pvalue(energy_quantile(d, k, 0.95), d, k) == pytest.approx(0.05)


def test_energy_null_bad_input():
    with pytest.raises(ConfigError, match="rank k=8"):
        energy_quantile(8, 8)
    with pytest.raises(ConfigError, match="quantile"):
        energy_quantile(8, 2, 1.0)


@pytest.fixture(scope="module")
def history():
    """d=24, 2 layers: run 'plane' drifts inside span(e0, e1) (mostly e1), run 'out' along e5;
    aligned activations vary most along e0..e3 (an anisotropic stream)."""
    from unit.conftest import build_stats

    g = torch.Generator().manual_seed(0)
    n, d = 40, 24
    e = torch.eye(d, dtype=torch.float64)
    scale = torch.ones(d, dtype=torch.float64)
    scale[:4] = 6.0
    aligned = torch.randn(n, 2, d, generator=g, dtype=torch.float64) * scale

    def noisy(x):
        return x + 0.02 * torch.randn(x.shape, generator=g, dtype=torch.float64)

    acts = {
        "base": noisy(
            aligned + 2 * e[0] + torch.randn(n, 1, 1, generator=g, dtype=torch.float64) * e[1]
        ),
        "aligned": aligned,
    }
    for s in (1, 2):
        acts[f"plane/{s}"] = noisy(aligned + 0.5 * s * (0.3 * e[0] + e[1]))
        acts[f"out/{s}"] = noisy(aligned + 0.5 * s * e[5])
    stats = build_stats(
        acts, runs={"plane": {1: "plane/1", 2: "plane/2"}, "out": {1: "out/1", 2: "out/2"}}
    )
    return e, stats


def test_k1_rows_equal_the_direction_table_and_energy_grows_with_k(history):
    _, stats = history
    pca = PairedPCA(n_components=4, n_bootstrap=0).fit(stats).direction_
    one = drift_table(stats, pca.truncate(1), n_null=50, seed=3)
    sub = subspace_drift_table(stats, pca, n_null=50, seed=3)
    assert list(sub.columns) == SUBSPACE_COLUMNS and set(sub["rank"]) == {1, 2, 3, 4}
    k1 = sub[sub["rank"] == 1].reset_index(drop=True)
    for col, src in (("energy", "frac"), ("cos", "cos"), ("norm", "norm")):
        np.testing.assert_array_equal(k1[col].to_numpy(), one[src].to_numpy())
    # nested subspaces: energy never decreases with k, and stays within [0, 1]
    wide = sub.pivot_table(index=["run", "step", "layer"], columns="rank", values="energy")
    assert (wide.diff(axis=1).iloc[:, 1:] >= -1e-12).all().all() and (
        wide.to_numpy() <= 1 + 1e-12
    ).all()
    # the isotropic null is exact Beta(k/2, (d-k)/2)
    assert sub["null_iso_q"].to_numpy() == pytest.approx(
        [energy_quantile(24, k) for k in sub["rank"]]
    )
    assert (sub["null_iso_mean"] == sub["rank"] / 24).all()


def test_a_drift_inside_the_plane_is_found_at_k2_not_at_k1(history):
    e, stats = history
    plane = Directions.from_tensor(
        torch.stack([e[0], e[1]])[None].expand(2, 2, 24), [0, 1], method="plane"
    )
    sub = subspace_drift_table(stats, plane, n_null=200, seed=0).set_index(
        ["run", "step", "layer", "rank"]
    )
    inside = sub.loc[("plane", 2, 0, 2)]
    assert inside["energy"] > 0.98 and inside["significant"] and inside["p_iso"] < 1e-10
    assert sub.loc[("plane", 2, 0, 1), "energy"] < 0.1  # along e0 alone it is mostly missed
    assert inside["energy_lo"] <= inside["energy"] + 1e-9 and inside["energy_hi"] <= 1 + 1e-12
    out = sub.loc[("out", 2, 0, 2)]
    assert out["energy"] < 0.01 and not out["significant"]
    # the covariance-matched null is stricter here: random 2-subspaces from a stream that varies
    # most along e0..e3 catch more of a drift in span(e0, e1) than isotropic ones
    assert inside["null_cov_mean"] > 3 * inside["null_iso_mean"]
    assert inside["null_cov_q"] > inside["null_iso_q"]


def test_bad_input(history):
    e, stats = history
    plane = Directions.from_tensor(torch.stack([e[0], e[1]])[None].expand(2, 2, 24), [0, 1])
    with pytest.raises(ConfigError, match=r"ranks \[3\]"):
        subspace_drift_table(stats, plane, ranks=[1, 3])
    with pytest.raises(ConfigError, match="ci"):
        subspace_drift_table(stats, plane, ci=1.5)
    no_null = subspace_drift_table(stats, plane, n_null=0)
    assert no_null["null_cov_q"].isna().all() and not no_null["significant_cov"].any()
