"""True projectors: idempotent, self-adjoint, complement orthogonal; LoRA factor projections equal
the dense projection of B·A; SafeLoRA's published V Vᵀ/‖V‖ is not idempotent."""

import pytest
import torch

from revlens.errors import ConfigError
from revlens.weights import safelora_projection, subspace_projector


@pytest.fixture(scope="module")
def mats():
    g = torch.Generator().manual_seed(0)
    return (
        g,
        torch.randn(12, 9, generator=g, dtype=torch.float64),
        torch.randn(12, 9, generator=g, dtype=torch.float64),
    )


def _inner(x, y):
    return float((x * y).sum())


@pytest.mark.parametrize("side", ["left", "right", "both", "direction"])
@pytest.mark.parametrize("random", [False, True])
def test_projectors_are_idempotent_and_self_adjoint(mats, side, random):
    g, v, x = mats
    p = subspace_projector(v, 3, side, random=random, generator=torch.Generator().manual_seed(1))
    y = torch.randn(12, 9, generator=g, dtype=torch.float64)
    torch.testing.assert_close(p(p(x)), p(x), rtol=0, atol=1e-12)
    assert _inner(p(x), y) == pytest.approx(_inner(x, p(y)), abs=1e-10)
    assert abs(_inner(p.complement(x), p(x))) < 1e-10
    rank = {"left": 3 * 9, "right": 3 * 12, "both": 9, "direction": 1}[side]
    # trace of P over the 108-dim matrix space = the subspace's dimension
    basis = torch.eye(108, dtype=torch.float64).reshape(108, 12, 9)
    assert sum(_inner(p(e), e) for e in basis) == pytest.approx(rank, abs=1e-9)


def test_projector_onto_v_keeps_vs_own_top_k(mats):
    _, v, _ = mats
    u, s, vh = torch.linalg.svd(v, full_matrices=False)
    vk = u[:, :3] * s[:3] @ vh[:3]
    for side in ("left", "right", "both"):
        torch.testing.assert_close(subspace_projector(v, 3, side)(v), vk, rtol=0, atol=1e-10)
    d = subspace_projector(v, 3, "direction")
    torch.testing.assert_close(d(v), v, rtol=0, atol=1e-12)
    assert abs(_inner(d.complement(torch.randn_like(v)), v)) < 1e-10


def test_safelora_projection_is_not_idempotent(mats):
    _, v, x = mats
    c = safelora_projection(v)
    assert torch.linalg.matrix_norm(c @ c - c) > 0.1 * torch.linalg.matrix_norm(c)
    p = subspace_projector(v, 8, "left")  # a true projector on the same column space (rank 9 < 12)
    assert torch.linalg.matrix_norm(p(p(x)) - p(x)) < 1e-12


@pytest.mark.parametrize(
    ("side", "mode"), [("left", "off"), ("right", "off"), ("left", "onto"), ("both", "onto")]
)
def test_lora_factor_projection_equals_dense_projection(mats, side, mode):
    g, v, _ = mats
    b = torch.randn(12, 4, generator=g, dtype=torch.float64)
    a = torch.randn(4, 9, generator=g, dtype=torch.float64)
    p = subspace_projector(v, 3, side)
    nb, na = p.project_factors(b, a, mode)
    want = p(b @ a) if mode == "onto" else p.complement(b @ a)
    torch.testing.assert_close(nb @ na, want, rtol=0, atol=1e-10)


def test_unrepresentable_and_bad_arguments(mats):
    _, v, _ = mats
    b, a = torch.zeros(12, 2, dtype=torch.float64), torch.zeros(2, 9, dtype=torch.float64)
    with pytest.raises(ConfigError, match="LoRA"):
        subspace_projector(v, 3, "both").project_factors(b, a, "off")
    with pytest.raises(ConfigError, match="LoRA"):
        subspace_projector(v, 3, "direction").project_factors(b, a, "off")
    with pytest.raises(ConfigError, match="side"):
        subspace_projector(v, 3, "sideways")
    with pytest.raises(ConfigError, match="k=9"):
        subspace_projector(v, 9, "left")
    with pytest.raises(ConfigError, match="V = 0"):
        subspace_projector(torch.zeros(4, 4, dtype=torch.float64), 2, "left")
