"""Fixtures of the causal tests: one booted tiny bridge of their own, a batch and directions."""

import pytest
import torch

import revlens
from revlens.collect import collect


@pytest.fixture(scope="module")
def lm(tiny_history):
    """A tiny GPT-2 bridge with the aligned weights (not shared with other test folders)."""
    return tiny_history.boot()


@pytest.fixture(scope="module")
def tokens(lm, prompts_module):
    probes = revlens.Probes(prompts_module).tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    return next(probes.batches(len(probes)))


@pytest.fixture(scope="module")
def prompts_module():
    import tiny

    return list(tiny.PROMPTS)


@pytest.fixture(scope="module")
def ref_stats(tiny_history, lm, prompts_module):
    """Base + aligned statistics (second moments of aligned) at every layer."""
    return collect(
        tiny_history.restricted(), prompts_module, model=lm, n_bootstrap=0, progress=False
    )


@pytest.fixture()
def unit_vectors(lm):
    g = torch.Generator().manual_seed(3)
    v = torch.randn(lm.n_layers + 1, lm.d_model, generator=g)
    return v / v.norm(dim=1, keepdim=True)
