"""Subspace linear algebra: ordered spans, principal angles, nested random frames, complements."""

import math

import pytest
import torch
from scipy import stats as sps

from revlens.directions.subspace import (
    complement,
    orient_rows,
    principal_cosines,
    random_frames,
    span_rows,
    subspace_similarity,
)
from revlens.errors import ConfigError, ShapeMismatchError


def test_span_rows_keeps_order_and_sign_and_skips_dependent_rows():
    e = torch.eye(5, dtype=torch.float64)
    cands = torch.stack([-2 * e[1], e[1] + 1e-14 * e[2], e[1] + e[3], 3 * e[0]])
    b = span_rows(cands, 3)
    assert b.shape == (3, 5)
    assert torch.allclose(b @ b.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(b[0], -e[1])  # the first candidate's direction and sign
    assert torch.allclose(b[1], e[3]) and torch.allclose(
        b[2], e[0]
    )  # the near-copy of e1 added nothing
    assert span_rows(cands, 10).shape[0] == 3  # fewer rows when the candidates span less


def test_principal_cosines_of_known_subspaces():
    e = torch.eye(6, dtype=torch.float64)
    a = e[:3]
    rot = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )[0]
    assert torch.allclose(
        principal_cosines(a, rot @ a), torch.ones(3, dtype=torch.float64)
    )  # basis-invariant
    tilt = torch.stack([e[0], e[1], (e[2] + e[3]) / math.sqrt(2)])
    assert torch.allclose(
        principal_cosines(a, tilt), torch.tensor([1.0, 1.0, 1 / math.sqrt(2)], dtype=torch.float64)
    )
    assert float(principal_cosines(a, e[3:]).max()) < 1e-12
    assert subspace_similarity(e[:1], -e[:1]) == pytest.approx(1.0)  # |cos| for directions


def test_orient_rows_points_every_row_toward_base():
    e = torch.eye(4, dtype=torch.float64)
    b = torch.stack([-e[0], -e[1], e[2]])
    toward = torch.tensor([1.0, 2.0, -0.5, 0.0], dtype=torch.float64)
    out = orient_rows(b, toward)
    assert (out @ toward >= 0).all() and torch.equal(out[0], e[0])
    kept = orient_rows(b, toward, keep_first=True)
    assert torch.equal(kept[0], -e[0]) and torch.equal(kept[1], e[1])


def test_random_frames_are_orthonormal_nested_and_uniform():
    d, k, n = 24, 4, 4000
    frames = random_frames(n, k, d, generator=torch.Generator().manual_seed(1))
    assert frames.shape == (n, k, d)
    gram = frames @ frames.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(k, dtype=torch.float64).expand(n, k, k), atol=1e-10)
    # nested: the first j rows of an isotropic frame span a uniform random j-subspace, so the energy
    # of a fixed unit vector in them is Beta(j/2, (d-j)/2) for every j
    x = torch.eye(d, dtype=torch.float64)[0]
    for j in (1, 2, 4):
        energy = ((frames[:, :j] @ x) ** 2).sum(1).numpy()
        assert sps.kstest(energy, sps.beta(j / 2, (d - j) / 2).cdf).pvalue > 1e-3, j
    # given first rows are kept (so rank-1 controls equal the one-direction controls)
    first = torch.randn(5, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ext = random_frames(5, 3, d, generator=torch.Generator().manual_seed(3), first=first)
    assert torch.allclose(ext[:, 0], first / first.norm(dim=1, keepdim=True), atol=1e-12)


def test_covariance_matched_frames_live_where_activations_vary():
    d = 16
    cov = torch.diag(torch.tensor([100.0] * 2 + [0.01] * (d - 2), dtype=torch.float64))
    frames = random_frames(
        200, 2, d, kind="cov", covariance=cov, generator=torch.Generator().manual_seed(0)
    )
    top = torch.eye(d, dtype=torch.float64)[:2]
    sims = torch.tensor([subspace_similarity(f, top) for f in frames])
    assert float(sims.mean()) > 0.95
    iso = random_frames(200, 2, d, generator=torch.Generator().manual_seed(0))
    assert float(torch.tensor([subspace_similarity(f, top) for f in iso]).mean()) < 0.5


def test_random_frames_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="rank k"):
        random_frames(2, 0, 8, generator=g)
    with pytest.raises(ConfigError, match="rank k"):
        random_frames(2, 9, 8, generator=g)
    with pytest.raises(ConfigError, match=">= 1"):
        random_frames(0, 1, 8, generator=g)
    with pytest.raises(ConfigError, match="covariance"):
        random_frames(2, 2, 8, kind="cov", generator=g)
    with pytest.raises(ShapeMismatchError, match=r"\[8, 8\]"):
        random_frames(2, 2, 8, kind="cov", covariance=torch.eye(7), generator=g)
    with pytest.raises(ConfigError, match="unknown control kind"):
        random_frames(2, 2, 8, kind="gauss", generator=g)


def test_complement_is_the_orthogonal_rest():
    b = random_frames(1, 3, 10, generator=torch.Generator().manual_seed(4))[0]
    c = complement(b)
    assert c.shape == (7, 10)
    assert torch.allclose(c @ c.T, torch.eye(7, dtype=torch.float64), atol=1e-10)
    assert float((c @ b.T).abs().max()) < 1e-10
