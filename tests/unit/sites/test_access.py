"""SiteAccess: plain HF hooks agree with the bridge's hook points at every site; hooks never leak."""

import copy

import pytest
import torch
from transformers import GPT2LMHeadModel
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from conftest import hook_count
from revlens.collect import collect_checkpoint
from revlens.errors import SiteError
from revlens.model import LensModel
from revlens.probes import Probes
from revlens.sites import SITE_KINDS, access, resolve_sites


@pytest.mark.parametrize("kind", SITE_KINDS)
def test_hf_hooks_match_the_bridge_sites(tiny_dirs, kind):
    """Layer semantics identical on both paths (resid_post: 0 = embeddings, l = after l blocks)."""
    tiny_lm = LensModel.boot(tiny_dirs["aligned"])  # our own bridge (not the shared one)
    tok = Probes(list(tiny.PROMPTS)).tokenize(tiny_lm.tokenizer)
    ref = collect_checkpoint(
        tiny_lm, None, tok, resolve_sites(tiny_lm.bridge, "all", kind), n_bootstrap=0, keep=True
    )
    hf = GPT2LMHeadModel.from_pretrained(tiny_dirs["aligned"]).eval()  # the weights tiny_lm holds
    acc = access(hf)
    with torch.no_grad():
        got = torch.stack(acc.read(tok.tokens, tok.weights, acc.sites("all", kind)), dim=1)
    torch.testing.assert_close(got, ref.activations.float(), atol=1e-5, rtol=1e-5)


def test_read_keeps_train_mode_and_removes_hooks():
    model = copy.deepcopy(tiny.tiny_model(0)).train()
    acc = access(model)
    tok = Probes(["w1 w2", "w3"]).tokenize(tiny.tiny_tokenizer())
    out = torch.stack(acc.read(tok.tokens, tok.weights, acc.sites([0, 2])), dim=1)
    assert out.shape == (2, 2, 32) and out.requires_grad
    assert model.training and hook_count(model) == 0


def test_hooks_are_removed_on_error():
    model = copy.deepcopy(tiny.tiny_model(0))
    acc = access(model)
    ids = torch.tensor([[2, 3, 4]])
    clean = model(ids).logits
    with (
        pytest.raises(RuntimeError, match="boom"),
        acc.hooked([(acc.sites([1])[0], lambda h: h * 0.0)]),
    ):
        assert not torch.allclose(model(ids).logits, clean)
        raise RuntimeError("boom")
    assert hook_count(model) == 0
    torch.testing.assert_close(model(ids).logits, clean)


def test_a_failed_read_leaves_no_hook(tiny_lm):
    """A bad layer is refused before any hook is registered (revlens 0.1 left one behind)."""
    acc = access(tiny_lm)
    with pytest.raises(SiteError, match="valid layers"):
        acc.read(torch.tensor([[2, 3]]), torch.tensor([[0.0, 1.0]]), acc.sites([1, 99]))


def test_unknown_layer_and_model_are_rejected():
    with pytest.raises(SiteError, match="valid layers"):
        access(tiny.tiny_model(0)).sites([5])
    with pytest.raises(SiteError, match="expected a Hugging Face"):
        access(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("path", ["bridge", "hf"])
def test_a_resid_mid_edit_changes_the_stream(tiny_dirs, path):
    """resid_mid is the stream between attention and MLP: an edit there reaches resid_post through
    the residual connection (TransformerLens' hook_resid_mid is the MLP norm's input: editing it
    alone would change only what the MLP reads)."""
    model = (
        LensModel.boot(tiny_dirs["aligned"])
        if path == "bridge"
        else GPT2LMHeadModel.from_pretrained(tiny_dirs["aligned"])
    )
    acc = access(model)
    tokens = torch.tensor([[2, 3, 4, 5]])
    mid, post = acc.sites([1], "resid_mid")[0], acc.sites([2], "resid_post")[0]
    shift = torch.zeros(32)
    shift[5] = 10.0
    with torch.no_grad():
        _, before = acc.capture(tokens, [mid, post])
        with acc.hooked([(mid, lambda h: h + shift)]):
            _, after = acc.capture(tokens, [mid, post])
    torch.testing.assert_close(
        after[1] - before[1], shift.expand_as(before[1]), atol=1e-5, rtol=0
    )  # read after the edit
    moved = (after[2] - before[2])[..., 5]
    assert (
        float(moved.mean()) > 5.0
    )  # the shift is carried to the block's output (plus the MLP's reply)
