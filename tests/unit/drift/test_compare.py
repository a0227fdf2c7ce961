"""compare_directions: cos(a_l, b_l) per layer beside the exact isotropic (Beta) null and the
covariance-matched one."""

import numpy as np
import pytest
import torch
from scipy import stats as sps

from revlens.collect import HistoryStats
from revlens.collect.checkpoint import CheckpointStats
from revlens.directions import Directions
from revlens.drift import COMPARE_COLUMNS, compare_directions
from revlens.errors import ConfigError, ShapeMismatchError

D = 16


def dirs(seed, layers=(1, 2, 3), method="m"):
    g = torch.Generator().manual_seed(seed)
    return Directions.from_tensor(torch.randn(len(layers), D, generator=g), layers, method=method)


def stats_with_cov(layers=(1, 2, 3)):
    """Statistics whose aligned checkpoint holds second moments of anisotropic activations."""
    g = torch.Generator().manual_seed(5)
    scale = torch.linspace(0.1, 3.0, D, dtype=torch.float64)
    x = torch.randn(200, len(layers), D, generator=g, dtype=torch.float64) * scale
    st = CheckpointStats("aligned", list(layers))
    st.update(x, torch.arange(200), n_bootstrap=0, seed=0, second=True, keep=False)
    st.finalize()
    return HistoryStats(
        layers=list(layers),
        site="resid_post",
        position="last",
        d_model=D,
        checkpoints={"aligned": st},
        roles={"aligned": ("aligned", None, None)},
        run_starts={},
        controls=[],
        kinds={},
        meta={},
    ), scale


def test_cosines_and_the_exact_isotropic_null():
    a, b = dirs(0, method="mean_diff"), dirs(1, (2, 3, 4), method="refusal")
    out = compare_directions(a, b, level=0.98)
    t = out.table
    assert list(t.columns) == list(COMPARE_COLUMNS) and list(t["layer"]) == [2, 3]
    assert (out.a, out.b) == ("mean_diff", "refusal")
    half = (D - 1) / 2
    for _, row in t.iterrows():
        u, v = a[int(row["layer"])].double(), b[int(row["layer"])].double()
        cos = float(u @ v / (u.norm() * v.norm()))
        assert row["cos"] == pytest.approx(cos, abs=1e-12)
        assert row["iso_lo"] == pytest.approx(2 * sps.beta.ppf(0.01, half, half) - 1, abs=1e-12)
        assert row["iso_hi"] == pytest.approx(2 * sps.beta.ppf(0.99, half, half) - 1, abs=1e-12)
        tail = sps.beta.sf((abs(cos) + 1) / 2, half, half)
        assert row["iso_p"] == pytest.approx(2 * tail, rel=1e-9)
        assert row["outside_iso"] == (not row["iso_lo"] <= cos <= row["iso_hi"])
        assert np.isnan(row["cov_p"]) and not row["outside_cov"]
    same = compare_directions(a, a)
    assert (same.table["cos"] - 1).abs().max() < 1e-6 and same.table["outside_iso"].all()
    flipped = Directions.from_tensor(-a.vectors, a.layers, method="neg")
    assert np.allclose(compare_directions(a, flipped).table["cos"], -1, atol=1e-6)


def test_covariance_matched_null_is_reproducible_and_reads_the_aligned_covariance():
    st, scale = stats_with_cov()
    a = dirs(0)
    # b along the highest-variance axis: random N(0, Σ) directions lean on it, so the band is wide
    b = Directions.from_tensor(torch.eye(D)[[-1, -1, -1]], (1, 2, 3), method="refusal")
    out = compare_directions(a, b, stats=st, n_null=2000, seed=3)
    again = compare_directions(a, b, stats=st, n_null=2000, seed=3)
    assert out.table.equals(again.table) and out.meta["n_null"] == 2000
    t = out.table
    assert (
        t["cov_hi"] > t["iso_hi"]
    ).all()  # stricter than the isotropic null along a high-variance axis
    cov = st["aligned"].covariance[0]
    assert float(cov[-1, -1]) == pytest.approx(float(scale[-1] ** 2), rel=0.3)
    assert ((t["cov_p"] > 0) & (t["cov_p"] <= 1)).all()
    assert list(t["outside_cov"]) == [
        not lo <= c <= hi for c, lo, hi in zip(t["cos"], t["cov_lo"], t["cov_hi"])
    ]


def test_figure_draws_the_bands_and_the_cosines():
    st, _ = stats_with_cov()
    fig = compare_directions(dirs(0), dirs(1), stats=st, n_null=100).figure()
    names = [tr.name for tr in fig.data if tr.name]
    assert any("isotropic" in n for n in names) and any("covariance" in n for n in names)
    assert list(fig.data[-1].x) == [1, 2, 3]


def test_typed_errors():
    a = dirs(0)
    with pytest.raises(ConfigError, match="no shared layer"):
        compare_directions(a, dirs(1, (7, 8)))
    with pytest.raises(ConfigError, match="must be a Directions"):
        compare_directions(a, a.vectors)
    with pytest.raises(ConfigError, match="level"):
        compare_directions(a, a, level=1.5)
    with pytest.raises(ShapeMismatchError):
        compare_directions(a, Directions.from_tensor(torch.randn(3, D + 1), (1, 2, 3)))
