"""Nulls: the exact isotropic Beta law, the covariance-matched and permutation nulls."""

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError
from scipy import stats as sps

from revlens.drift import (
    covariance_null_directions,
    empirical_pvalue,
    isotropic_p99,
    isotropic_pvalue,
    isotropic_quantile,
    permutation_pvalue,
)
from revlens.errors import ConfigError


def _sphere_cos(d: int, n: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (u[:, 0] / u.norm(dim=1)).numpy()  # cos with e_1


@pytest.mark.parametrize("d", [2, 3, 16, 128])
def test_beta_null_matches_monte_carlo(d):
    cos = _sphere_cos(d, 40_000, seed=d)
    cdf = lambda c: sps.beta.cdf((np.asarray(c) + 1) / 2, (d - 1) / 2, (d - 1) / 2)  # noqa: E731
    assert sps.kstest(cos, cdf).pvalue > 1e-3
    for q in (0.9, 0.99):
        assert isotropic_quantile(d, q) == pytest.approx(np.quantile(cos, q), abs=0.02)
    # the exact tail probability agrees with the empirical one
    c0 = isotropic_quantile(d, 0.95)
    assert isotropic_pvalue(c0, d) == pytest.approx(0.05, rel=1e-9)
    assert np.mean(cos >= c0) == pytest.approx(0.05, abs=0.005)


def test_isotropic_values():
    assert isotropic_p99(128) == pytest.approx(0.205, abs=0.002)  # DESIGN §3: p99 0.205 at d=128
    assert isotropic_pvalue(isotropic_p99(64), 64) == pytest.approx(0.01)
    assert isotropic_pvalue(1.0, 64) == pytest.approx(0.0)
    assert isotropic_pvalue(-1.0, 64) == pytest.approx(1.0)
    np.testing.assert_allclose(isotropic_pvalue(np.array([0.0, 0.0]), 10), [0.5, 0.5])
    with pytest.raises(ConfigError, match="d_model >= 2"):
        isotropic_p99(1)
    with pytest.raises(ConfigError, match="quantile"):
        isotropic_quantile(10, 1.5)


def test_covariance_null_is_seeded_and_follows_the_covariance():
    d = 10
    cov = torch.diag(torch.tensor([100.0] + [0.01] * (d - 1), dtype=torch.float64))
    a = covariance_null_directions(cov, 500, generator=torch.Generator().manual_seed(5))
    b = covariance_null_directions(cov, 500, generator=torch.Generator().manual_seed(5))
    c = covariance_null_directions(cov, 500, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.norm(dim=1), torch.ones(500, dtype=torch.float64))
    assert a[:, 0].abs().median() > 0.9  # concentrated on the high-variance axis
    # rank-deficient covariance: directions stay in its span
    basis = torch.eye(d, dtype=torch.float64)[:3]
    low = covariance_null_directions(
        basis.T @ basis, 50, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(low[:, 3:], torch.zeros(50, d - 3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="zero"):
        covariance_null_directions(torch.zeros(d, d), 5, generator=torch.Generator())
    # a non-square matrix: TypeCheckError under the jaxtyping plugin, ConfigError without it
    with pytest.raises((ConfigError, TypeCheckError)):
        covariance_null_directions(torch.zeros(d, 3), 5, generator=torch.Generator())


def test_empirical_pvalue():
    null = np.linspace(0, 1, 99)
    assert empirical_pvalue(2.0, null) == pytest.approx(1 / 100)
    assert empirical_pvalue(-1.0, null) == pytest.approx(1.0)
    assert np.isnan(empirical_pvalue(float("nan"), null))


def test_permutation_pvalue_detects_a_shift_and_not_noise():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(30, 2, 8, generator=g, dtype=torch.float64)
    diffs = noise.clone()
    diffs[:, 0] += 2.0  # layer 0 has a shared shift, layer 1 is pure symmetric noise
    p = permutation_pvalue(diffs, 400, generator=torch.Generator().manual_seed(1))
    assert p[0] == pytest.approx(1 / 401)
    assert p[1] > 0.05
    again = permutation_pvalue(diffs, 400, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(p, again)
    # over many pure-noise layers, p-values are roughly uniform (valid test)
    many = permutation_pvalue(
        torch.randn(20, 200, 4, generator=g, dtype=torch.float64),
        200,
        generator=torch.Generator().manual_seed(2),
    )
    assert 0.02 <= np.mean(many <= 0.1) <= 0.2
    assert np.isnan(permutation_pvalue(diffs, 0, generator=g)).all()
