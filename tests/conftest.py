"""Shared fixtures: tiny real GPT-2 histories on disk (never a mocked model)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """base, aligned and two runs of three steps, as save_pretrained dirs."""
    return tiny.write_history(tmp_path_factory.mktemp("tiny-history"))


@pytest.fixture(scope="session")
def tiny_history(tiny_dirs: dict):
    import revlens

    return revlens.History.from_dirs(base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs=tiny_dirs["runs"])


@pytest.fixture(scope="session")
def tiny_lm(tiny_history):
    """One booted bridge on the tiny architecture (aligned weights loaded)."""
    return tiny_history.boot()


@pytest.fixture()
def prompts() -> list[str]:
    return list(tiny.PROMPTS)


def hook_count(module) -> int:
    """Forward (pre-)hooks registered anywhere in ``module``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
