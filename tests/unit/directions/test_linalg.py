"""top_axis: the iterative first axis (used for large layers) equals the SVD's."""

import pytest
import torch

from revlens.directions._linalg import top_axis


@pytest.mark.parametrize("shift", [3.0, 0.0])  # a dominant shared shift, and noise only (small gap)
def test_iterative_first_axis_matches_the_svd(shift):
    g = torch.Generator().manual_seed(0)
    n, d = 600, 96
    scales = torch.linspace(2.0, 0.5, d, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    x += shift * torch.eye(d, dtype=torch.float64)[5]
    exact = torch.linalg.svd(x, full_matrices=False)[2][0]
    fast = top_axis(x, exact_below=0)  # force the subspace iteration
    assert abs(float(fast @ exact)) > 1 - 1e-9
    assert torch.equal(top_axis(x), exact)  # small inputs: the SVD itself
