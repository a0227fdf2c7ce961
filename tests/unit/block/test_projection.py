"""The update-projection algebra on random per-parameter blocks."""

import torch

from revlens.block.projection import apply_correction, dot, gram, projection_coefficients


def _blocks(k: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (2, 2, 2)]
    grads = [torch.randn(k, *s, generator=g) for s in shapes]
    delta = [torch.randn(*s, generator=g) for s in shapes]
    return grads, delta


def test_projection_with_restore_cancels_s_to_first_order():
    grads, delta = _blocks(3, 0)
    s = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    coef = projection_coefficients(gram(grads), dot(grads, delta) + s, ridge=0.0)
    apply_correction(delta, grads, coef)
    torch.testing.assert_close(dot(grads, delta), -s, atol=1e-5, rtol=0)


def test_projection_without_restore_is_orthogonal_and_minimal():
    grads, delta = _blocks(2, 1)
    before = [d.clone() for d in delta]
    coef = projection_coefficients(gram(grads), dot(grads, delta), ridge=0.0)
    apply_correction(delta, grads, coef)
    assert dot(grads, delta).abs().max() < 1e-5
    removed = [b - d for b, d in zip(before, delta)]
    # what was removed lies in span{a_l}: the remaining step is orthogonal to it
    assert abs(float(sum((r * d).sum() for r, d in zip(removed, delta)))) < 1e-4


def test_parallel_rows_are_handled():
    grads, delta = _blocks(1, 2)
    dup = [torch.cat([g, 2 * g]) for g in grads]  # a_1 = 2 a_0: rank 1
    coef = projection_coefficients(gram(dup), dot(dup, delta))
    assert torch.isfinite(coef).all()
    apply_correction(delta, dup, coef)
    assert dot(dup, delta).abs().max() < 1e-4


def test_zero_gradients_give_zero_coefficients():
    g = torch.zeros(2, 2, dtype=torch.float64)
    assert torch.equal(
        projection_coefficients(g, torch.ones(2, dtype=torch.float64)),
        torch.zeros(2, dtype=torch.float64),
    )


def test_one_sided_projection_is_the_exact_closest_feasible_step():
    """KKT of min ‖Δ' − Δ‖² s.t. s + AΔ' ≤ 0: feasible, λ ≥ 0, complementary, and rows that hold
    without help are untouched (λ = 0)."""
    from revlens.block.projection import one_sided_coefficients

    grads, delta = _blocks(6, 3)
    s = torch.tensor([0.5, -3.0, 0.2, -0.1, 1.0, -5.0], dtype=torch.float64)
    before = dot(grads, delta)
    lam = one_sided_coefficients(gram(grads), before + s, ridge=1e-12)
    assert (lam >= 0).all()
    apply_correction(delta, grads, lam)
    after = dot(grads, delta) + s
    assert float(after.max()) < 1e-4  # feasible
    assert float((lam * after).abs().max()) < 1e-4  # complementary: a row that binds ends at 0
    assert ((before + s <= 0) <= (lam <= 1e-9) | (after.abs() < 1e-4)).all()
    # nothing to do when every row already holds
    assert one_sided_coefficients(gram(grads), -torch.ones(6, dtype=torch.float64)).abs().max() == 0
