"""Fixtures of the weight-space tests: the planted history of :mod:`unit.weights.planted`."""

import pytest
from unit.weights.planted import write_planted


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_planted(tmp_path_factory.mktemp("planted-weights"))


@pytest.fixture(scope="session")
def planted_history(planted: dict):
    import revlens

    return revlens.History.from_dirs(
        base=planted["base"],
        aligned=planted["aligned"],
        runs=planted["runs"],
        controls=planted["controls"],
    )


@pytest.fixture(scope="session")
def planted_report(planted_history):
    from revlens.weights import weight_reversion

    return weight_reversion(planted_history, ks=(1, 4), n_random=64, progress=False)
