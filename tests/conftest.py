"""Shared fixtures: tiny real GPT-2 histories on disk (never a mocked model)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tiny

# One intra-op thread per test process: the suite runs in 2 xdist workers on 2 cores, and
# oversubscribed torch threads were ~10× slower on a loaded machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """base, aligned and two runs of three steps, as save_pretrained dirs."""
    return tiny.write_history(tmp_path_factory.mktemp("tiny-history"))


@pytest.fixture(scope="session")
def tiny_history(tiny_dirs: dict):
    import revlens

    return revlens.History.from_dirs(
        base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs=tiny_dirs["runs"]
    )


@pytest.fixture(scope="session")
def tiny_lm(tiny_history):
    """One booted bridge on the tiny architecture (aligned weights loaded)."""
    return tiny_history.boot()


@pytest.fixture()
def prompts() -> list[str]:
    return list(tiny.PROMPTS)


def hook_count(module) -> int:
    """Forward (pre-)hooks registered anywhere in ``module``.

    transformers (output capturing) and TransformerLens (``BlockBridge._maybe_wire_capture_hooks``)
    install persistent internal hooks once, lazily, on the first forward that asks for caches;
    they are idempotent and not ours, so they are not counted.
    """
    internal = ("output_capturing_hook", "_maybe_wire_capture_hooks")

    def ours(hooks) -> int:
        return sum(
            not any(k in getattr(h, "__qualname__", "") for k in internal) for h in hooks.values()
        )

    return sum(ours(m._forward_hooks) + ours(m._forward_pre_hooks) for m in module.modules())


@pytest.fixture(autouse=True)
def _no_leaked_hooks(request):
    """Every test that uses the shared bridge must leave no hook behind (also on errors)."""
    if "tiny_lm" not in request.fixturenames:
        yield
        return
    lm = request.getfixturevalue("tiny_lm")
    before = hook_count(lm.bridge)
    yield
    after = hook_count(lm.bridge)
    assert after == before, (
        f"{request.node.nodeid} leaked {after - before} hook(s) on the shared bridge"
    )


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """torch's global generator seeded per test (and restored after): tests that train with
    dropout or draw from it see the same numbers whatever ran before them in their worker, so a
    test fails on every machine and in every order, or on none (issue 32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
