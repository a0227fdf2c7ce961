"""Fixtures of the defense tests (helpers in :mod:`unit.defenses.kit`)."""

import pytest
import torch

import tiny


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test (the box is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("defenses")
    base = tiny.tiny_model(0)
    aligned = tiny.perturbed(base, 0.05, 1)
    return {"base": tiny.save(base, root / "base"), "aligned": tiny.save(aligned, root / "aligned")}
