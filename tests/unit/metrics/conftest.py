"""Fixtures of the metric tests: tiny Llama / GPT-2 bridges with the families' chat template."""

import pytest

import families
from revlens.model import LensModel


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def chat_lm(request):
    """A booted tiny bridge of a RoPE family (llama) and an absolute-position one (gpt2)."""
    return LensModel.boot(families.checkpoint_dir(request.param))


@pytest.fixture(scope="module")
def llama_lm():
    return LensModel.boot(families.checkpoint_dir("llama"))
