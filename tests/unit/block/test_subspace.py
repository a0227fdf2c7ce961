"""Blocking rank-k subspaces on the tiny GPT-2: every method takes a basis, one-sided blocking
stops only motion toward base, per-prompt rows hold each prompt, confine keeps the drift inside."""

import copy

import pytest
import torch
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from revlens.block import ReversionBlocker
from revlens.block.constraints import hook_edit
from revlens.directions import Directions
from revlens.errors import ConfigError

TOK = tiny.tiny_tokenizer()


def plane() -> Directions:
    """Per layer: the pilot reverting drift, then the drift of a pilot control fine-tune (data
    seed 100), orthonormalised. A control fine-tune with data seed 3 moves along both rows."""
    v = tinyrev.direction()
    ctl = tinyrev.train("control", seed=100, steps=10)
    w = tinyrev.means(ctl) - tinyrev.means(tinyrev.pair()[1])
    return Directions.from_tensor(
        torch.stack([v.vectors.double(), w], dim=1), tinyrev.LAYERS, method="plane"
    )


@pytest.fixture(scope="module")
def basis():
    return plane()


def blocker(directions, **kw) -> ReversionBlocker:
    return ReversionBlocker(directions, tinyrev.probes(), tinyrev.pair()[1], tokenizer=TOK, **kw)


def run(directions, kind="revert", steps=10, seed=1, **kw):
    b = blocker(directions, **kw)
    model = tinyrev.train(kind, steps=steps, seed=seed, setup=lambda m, o: b.attach(m, o))
    b.detach()
    return model, b


def coords(directions, model) -> torch.Tensor:
    return blocker(directions).subspace_projection(model)  # [layer, k]


def test_update_blocks_every_row_of_the_subspace(basis):
    free = coords(basis, tinyrev.train("control", seed=3, steps=10)).abs()
    assert (free > 0.3).all()  # this run moves along both rows at both layers
    model, b = run(basis, "control", seed=3, refresh_every=1)
    assert coords(basis, model).abs().max() < 0.05 * free.min()
    assert b.active_["rows"].eq(4).all()  # 2 rows x 2 layers
    # rank=1 keeps only the first row: the second moves freely again
    model1, _ = run(basis, "control", seed=3, refresh_every=1, rank=1)
    c1 = coords(basis, model1).abs()
    assert c1[:, 0].max() < 0.05 * free.min() and (c1[:, 1] > 0.3 * free[:, 1]).all()


@pytest.mark.parametrize("method", ["gradient", "penalty", "hook"])
def test_other_methods_take_a_basis(basis, method):
    kw = {"strength": 0.05} if method == "penalty" else {}
    model, _ = run(basis, "control", seed=3, method=method, refresh_every=1, **kw)
    free = coords(basis, tinyrev.train("control", seed=3, steps=10)).abs()
    got = coords(basis, model).abs()
    assert torch.isfinite(got).all()
    if method == "penalty":
        assert (got < 0.7 * free).all()  # the penalty pulls every row in


def test_hook_removes_the_subspace_coordinates():
    b = torch.linalg.qr(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))[0].T
    mu, h = torch.randn(8), torch.randn(3, 5, 8)
    edit = hook_edit(b, mu, 1.0, False, lambda: True)
    assert (edit(h) - mu).matmul(b.T).abs().max() < 1e-5
    half = hook_edit(b, mu, 0.5, False, lambda: True)
    torch.testing.assert_close((half(h) - mu) @ b.T, 0.5 * (h - mu) @ b.T)
    one = hook_edit(b, mu, 1.0, True, lambda: True)
    c, out = (h - mu) @ b.T, (one(h) - mu) @ b.T
    torch.testing.assert_close(
        out, torch.where(c > 0, torch.zeros_like(c), c)
    )  # base-ward part only
    assert (
        hook_edit(b, mu, 1.0, False, lambda: False)(h) is None
    )  # measurements see the plain model


def test_one_sided_stops_motion_toward_base_only():
    v = tinyrev.direction()
    free_model = tinyrev.train("revert", steps=10)
    free = blocker(v).projection(free_model)
    assert (free > 0.3).all()  # reversion is motion along +v
    toward, b = run(v, refresh_every=1, constraint="one_sided")
    s = blocker(v).projection(toward)
    assert float(s.max()) < 0.05 * float(free.min())  # held at (or below) 0
    assert b.active_["active"].sum() > 0
    # along -v the same run moves *away* from base: the one-sided constraint never binds and the
    # blocked model is the unblocked one, bit for bit; two-sided blocking holds it at 0 instead
    neg = Directions.from_tensor(-v.vectors, v.layers)
    away, b2 = run(neg, refresh_every=1, constraint="one_sided")
    assert b2.active_["active"].eq(0).all()
    assert all(torch.equal(p, q) for p, q in zip(away.parameters(), free_model.parameters()))
    held, _ = run(neg, refresh_every=1)
    assert blocker(neg).projection(held).abs().max() < 0.05 * float(free.min())


def test_one_sided_penalty_ignores_rows_below_zero():
    v = tinyrev.direction()
    neg = Directions.from_tensor(-v.vectors, v.layers)
    model = copy.deepcopy(tinyrev.train("revert", steps=5)).train()
    assert (
        float(blocker(neg, method="penalty", constraint="one_sided").penalty(model).detach()) == 0.0
    )
    assert float(blocker(v, method="penalty", constraint="one_sided").penalty(model).detach()) > 0.0


def test_per_prompt_rows_hold_every_prompt():
    v = tinyrev.direction()
    aligned = tinyrev.pair()[1]
    enc = tinyrev.probes().tokenize(TOK)

    def per_prompt(model):
        from revlens.sites import access

        with torch.no_grad():
            acc, ref = access(model), access(aligned)
            h = torch.stack(
                acc.read(enc.tokens, enc.weights, acc.sites(tinyrev.LAYERS)), 1
            ).double()
            a = torch.stack(
                ref.read(enc.tokens, enc.weights, ref.sites(tinyrev.LAYERS)), 1
            ).double()
        return torch.einsum("pld,ld->pl", h - a, v.vectors.double())

    mean_model, _ = run(v, refresh_every=1, probe_batch_size=None)
    each_model, b = run(v, refresh_every=1, probe_batch_size=None, per_prompt=True)
    assert b.active_["rows"].eq(len(enc) * 2).all()  # one row per (prompt, layer)
    spread_mean = per_prompt(mean_model).abs().max()
    assert per_prompt(mean_model).mean(0).abs().max() < 0.05  # the mean is held either way...
    assert per_prompt(each_model).abs().max() < 0.2 * spread_mean  # ...each prompt only per prompt


def test_confine_keeps_the_drift_inside_the_subspace(basis):
    def outside(model):
        b = blocker(basis).prepare(model)
        d = b.objective_._full_means(256) - b.inputs_.ref_mean
        inside = torch.einsum(
            "lkd,lk->ld", basis.basis.double(), torch.einsum("ld,lkd->lk", d, basis.basis.double())
        )
        return (d - inside).norm(dim=1)

    free = outside(tinyrev.train("revert", steps=6))
    model, b = run(basis, steps=6, refresh_every=1, constraint="confine")
    assert b.active_["rows"].eq(2 * (32 - 2)).all()  # the complement: d - k rows per layer
    assert (outside(model) < 0.1 * free).all()
    # the confine penalty is strength · Σ_l ‖(I − BᵀB) d_l‖² (the AsFT-like regulariser)
    drifted = tinyrev.train("revert", steps=6)
    pen = blocker(
        basis, method="penalty", strength=0.5, constraint="confine", probe_batch_size=None
    ).penalty(drifted)
    assert float(pen.detach()) == pytest.approx(
        0.5 * float((outside(drifted) ** 2).sum()), rel=1e-4
    )


def test_subspace_bad_input(basis):
    model = copy.deepcopy(tinyrev.pair()[1])
    with pytest.raises(ConfigError, match="rank=3 but the directions have rank 2"):
        blocker(basis, rank=3).prepare(model)
    with pytest.raises(ConfigError, match="cannot confine"):
        blocker(basis, method="hook", constraint="confine")
    with pytest.raises(ConfigError, match="per_prompt applies to"):
        blocker(basis, method="hook", per_prompt=True)
    with pytest.raises(ConfigError, match="per-prompt reference"):
        ReversionBlocker(
            basis,
            tinyrev.probes(),
            torch.zeros(2, 32),
            tokenizer=TOK,
            per_prompt=True,
            probe_batch_size=None,
        ).prepare(model)
    with pytest.raises(ConfigError, match="constraint"):
        blocker(basis, constraint="below")
