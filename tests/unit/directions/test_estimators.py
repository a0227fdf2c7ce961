"""Direction estimators on synthetic statistics with a known planted direction."""

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from revlens.directions import (
    ESTIMATORS,
    Directions,
    LinearProbe,
    MeanDiff,
    PairedPCA,
    Whitened,
    linear_probe,
    mean_diff,
    paired_pca,
    resolve_directions,
    whitened,
)
from revlens.errors import ConfigError, NotFittedError, ShapeMismatchError, SiteError

ALL = [MeanDiff, PairedPCA, LinearProbe, Whitened]


@pytest.mark.parametrize("cls", ALL)
def test_recovers_planted_direction_with_base_sign(cls, planted):
    u, stats = planted
    est = cls(n_bootstrap=10).fit(stats)
    vec = est.direction_
    assert isinstance(vec, Directions) and vec.method == cls.method
    assert vec.layers == (0, 1) and est.n_features_in_ == 16
    assert torch.allclose(vec.vectors.norm(dim=1), torch.ones(2), atol=1e-6)
    cos = vec.vectors.double() @ u
    # Sign: from aligned toward base (u is the base - aligned shift).
    assert (cos > {LinearProbe: 0.8, Whitened: 0.95}.get(cls, 0.99)).all(), cos
    assert est.stability_.shape == (2,)
    assert ((est.stability_ > 0.8) & (est.stability_ <= 1.0 + 1e-9)).all()


@pytest.mark.parametrize("cls", ALL)
def test_swapping_base_and_aligned_flips_the_sign(cls, planted, make_stats):
    _, stats = planted
    fwd = cls(n_bootstrap=0).fit(stats).direction_.vectors
    swapped = make_stats(
        {
            "base": stats["aligned"].activations.double(),
            "aligned": stats["base"].activations.double(),
        }
    )
    back = cls(n_bootstrap=0).fit(swapped).direction_.vectors
    assert (torch.nn.functional.cosine_similarity(fwd, back) < -0.95).all()


def test_stability_is_low_without_a_planted_shift(make_stats):
    g = torch.Generator().manual_seed(3)
    aligned = torch.randn(30, 1, 16, generator=g, dtype=torch.float64)
    base = aligned + torch.randn(30, 1, 16, generator=g, dtype=torch.float64)
    stats = make_stats({"base": base, "aligned": aligned})
    noisy = MeanDiff(n_bootstrap=20).fit(stats).stability_[0]
    assert noisy < 0.8


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("attr", ["direction_", "stability_", "n_features_in_"])
def test_not_fitted(cls, attr):
    est = cls()
    with pytest.raises(NotFittedError, match=f"not fitted.*{attr}"):
        getattr(est, attr)
    assert not est.is_fitted
    with pytest.raises(AttributeError):  # NotFittedError is an AttributeError; others stay plain
        est.no_such_thing  # noqa: B018


def test_init_stores_params_only_and_repr(planted):
    est = PairedPCA(center=True, n_bootstrap=7, seed=3)
    assert est.get_params() == {
        "center": True,
        "n_components": 1,
        "bases": "mean",
        "n_bootstrap": 7,
        "seed": 3,
        "solver": "auto",
        "device": None,
    }
    assert repr(est) == (
        "PairedPCA(center=True, n_components=1, bases='mean', n_bootstrap=7, seed=3, "
        "solver='auto', device=None)"
    )
    with pytest.raises(ConfigError, match="n_bootstrap"):
        MeanDiff(n_bootstrap=-1).fit(planted[1])


@pytest.mark.parametrize("cls", ALL)
def test_identical_base_and_aligned_is_a_zero_norm_error_naming_the_layer(cls, make_stats):
    g = torch.Generator().manual_seed(1)
    aligned = torch.randn(10, 2, 8, generator=g, dtype=torch.float64)
    base = aligned.clone()
    base[:, 1] += 1.0  # layer 1 differs, layer 0 is identical
    stats = make_stats({"base": base, "aligned": aligned})
    with pytest.raises(ConfigError, match=r"layer\(s\) \[0\]"):
        cls().fit(stats)


def test_function_twins_match_estimators(planted):
    _, stats = planted
    for fn, cls in (
        (mean_diff, MeanDiff),
        (paired_pca, PairedPCA),
        (linear_probe, LinearProbe),
        (whitened, Whitened),
    ):
        assert torch.allclose(fn(stats).vectors, cls(n_bootstrap=0).fit(stats).direction_.vectors)


def test_mean_diff_uses_paired_poisson_replicates_and_is_deterministic(planted, make_stats):
    _, stats = planted
    a = MeanDiff(n_bootstrap=20).fit(stats).stability_
    b = MeanDiff(n_bootstrap=20, seed=99).fit(stats).stability_  # replicates come from collect
    np.testing.assert_array_equal(a, b)
    no_boot = make_stats(
        {
            "base": stats["base"].activations.double(),
            "aligned": stats["aligned"].activations.double(),
        },
        n_bootstrap=0,
    )
    c = MeanDiff(n_bootstrap=20, seed=1).fit(no_boot).stability_  # falls back to prompt resampling
    assert np.isfinite(c).all() and (c > 0.9).all()
    assert np.isnan(MeanDiff(n_bootstrap=0).fit(stats).stability_).all()


def test_several_bases_combine_by_their_mean(make_stats, unit_vec):
    g = torch.Generator().manual_seed(2)
    d = 12
    u, w = torch.eye(d, dtype=torch.float64)[0], torch.eye(d, dtype=torch.float64)[1]
    aligned = torch.randn(20, 1, d, generator=g, dtype=torch.float64)
    stats = make_stats({"base_a": aligned + 2 * u, "base_b": aligned + 2 * w, "aligned": aligned})
    for cls in (MeanDiff, PairedPCA):
        v = cls(n_bootstrap=0).fit(stats).direction_.vectors[0].double()
        assert torch.allclose(v, unit_vec(u + w), atol=1e-6)


def test_whitened_discounts_a_high_variance_axis(make_stats, unit_vec):
    g = torch.Generator().manual_seed(4)
    n, d = 200, 8
    noise = torch.randn(2, n, 1, d, generator=g, dtype=torch.float64)
    noise[..., 1] *= 20.0  # within-class variance is huge along axis 1
    u = torch.eye(d, dtype=torch.float64)[0]
    shift = u + 3 * torch.eye(d, dtype=torch.float64)[1]
    stats = make_stats({"base": noise[0] + shift, "aligned": noise[1]})
    lda = Whitened(n_bootstrap=0).fit(stats).direction_.vectors[0].double()
    md = MeanDiff(n_bootstrap=0).fit(stats).direction_.vectors[0].double()
    assert lda @ u > 0.9 > md @ u
    # A fixed shrinkage also works from second moments alone (no kept activations).
    moments = make_stats({"base": noise[0] + shift, "aligned": noise[1]}, keep=False)
    v = Whitened(shrinkage=0.1).fit(moments).direction_.vectors[0].double()
    assert v @ u > 0.8
    with pytest.raises(ConfigError, match="shrinkage=<float>"):
        Whitened().fit(moments)
    with pytest.raises(ConfigError, match="shrinkage"):
        Whitened(shrinkage=2.0).fit(stats)


def test_resolve_directions(planted):
    u, stats = planted
    assert set(ESTIMATORS) == {"mean_diff", "pca", "probe", "whitened", "refusal"}
    assert resolve_directions("pca", stats).method == "pca"
    assert resolve_directions(MeanDiff(n_bootstrap=0), stats).method == "mean_diff"
    t = torch.stack([3 * u, -u]).float()
    custom = resolve_directions(t, stats)
    assert custom.method == "custom" and torch.allclose(custom.vectors.norm(dim=1), torch.ones(2))
    full = Directions.from_tensor(torch.randn(3, 16), layers=[0, 1, 5])
    assert resolve_directions(full, stats).layers == (0, 1)


def test_resolve_directions_bad_input(planted):
    _, stats = planted
    with pytest.raises(ConfigError, match="valid methods: mean_diff, pca, probe, whitened"):
        resolve_directions("meandiff", stats)
    with pytest.raises(
        ShapeMismatchError, match=r"n_layers_collected=2, d_model=16.*got \(2, 15\)"
    ):
        resolve_directions(torch.ones(2, 15), stats)
    with pytest.raises(ShapeMismatchError, match="shape"):
        resolve_directions(torch.ones(16), stats)
    with pytest.raises(ConfigError, match=r"zero norm at layer\(s\) \[1\]"):
        resolve_directions(torch.stack([torch.ones(16), torch.zeros(16)]), stats)
    with pytest.raises(SiteError, match="no direction for layer 1"):
        resolve_directions(Directions.from_tensor(torch.ones(1, 16), layers=[0]), stats)
    with pytest.raises(ShapeMismatchError, match="d_model=8"):
        resolve_directions(Directions.from_tensor(torch.ones(2, 8), layers=[0, 1]), stats)
    # another type: ConfigError (TypeCheckError first under the jaxtyping/beartype plugin)
    with pytest.raises((ConfigError, TypeCheckError), match="directions from int|parameter 'spec'"):
        resolve_directions(3, stats)


# ---------------------------------------------------------------------- rank-k subspaces
@pytest.fixture(scope="module")
def planted_plane():
    """base − aligned varies over prompts inside a planted 2-plane (plus a shift), d = 16."""
    from unit.conftest import build_stats

    g = torch.Generator().manual_seed(5)
    n, d = 60, 16
    plane = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))[0].T  # [2, d]
    aligned = torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    coef = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 2.0], dtype=torch.float64
    )
    shift = (coef + torch.tensor([2.0, 0.5], dtype=torch.float64)) @ plane
    base = aligned + shift[:, None] + 0.05 * torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    return plane, build_stats({"base": base, "aligned": aligned})


def test_pca_subspace_recovers_a_planted_plane_with_stability_by_rank(planted_plane):
    from revlens.directions.subspace import principal_cosines

    plane, stats = planted_plane
    est = PairedPCA(n_components=4, n_bootstrap=20).fit(stats)
    d = est.direction_
    assert d.rank == 4 and d.basis.shape == (1, 4, 16)
    b = d.subspace(0).double()
    assert torch.allclose(b @ b.T, torch.eye(4, dtype=torch.float64), atol=1e-5)
    assert float(principal_cosines(b[:2], plane).min()) > 0.999
    by_rank = est.stability_by_rank_[0]
    assert by_rank[1] > 0.99 > by_rank[3]  # planted axes are stable, the noise axes are not
    assert est.stability_[0] == by_rank[-1] and d.meta["stability_by_rank"][0] == pytest.approx(
        list(by_rank)
    )
    # every row points toward base; the offsets are recorded
    diff = stats.base_mean()[0] - stats.mean("aligned")[0]
    assert (b @ diff >= 0).all()
    assert d.meta["base_offset"][0] == pytest.approx((b @ diff / diff.norm()).tolist(), abs=1e-5)
    # nested: the first j rows are the j-component fit; truncate keeps the per-rank stability
    two = PairedPCA(n_components=2, n_bootstrap=0).fit(stats).direction_
    assert torch.allclose(d.truncate(2).basis, two.basis, atol=1e-5)
    assert d.truncate(2).meta["stability"] == [pytest.approx(by_rank[1])]
    one = PairedPCA(n_bootstrap=0).fit(stats).direction_
    assert torch.allclose(d.vectors, one.vectors, atol=1e-6)
    assert resolve_directions("pca", stats, n_components=3).rank == 3
    assert paired_pca(stats, 2).rank == 2


def test_other_estimators_keep_their_first_row(planted_plane):
    _, stats = planted_plane
    for cls in (LinearProbe, Whitened):
        one = cls(n_bootstrap=0).fit(stats).direction_
        three = cls(n_components=3, n_bootstrap=0).fit(stats).direction_
        assert three.rank == 3
        assert torch.allclose(three.vectors, one.vectors, atol=1e-5), (
            cls
        )  # k = 1 is today's direction
        b = three.subspace(0).double()
        assert torch.allclose(b @ b.T, torch.eye(3, dtype=torch.float64), atol=1e-5)


def test_whitened_pca_prefers_differences_that_are_large_against_the_spread(make_stats):
    """Paired differences vary more along e1 than along e2, but prompts spread 20× more along e1:
    the whitened PCA takes e2 (after the LDA axis e0), plain PCA takes e1."""
    from revlens.directions.subspace import principal_cosines

    g = torch.Generator().manual_seed(8)
    n, d = 400, 6
    e = torch.eye(d, dtype=torch.float64)
    aligned = torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    aligned[..., 1] *= 20.0  # prompt content: shared by base and aligned (paired)
    a, b = torch.randn(2, n, 1, 1, generator=g, dtype=torch.float64)
    base = (
        aligned
        + 5 * e[0]
        + 4 * a * e[1]
        + 3 * b * e[2]
        + 0.01 * torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    )
    stats = make_stats({"base": base, "aligned": aligned})
    w = Whitened(n_components=2, n_bootstrap=0).fit(stats).direction_.subspace(0).double()
    p = PairedPCA(n_components=2, n_bootstrap=0).fit(stats).direction_.subspace(0).double()
    assert float(principal_cosines(w, e[[0, 2]]).min()) > 0.95
    assert float(principal_cosines(p, e[[0, 1]]).min()) > 0.95


def test_probe_subspace_by_null_space_projection(make_stats):
    """INLP: the classes separate along u and (hidden behind a high-variance axis) along e1."""
    from revlens.directions.subspace import principal_cosines

    g = torch.Generator().manual_seed(4)
    n, d = 300, 8
    noise = torch.randn(2, n, 1, d, generator=g, dtype=torch.float64)
    noise[..., 1] *= 5.0
    e = torch.eye(d, dtype=torch.float64)
    stats = make_stats({"base": noise[0] + e[0] + 3 * e[1], "aligned": noise[1]})
    est = LinearProbe(n_components=3, n_bootstrap=3).fit(stats)
    b = est.direction_.subspace(0).double()
    assert float(b[0] @ e[0]) > 0.9  # the first probe all but ignores the noisy axis
    assert float(principal_cosines(e[:2], b).min()) > 0.9  # the refits find it once e0 is gone
    assert float(principal_cosines(e[1:2], b[:1])[0]) < 0.3  # ... which the first row alone misses
    assert est.stability_by_rank_.shape == (1, 3) and np.isfinite(est.stability_by_rank_).all()


def test_mean_diff_subspace_needs_several_bases(make_stats, unit_vec):
    g = torch.Generator().manual_seed(2)
    d = 12
    u, w = torch.eye(d, dtype=torch.float64)[0], torch.eye(d, dtype=torch.float64)[1]
    aligned = torch.randn(20, 1, d, generator=g, dtype=torch.float64)
    two = make_stats(
        {"base_a": aligned + 2 * u, "base_b": aligned + 2 * w + 0.1 * u, "aligned": aligned}
    )
    est = MeanDiff(n_components=2, n_bootstrap=10).fit(two)
    b = est.direction_.subspace(0).double()
    assert torch.allclose(
        b[0], unit_vec(2 * u + 2 * w + 0.1 * u), atol=1e-6
    )  # row 1: today's v_rev
    plane = torch.stack([u, w])
    assert torch.allclose(
        torch.linalg.svdvals(b @ plane.T), torch.ones(2, dtype=torch.float64), atol=1e-6
    )
    assert (est.stability_ > 0.9).all()
    with pytest.raises(ConfigError, match=r"n_components=3 spans only 2 direction\(s\) at layer 0"):
        MeanDiff(n_components=3).fit(two)
    one = make_stats({"base": aligned + 2 * u, "aligned": aligned})
    with pytest.raises(ConfigError, match="one direction per base checkpoint"):
        MeanDiff(n_components=2).fit(one)


def test_pca_each_base_takes_every_pretraining_witness(make_stats):
    g = torch.Generator().manual_seed(6)
    d = 10
    u, w = torch.eye(d, dtype=torch.float64)[0], torch.eye(d, dtype=torch.float64)[1]
    aligned = torch.randn(30, 1, d, generator=g, dtype=torch.float64)
    noise = lambda: 0.01 * torch.randn(30, 1, d, generator=g, dtype=torch.float64)  # noqa: E731
    stats = make_stats(
        {
            "base_a": aligned + 2 * u + noise(),
            "base_b": aligned + 2 * w + noise(),
            "aligned": aligned,
        }
    )
    plane = torch.stack([u, w])
    each = PairedPCA(n_components=2, bases="each", n_bootstrap=5).fit(stats)
    mean = PairedPCA(n_components=2, n_bootstrap=0).fit(stats).direction_
    assert float(torch.linalg.svdvals(each.direction_.subspace(0).double() @ plane.T).min()) > 0.999
    assert (
        float(torch.linalg.svdvals(mean.subspace(0).double() @ plane.T).min()) < 0.5
    )  # the mean hides w − u
    assert (each.stability_ > 0.99).all()
    with pytest.raises(ConfigError, match="bases must be"):
        PairedPCA(bases="all").fit(stats)


def test_subspace_bad_input(planted_plane, make_stats):
    _, stats = planted_plane
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="n_components"):
            PairedPCA(n_components=bad).fit(stats)
    small = make_stats(
        {
            "base": torch.randn(3, 1, 8, dtype=torch.float64) + 1,
            "aligned": torch.randn(3, 1, 8, dtype=torch.float64),
        }
    )
    with pytest.raises(ConfigError, match="fewer independent samples"):
        PairedPCA(n_components=5, n_bootstrap=0).fit(small)
    with pytest.raises(ConfigError, match="needs per-prompt activations"):
        Whitened(shrinkage=0.1, n_components=2).fit(
            make_stats(
                {
                    "base": torch.randn(5, 1, 8, dtype=torch.float64) + 1,
                    "aligned": torch.randn(5, 1, 8, dtype=torch.float64),
                },
                keep=False,
            )
        )
