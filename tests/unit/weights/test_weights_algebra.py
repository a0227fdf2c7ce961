"""The per-module algebra: energies equal explicit projections, and LoRA factor identities equal
the dense computation on the multiplied-out ΔW (to float64 round-off)."""

import pytest
import torch

from revlens.weights.algebra import (
    make_basis,
    measure_dense,
    measure_lowrank,
    top_singular,
    v_energy,
)


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(24, 16, generator=g, dtype=torch.float64)
    basis = make_basis(v, 6, n_random=5, generator=g, svd="full")
    return g, v, basis, torch.tensor([0, 2, 5])


def test_energies_equal_explicit_projections(setup):
    g, v, basis, idx = setup
    dw = torch.randn(24, 16, generator=g, dtype=torch.float64)
    en = measure_dense(dw, basis, idx)
    assert en.dot == pytest.approx(float((dw * v).sum()))
    for i, k in enumerate([1, 3, 6]):
        u, r = basis.u[:, :k], basis.r[:, :k]
        assert float(en.left[i]) == pytest.approx(float((u @ u.T @ dw).norm() ** 2), rel=1e-12)
        assert float(en.right[i]) == pytest.approx(float((dw @ r @ r.T).norm() ** 2), rel=1e-12)
        assert float(en.both[i]) == pytest.approx(
            float((u @ u.T @ dw @ r @ r.T).norm() ** 2), rel=1e-12
        )
        ql, qr = basis.ql[3, :, :k], basis.qr[3, :, :k]
        assert float(en.rand_left[3, i]) == pytest.approx(float((ql.T @ dw).norm() ** 2), rel=1e-12)
        assert float(en.rand_right[3, i]) == pytest.approx(float((dw @ qr).norm() ** 2), rel=1e-12)
        assert float(en.rand_both[3, i]) == pytest.approx(
            float((ql.T @ dw @ qr).norm() ** 2), rel=1e-12
        )
    s2 = (basis.sigma**2).cumsum(0)
    assert v_energy(basis, idx) == pytest.approx((s2[idx] / (v * v).sum()).tolist())


def test_lowrank_factor_identities_equal_dense(setup):
    g, _v, basis, idx = setup
    b = torch.randn(24, 3, generator=g, dtype=torch.float64)
    a = torch.randn(3, 16, generator=g, dtype=torch.float64)
    lo = measure_lowrank(b, a, 0.37, basis, idx)
    de = measure_dense(0.37 * b @ a, basis, idx)
    assert lo.dot == pytest.approx(de.dot, rel=1e-12) and lo.dw2 == pytest.approx(de.dw2, rel=1e-12)
    for name in ("left", "right", "both", "rand_left", "rand_right", "rand_both"):
        torch.testing.assert_close(getattr(lo, name), getattr(de, name), rtol=1e-10, atol=1e-12)


def test_top_singular_lowrank_matches_full_on_a_gapped_spectrum():
    g = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    s = torch.cat([torch.linspace(10, 5, 8), 0.1 * torch.rand(192, generator=g)]).double()
    v = u[:, :200] * s @ r.T
    uf, sf, rf = top_singular(v, 8, "full")
    ul, sl, rl = top_singular(v, 8, "lowrank")
    assert torch.allclose(sf, sl, rtol=1e-6)
    assert torch.linalg.matrix_norm(uf @ uf.T - ul @ ul.T) < 1e-6
    assert torch.linalg.matrix_norm(rf @ rf.T - rl @ rl.T) < 1e-6


def test_vectors_and_zero_v_have_no_subspace():
    b = make_basis(torch.ones(5, dtype=torch.float64), 4, n_random=3, generator=torch.Generator())
    assert b.rank == 0 and b.v_norm2 == 5.0
    z = make_basis(
        torch.zeros(4, 4, dtype=torch.float64), 2, n_random=3, generator=torch.Generator()
    )
    assert z.rank == 0
    capped = make_basis(torch.randn(3, 9, dtype=torch.float64), 16, n_random=0, generator=None)
    assert capped.rank == 2  # at most min(m, n) - 1


def test_top_singular_gram_path_matches_the_full_svd():
    g = torch.Generator().manual_seed(4)
    for shape in ((40, 25), (25, 40)):
        v = torch.randn(*shape, generator=g, dtype=torch.float64)
        uf, sf, rf = top_singular(v, 6, "full")
        ua, sa, ra = top_singular(v, 6, "auto")
        torch.testing.assert_close(sa, sf, rtol=1e-10, atol=0)
        torch.testing.assert_close(ua @ ua.T, uf @ uf.T, rtol=0, atol=1e-9)
        torch.testing.assert_close(ra @ ra.T, rf @ rf.T, rtol=0, atol=1e-9)
        torch.testing.assert_close(ua.T @ ua, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-10)
