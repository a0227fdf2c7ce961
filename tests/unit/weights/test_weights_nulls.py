"""The exact nulls against Monte Carlo, and the random-subspace null's Haar frames.

Exact (isotropic ΔW, fixed V): share in the top-k left subspace ~ Beta(kn/2, (m−k)n/2), right
Beta(km/2, m(n−k)/2), both Beta(k²/2, (mn−k²)/2), (cos(ΔW, −V) + 1)/2 ~ Beta((mn−1)/2, (mn−1)/2).
Haar frames: for a rank-1 ΔW, the share in a random k-subspace is exactly Beta(k/2, (m−k)/2)."""

import numpy as np
import pytest
import torch
from scipy import stats

from revlens.weights.algebra import make_basis, measure_dense
from revlens.weights.nulls import (
    cos_quantile,
    energy_quantile,
    energy_sf,
    haar_frames,
    subspace_dim,
)

M, N, K = 7, 5, 2
DRAWS = 4000


@pytest.fixture(scope="module")
def mc():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(M, N, generator=g, dtype=torch.float64)
    basis = make_basis(v, K, n_random=0, generator=None, svd="full")
    idx = torch.tensor([K - 1])
    out = {"left": [], "right": [], "both": [], "cos": []}
    for _ in range(DRAWS):
        dw = torch.randn(M, N, generator=g, dtype=torch.float64)
        en = measure_dense(dw, basis, idx)
        for side in ("left", "right", "both"):
            out[side].append(float(getattr(en, side)[0]) / en.dw2)
        out["cos"].append(-en.dot / (en.dw2 * basis.v_norm2) ** 0.5)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_subspace_share_of_isotropic_update_is_the_derived_beta(mc, side):
    dim, total = subspace_dim(side, K, M, N), M * N
    assert dim == {"left": K * N, "right": K * M, "both": K * K}[side]
    ks = stats.kstest(mc[side], stats.beta(dim / 2, (total - dim) / 2).cdf)
    assert ks.pvalue > 1e-3, ks
    assert np.quantile(mc[side], 0.99) == pytest.approx(energy_quantile(dim, total), abs=0.03)
    # the exact p-value is calibrated: P(p < 0.05) ≈ 0.05
    p = energy_sf(mc[side], dim, total)
    assert abs(float((p < 0.05).mean()) - 0.05) < 0.015


def test_cos_of_isotropic_update_is_the_derived_beta(mc):
    half = (M * N - 1) / 2
    ks = stats.kstest((mc["cos"] + 1) / 2, stats.beta(half, half).cdf)
    assert ks.pvalue > 1e-3, ks
    assert np.quantile(mc["cos"], 0.99) == pytest.approx(cos_quantile(M * N), abs=0.03)


def test_a_wrong_law_is_rejected(mc):
    # the test above has power: the left share is not Beta of the *right* subspace's dimension
    dim = subspace_dim("right", K, M, N)
    assert stats.kstest(mc["left"], stats.beta(dim / 2, (M * N - dim) / 2).cdf).pvalue < 1e-6


def test_haar_frames_are_orthonormal_and_uniform():
    g = torch.Generator().manual_seed(1)
    q = haar_frames(3000, 6, 3, generator=g)
    eye = torch.eye(3, dtype=torch.float64).expand(3000, 3, 3)
    assert torch.allclose(q.transpose(1, 2) @ q, eye, atol=1e-12)
    # share of a fixed unit vector's energy in a random 2-subspace (the frame's first 2 columns):
    # exactly Beta(k/2, (m-k)/2) when the frames are Haar (without the sign fix they are not)
    x = torch.zeros(6, dtype=torch.float64)
    x[0] = 1.0
    share = ((q[:, :, :2].transpose(1, 2) @ x) ** 2).sum(1).numpy()
    assert stats.kstest(share, stats.beta(1.0, 2.0).cdf).pvalue > 1e-3


def test_random_subspace_null_mean_is_chance_and_rank1_update_is_wide():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(20, 12, generator=g, dtype=torch.float64)
    basis = make_basis(v, 4, n_random=400, generator=g, svd="full")
    u = torch.randn(20, 1, generator=g, dtype=torch.float64)
    w = torch.randn(1, 12, generator=g, dtype=torch.float64)
    en = measure_dense(u @ w, basis, torch.tensor([3]))
    share = (en.rand_left[:, 0] / en.dw2).numpy()
    assert share.mean() == pytest.approx(4 / 20, abs=0.03)
    # a rank-1 update: the random-subspace share is Beta(k/2, (m-k)/2), far wider than the isotropic law
    assert stats.kstest(share, stats.beta(2.0, 8.0).cdf).pvalue > 1e-3
    assert np.quantile(share, 0.99) > 1.5 * energy_quantile(4 * 12, 20 * 12)
