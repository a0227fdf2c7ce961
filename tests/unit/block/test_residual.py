"""ResidualReader: HF forward hooks agree with the bridge's hook points; hooks never leak."""

import copy

import pytest
import torch
from transformers import GPT2LMHeadModel
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from conftest import hook_count
from revlens.block.residual import ResidualReader
from revlens.collect import collect_checkpoint
from revlens.errors import SiteError
from revlens.hooks import resolve_sites
from revlens.model import LensModel
from revlens.probes import Probes


def test_hf_hooks_match_the_bridge_sites(tiny_dirs):
    """Layer semantics identical to revlens.hooks: 0 = embeddings, l = after l blocks."""
    tiny_lm = LensModel.boot(tiny_dirs["aligned"])  # our own bridge (not the shared one)
    tok = Probes(list(tiny.PROMPTS)).tokenize(tiny_lm.tokenizer)
    ref = collect_checkpoint(
        tiny_lm, None, tok, resolve_sites(tiny_lm.bridge, "all"), n_bootstrap=0, keep=True
    )
    hf = GPT2LMHeadModel.from_pretrained(tiny_dirs["aligned"]).eval()  # the weights tiny_lm holds
    reader = ResidualReader(hf, "all")
    with torch.no_grad():
        got = reader.per_prompt(tok.tokens, tok.weights)
    torch.testing.assert_close(got, ref.activations.float(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the bridge path of the same reader
        via_bridge = ResidualReader(tiny_lm, "all").per_prompt(tok.tokens, tok.weights)
    torch.testing.assert_close(via_bridge, got, atol=1e-5, rtol=1e-5)


def test_reader_keeps_train_mode_and_removes_hooks():
    model = copy.deepcopy(tiny.tiny_model(0)).train()
    reader = ResidualReader(model, [0, 2])
    tok = Probes(["w1 w2", "w3"]).tokenize(tiny.tiny_tokenizer())
    out = reader.per_prompt(tok.tokens, tok.weights)
    assert out.shape == (2, 2, 32) and out.requires_grad
    assert model.training and hook_count(model) == 0


def test_editing_applies_in_train_mode_only_and_is_removed_on_error():
    model = copy.deepcopy(tiny.tiny_model(0))
    reader = ResidualReader(model, [1])
    ids = torch.tensor([[2, 3, 4]])
    clean = model(ids).logits
    with pytest.raises(RuntimeError, match="boom"), reader.editing(lambda layer, h: h * 0.0):
        model.eval()
        torch.testing.assert_close(model(ids).logits, clean)  # eval: edit off
        model.train()
        assert not torch.allclose(model(ids).logits, clean)  # train: edit on
        raise RuntimeError("boom")
    assert hook_count(model) == 0


def test_unknown_layer_and_model_are_rejected():
    with pytest.raises(SiteError, match="valid layers"):
        ResidualReader(tiny.tiny_model(0), [5])
    with pytest.raises(SiteError, match="expected a Hugging Face"):
        ResidualReader(torch.nn.Linear(2, 2), [1])
