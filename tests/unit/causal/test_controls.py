"""Random control directions: unit norm, seeded, covariance-matched where the variance is."""

import pytest
import torch
from jaxtyping import TypeCheckError

from revlens.causal import random_directions
from revlens.errors import ConfigError, ShapeMismatchError


def test_iso_controls_are_unit_and_reproducible():
    a = random_directions(16, 32, kind="iso", generator=torch.Generator().manual_seed(5))
    b = random_directions(16, 32, kind="iso", generator=torch.Generator().manual_seed(5))
    c = random_directions(16, 32, kind="iso", generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.norm(dim=1), torch.ones(16), atol=1e-6)


def test_cov_controls_follow_the_covariance():
    var = torch.ones(32) * 1e-4
    var[7] = 100.0
    cov = torch.diag(var)
    x = random_directions(
        200, 32, kind="cov", covariance=cov, generator=torch.Generator().manual_seed(0)
    )
    iso = random_directions(200, 32, kind="iso", generator=torch.Generator().manual_seed(0))
    assert float(x[:, 7].abs().mean()) > 0.99
    assert float(iso[:, 7].abs().mean()) < 0.3


def test_bad_control_arguments():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="controls must be an int >= 1"):
        random_directions(0, 4, generator=gen)
    with pytest.raises(ConfigError, match="covariance"):
        random_directions(2, 4, kind="cov", generator=gen)
    with pytest.raises(ShapeMismatchError, match=r"\[4, 4\]"):
        random_directions(2, 4, kind="cov", covariance=torch.eye(3), generator=gen)
    # under the jaxtyping/beartype test plugin the Literal annotation answers first; both name it
    with pytest.raises((ConfigError, TypeCheckError), match="sphere"):
        random_directions(2, 4, kind="sphere", generator=gen)
