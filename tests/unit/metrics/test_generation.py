"""Greedy generation under interventions equals running the intervened model step by step."""

import contextlib

import pytest
import torch
from chatkit import chat_batch, unit

from revlens.causal import clamp, patch, steer
from revlens.metrics import greedy_generate, stop_token_ids
from revlens.sites import access

N_NEW = 5


def _step_by_step(lm, batch, edit_context, n_new=N_NEW):
    """The reference: each prompt alone (no padding), one full forward per generated token."""
    out = []
    for i in range(len(batch)):
        ids = batch.tokens[i, : int(batch.last_index[i]) + 1][None]
        for _ in range(n_new):
            with torch.no_grad(), edit_context(i, ids.shape[1]):
                logits = lm.bridge(ids)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        out.append(ids[0, -n_new:].tolist())
    return out


def _no_stop(monkeypatch):
    # random tiny models may emit <eos>/<eot>; compare all N_NEW tokens
    monkeypatch.setattr("revlens.metrics.generation.stop_token_ids", lambda tok, extra=(): [10**9])


def test_generation_under_clamp_equals_the_clamped_model_step_by_step(chat_lm, monkeypatch):
    _no_stop(monkeypatch)
    batch = chat_batch(chat_lm)
    v, mu = (
        unit(chat_lm.d_model, 0),
        4.0 * torch.randn(chat_lm.d_model, generator=torch.Generator().manual_seed(1)),
    )
    layers = [1, 2]
    with clamp(chat_lm, v, layers, mu.expand(2, -1)):
        got = greedy_generate(chat_lm, batch, max_new_tokens=N_NEW)
    ref = _step_by_step(chat_lm, batch, lambda i, n: clamp(chat_lm, v, layers, mu.expand(2, -1)))
    assert got.tokens.tolist() == ref
    plain = greedy_generate(chat_lm, batch, max_new_tokens=N_NEW)
    assert plain.tokens.tolist() != got.tokens.tolist(), "the clamp should change some generation"
    assert plain.tokens.tolist() == _step_by_step(
        chat_lm, batch, lambda i, n: contextlib.nullcontext()
    )


def test_patch_covers_the_prompt_and_leaves_generated_positions(llama_lm, monkeypatch):
    _no_stop(monkeypatch)
    lm, layer = llama_lm, 1
    batch = chat_batch(lm)
    acc = access(lm)
    _, acts = acc.capture(batch.tokens, acc.sites([layer]))
    source = acts[layer] + 3.0 * torch.randn(
        acts[layer].shape, generator=torch.Generator().manual_seed(2)
    )
    v = unit(lm.d_model, 5)
    with patch(lm, v, [layer], {layer: source}):
        got = greedy_generate(lm, batch, max_new_tokens=N_NEW)

    def edit_for(i, n):
        length = int(batch.last_index[i]) + 1

        def edit(h):
            h = h.clone()
            coord = (h[:, :length] - source[i : i + 1, :length]) @ v
            h[:, :length] -= coord[..., None] * v
            return h

        return acc.hooked([(acc.sites([layer])[0], edit)])

    assert got.tokens.tolist() == _step_by_step(lm, batch, edit_for)


def test_steer_can_spare_the_generated_positions(llama_lm, monkeypatch):
    _no_stop(monkeypatch)
    lm, layer = llama_lm, 2
    batch = chat_batch(lm)
    acc = access(lm)
    v = unit(lm.d_model, 7)
    with steer(lm, v, [layer], 6.0, generated=False):
        got = greedy_generate(lm, batch, max_new_tokens=N_NEW)

    def edit_for(i, n):
        length = int(batch.last_index[i]) + 1

        def edit(h):
            h = h.clone()
            h[:, :length] += 6.0 * v
            return h

        return acc.hooked([(acc.sites([layer])[0], edit)])

    assert got.tokens.tolist() == _step_by_step(lm, batch, edit_for)


def test_stop_tokens_and_decoded_responses(llama_lm):
    tok = llama_lm.tokenizer
    stops = stop_token_ids(tok)
    assert tok.eos_token_id in stops and tok.convert_tokens_to_ids("<eot>") in stops
    batch = chat_batch(llama_lm)
    gen = greedy_generate(llama_lm, batch, max_new_tokens=N_NEW, stop=["w50"])
    for i in range(len(batch)):
        row = gen.tokens[i].tolist()
        n = int(gen.lengths[i])
        assert not set(row[:n]) & set(stop_token_ids(tok, ["w50"]))
        assert gen.texts[i] == tok.decode(row[:n], skip_special_tokens=True).strip()
        if gen.stopped[i]:
            assert row[n] in stop_token_ids(tok, ["w50"])


def test_context_limit_caps_generation():
    import families
    from revlens.model import LensModel

    lm = LensModel.boot(families.checkpoint_dir("gpt2"))  # n_positions 64
    batch = chat_batch(lm, ["w11 " * 50])
    with pytest.warns(UserWarning, match="capped"):
        gen = greedy_generate(lm, batch, max_new_tokens=40)
    assert gen.tokens.shape[1] <= 64 - batch.tokens.shape[1]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "TransformerLens 4.3 bug: decoding through the bridge with its HF KV cache (return_type="
        "'logits_and_cache', past_key_values=...) gives logits up to ~0.6 away from the full forward (tiny "
        "Llama, GPT-2, Gemma-2, Qwen2; the plain HF model with the same cache is exact), so greedy_generate's "
        "cached path runs a plain-HF twin of the bridge (revlens.sites.cached). XPASS = fixed upstream: the "
        "twin is no longer needed."
    ),
)
def test_upstream_bridge_kv_cache_matches_the_full_forward(llama_lm):
    toks = torch.randint(9, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = llama_lm.bridge(toks)
        _, past = llama_lm.bridge(toks[:, :5], use_cache=True, return_type="logits_and_cache")
        steps = []
        for t in range(5, 8):
            logits, past = llama_lm.bridge(
                toks[:, t : t + 1], past_key_values=past, return_type="logits_and_cache"
            )
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full[:, 5:], atol=1e-4)
