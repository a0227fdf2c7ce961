"""The span (low-rank) path of the estimators equals the dense d × d path of revlens 0.2.

Every estimator, k = 1 and k > 1, on histories with fewer prompts than dimensions (where
``solver="auto"`` takes the span path): bases and stabilities agree to 1e-6 relative, with the
same signs. The Ledoit–Wolf intensity is checked against scikit-learn itself.
"""

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

from revlens.directions import LinearProbe, MeanDiff, PairedPCA, Whitened
from revlens.directions._lowrank import ledoit_wolf_shrinkage as lw_span
from revlens.directions._lowrank import pinv_solve, span_basis, whitened_system
from revlens.errors import ConfigError


def _history(
    make_stats, *, n: int = 12, d: int = 40, layers: int = 3, bases: int = 1, seed: int = 0
):
    """Anisotropic activations with a planted base − aligned shift and a second varying axis."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 3.0, d, dtype=torch.float64)
    aligned = torch.randn(n, layers, d, generator=g, dtype=torch.float64) * scale
    shift = torch.randn(layers, d, generator=g, dtype=torch.float64)
    acts = {"aligned": aligned}
    for b in range(bases):
        extra = torch.randn(layers, d, generator=g, dtype=torch.float64) * (0.5 + b)
        noise = torch.randn(n, layers, d, generator=g, dtype=torch.float64) * scale
        acts[f"base{b}" if b else "base"] = aligned + 2.0 * shift + extra + 0.7 * noise
    return make_stats(acts)


def _both(est_cls, stats, **kw):
    dense = est_cls(solver="dense", **kw).fit(stats)
    span = est_cls(solver="span", **kw).fit(stats)
    return dense, span


def _assert_same(dense, span):
    a, b = dense.direction_.basis.double(), span.direction_.basis.double()
    assert a.shape == b.shape
    # same rows, same signs: the difference of unit rows is a relative error
    assert float((a - b).abs().max()) < 1e-6, float((a - b).abs().max())
    sa, sb = dense.stability_by_rank_, span.stability_by_rank_
    assert np.array_equal(np.isnan(sa), np.isnan(sb))
    assert np.allclose(sa, sb, rtol=1e-6, atol=1e-9, equal_nan=True), (sa, sb)
    offsets = [np.asarray(e.direction_.meta["base_offset"], dtype=float) for e in (dense, span)]
    assert np.allclose(*offsets, atol=2e-6)  # rounded to 6 places


CASES = [
    (Whitened, {}),
    (Whitened, {"shrinkage": 0.3}),
    (Whitened, {"shrinkage": 0.0}),
    (PairedPCA, {}),
    (PairedPCA, {"center": True}),
    (LinearProbe, {}),
    (MeanDiff, {}),
]


@pytest.mark.parametrize(("cls", "kw"), CASES, ids=[f"{c.__name__}{k}" for c, k in CASES])
@pytest.mark.parametrize("k", [1, 3])
def test_span_equals_dense(make_stats, cls, kw, k):
    if k > 1 and kw.get("shrinkage") == 0.0:
        pytest.skip(
            "an unshrunk rank-deficient covariance has no generalised eigenproblem (dense eigh fails too)"
        )
    stats = _history(make_stats, bases=3 if cls is MeanDiff else 1)
    boots = 2 if cls is LinearProbe else 6  # each probe refit is an lbfgs fit per row and layer
    dense, span = _both(cls, stats, n_components=k, n_bootstrap=boots, **kw)
    _assert_same(dense, span)
    if k > 1:
        assert span.direction_.rank == k and np.isfinite(span.stability_by_rank_).all()


def test_pca_each_base_span_equals_dense(make_stats):
    stats = _history(make_stats, bases=3, n=8)
    for k in (1, 4):
        _assert_same(*_both(PairedPCA, stats, bases="each", n_components=k, n_bootstrap=5))


def test_whitened_from_moments_span_stability_equals_dense(make_stats):
    """``shrinkage=<float>`` fits on second moments; its stability refits take the span path."""
    stats = _history(make_stats)
    dense, span = _both(Whitened, stats, shrinkage=0.2, n_bootstrap=8)
    assert np.isfinite(span.stability_).all()
    _assert_same(dense, span)


def test_auto_takes_the_span_only_when_it_is_smaller(make_stats):
    few = _history(make_stats, n=6, d=40)  # whitened: 12 rows < 40
    many = _history(make_stats, n=30, d=40)  # 60 rows >= 40: dense
    assert Whitened()._uses_span(few) and not Whitened()._uses_span(many)
    assert PairedPCA()._uses_span(many)  # pca spans the 30 paired differences only
    assert not Whitened(solver="dense")._uses_span(few) and Whitened(solver="span")._uses_span(many)
    assert not LinearProbe()._uses_span(few)  # lbfgs already costs O(n d) per iteration
    # forced span with more rows than d still equals dense (Q is then a rotation of R^d)
    _assert_same(*_both(Whitened, many, n_bootstrap=4))
    _assert_same(*_both(Whitened, few, n_bootstrap=4, n_components=2))


def test_bad_solver_is_a_config_error(make_stats):
    stats = _history(make_stats)
    with pytest.raises(ConfigError, match="solver must be one of auto, dense, span"):
        Whitened(solver="fast").fit(stats)


def test_device_argument_keeps_the_result(make_stats):
    stats = _history(make_stats)
    a = Whitened(n_bootstrap=3, device="cpu").fit(stats)
    b = Whitened(n_bootstrap=3).fit(stats)
    assert torch.equal(a.direction_.basis, b.direction_.basis)
    assert a.get_params()["device"] == "cpu" and a.get_params()["solver"] == "auto"


@pytest.mark.parametrize(("n", "d"), [(5, 30), (40, 12), (7, 1), (3, 200)])
def test_ledoit_wolf_intensity_matches_scikit_learn(n, d):
    g = torch.Generator().manual_seed(n * d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(
        0.1, 2.0, d, dtype=torch.float64
    )
    x = x - x.mean(0)
    q = span_basis(x)
    ours = float(lw_span(x @ q, d))
    assert ours == pytest.approx(
        ledoit_wolf_shrinkage(x.numpy(), assume_centered=True), rel=1e-9, abs=1e-15
    )


def test_woodbury_solve_matches_the_dense_ledoit_wolf_lstsq():
    g = torch.Generator().manual_seed(5)
    n, d = 9, 64
    b = torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(
        0.1, 3.0, d, dtype=torch.float64
    )
    z = torch.cat([b - b.mean(0), a - a.mean(0)]).numpy()
    cov = torch.from_numpy(LedoitWolf(assume_centered=True).fit(z).covariance_)
    dense = torch.linalg.lstsq(cov, (b.mean(0) - a.mean(0))[:, None]).solution[:, 0]
    q = span_basis(torch.cat([b, a]))
    sigma, diff = whitened_system(b @ q, a @ q, d, None)
    span = q @ pinv_solve(sigma, diff, d)
    assert float((span - dense).norm() / dense.norm()) < 1e-10
