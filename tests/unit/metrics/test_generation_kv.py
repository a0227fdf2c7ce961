"""The KV-cached greedy path equals the full-forward path: tokens, and logits to 1e-4.

On tiny random models of four families (Llama, GPT-2, Qwen2, Gemma-2), both as plain Hugging Face
models and booted as the TransformerBridge the rest of revlens uses; a batch of chat prompts of
unequal lengths (right-padded); with no intervention, under clamp (rank 1 and 3), steer (also
``generated=False``), patch (rank 2) and a ``resid_mid`` clamp. Hooks are gone afterwards. Where
the cached path cannot reproduce the full one (a foreign hook, an edit not marked position-wise)
it refuses with a typed error, or ``auto`` falls back with a typed warning.
"""

import contextlib
import warnings

import pytest
import torch
from chatkit import CHATS, unit

import families
from revlens.causal import clamp, patch, steer
from revlens.metrics import FullForwardFallback, GenerationMetric, greedy_generate
from revlens.model import LensModel
from revlens.probes import Probes
from revlens.sites import access
from revlens.sites.cached import CachedPathError, active_edits

N_NEW = 8
FAMILIES = ["llama", "gpt2", "qwen2", "gemma2"]


@pytest.fixture(autouse=True)
def _no_stop(monkeypatch):
    # random tiny models may emit <eos>/<eot> early; compare all N_NEW steps
    monkeypatch.setattr("revlens.metrics.generation.stop_token_ids", lambda tok, extra=(): [10**9])


@pytest.fixture(
    scope="module",
    params=[(f, kind) for f in FAMILIES for kind in ("hf", "bridge")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def model(request):
    """``(model, tokenizer, batch)``: a plain HF model or a booted bridge, and a chat batch."""
    family, kind = request.param
    if kind == "bridge":
        m = LensModel.boot(families.checkpoint_dir(family))
        tok = (
            families.tokenizer()
        )  # the word-level one (a saved qwen2 dir reloads as Qwen2Tokenizer)
    else:
        m, tok = families.build(family)
    probes = Probes.from_chat(CHATS).tokenize(tok, n_ctx=64)
    batch = next(probes.batches(len(probes)))
    assert len(set((batch.last_index + 1).tolist())) > 1, (
        "the batch must have unequal prompt lengths"
    )
    return m, tok, batch


def _hook_count(m) -> int:
    """Forward hooks on the model's modules, TransformerLens' own plumbing left out."""
    roots = [m.bridge, m.bridge.original_model] if isinstance(m, LensModel) else [m]
    n = 0
    for root in roots:
        for mod in root.modules():
            for hooks in (mod._forward_hooks, mod._forward_pre_hooks):
                n += sum(
                    not str(getattr(f, "__module__", "")).startswith(
                        "transformer_lens.model_bridge"
                    )
                    for f in hooks.values()
                )
    return n


def _both(m, tok, batch, context=contextlib.nullcontext):
    out = {}
    for method in ("full", "cached"):
        with context():
            out[method] = greedy_generate(
                m, batch, max_new_tokens=N_NEW, tokenizer=tok, method=method, output_logits=True
            )
    return out["full"], out["cached"]


def _assert_equal(full, cached):
    assert full.method == "full" and cached.method == "cached"
    assert cached.tokens.shape == (full.tokens.shape[0], N_NEW)
    assert cached.tokens.tolist() == full.tokens.tolist()
    assert cached.texts == full.texts
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-4, rtol=0)


def _cases(m, batch):
    """name -> a context manager factory for each intervention (rank 1 and k > 1)."""
    acc = access(m)
    d = acc.d_model
    g = torch.Generator().manual_seed(1)
    mu = 4.0 * torch.randn(2, d, generator=g)
    basis3 = torch.randn(2, 3, d, generator=g)
    _, acts = acc.capture(batch.tokens, acc.sites([1]))
    source = {1: acts[1] + 3.0 * torch.randn(acts[1].shape, generator=g)}
    basis2 = torch.randn(1, 2, d, generator=g)
    return {
        "clamp_k1": lambda: clamp(m, unit(d, 0), [1, 2], mu),
        "clamp_k3": lambda: clamp(m, basis3, [1, 2], mu),
        "steer": lambda: steer(m, unit(d, 7), [2], 6.0),
        "steer_prompt_only": lambda: steer(m, unit(d, 7), [1], 6.0, generated=False),
        "patch_k2": lambda: patch(m, basis2, [1], source),
        "clamp_resid_mid": lambda: clamp(m, unit(d, 3), [1], mu[0], site="resid_mid"),
    }


def test_cached_equals_full_without_intervention(model):
    m, tok, batch = model
    full, cached = _both(m, tok, batch)
    _assert_equal(full, cached)
    auto = greedy_generate(m, batch, max_new_tokens=N_NEW, tokenizer=tok)
    assert auto.method == "cached" and auto.tokens.tolist() == full.tokens.tolist()


def test_cached_equals_full_under_every_intervention(model):
    m, tok, batch = model
    plain = greedy_generate(m, batch, max_new_tokens=N_NEW, tokenizer=tok, method="full")
    changed = 0
    for name, context in _cases(m, batch).items():
        full, cached = _both(m, tok, batch, context)
        _assert_equal(full, cached)
        changed += full.tokens.tolist() != plain.tokens.tolist()
        assert _hook_count(m) == 0, f"{name}: hooks left behind"
    assert changed >= 3, "the interventions should change some generations"
    module = m.bridge if isinstance(m, LensModel) else m
    assert active_edits(module) == []


def test_a_foreign_hook_is_refused_or_falls_back_typed(model):
    m, tok, batch = model
    acc = access(m)
    hf = m.hf_model if isinstance(m, LensModel) else m
    block = access(hf).blocks[0] if not isinstance(m, LensModel) else None
    ref = greedy_generate(
        m, batch, max_new_tokens=N_NEW, tokenizer=tok, method="full", output_logits=True
    )
    if block is None:  # a TransformerLens hook on a bridge hook point (the twin would not see it)
        point = m.bridge.hook_dict["blocks.0.hook_out"]
        handle = point.register_forward_hook(lambda mod, args, out: out * 1.5)
    else:
        handle = block.register_forward_hook(
            lambda mod, args, out: (out[0] * 1.5, *out[1:]) if isinstance(out, tuple) else out * 1.5
        )
    try:
        hooked_full = greedy_generate(
            m, batch, max_new_tokens=N_NEW, tokenizer=tok, method="full", output_logits=True
        )
        with pytest.raises(CachedPathError, match="did not register"):
            greedy_generate(m, batch, max_new_tokens=N_NEW, tokenizer=tok, method="cached")
        with pytest.warns(FullForwardFallback, match="did not register"):
            auto = greedy_generate(m, batch, max_new_tokens=N_NEW, tokenizer=tok)
    finally:
        handle.remove()
    assert auto.method == "full" and auto.tokens.tolist() == hooked_full.tokens.tolist()
    assert not torch.allclose(hooked_full.logits[:, 0], ref.logits[:, 0], atol=1e-3), (
        "the hook should matter"
    )
    # an edit registered through revlens but not marked position-wise: same rule
    with (
        acc.hooked([(acc.sites([1])[0], lambda h: h * 1.0)]),
        pytest.raises(CachedPathError, match="position-wise"),
    ):
        greedy_generate(m, batch, max_new_tokens=N_NEW, tokenizer=tok, method="cached")
    assert _hook_count(m) == 0


def test_the_twin_shares_the_bridge_weights():
    """A weight changed in place in the booted bridge is seen by the cached path (no copy)."""
    lm, tok = LensModel.boot(families.checkpoint_dir("qwen2")), families.tokenizer()
    probes = Probes.from_chat(CHATS).tokenize(tok, n_ctx=64)
    batch = next(probes.batches(len(probes)))
    before = greedy_generate(
        lm, batch, max_new_tokens=N_NEW, tokenizer=tok, method="cached", output_logits=True
    )
    with torch.no_grad():
        for p in lm.hf_model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    full, cached = _both(lm, tok, batch)
    _assert_equal(full, cached)
    assert not torch.allclose(before.logits, cached.logits, atol=1e-3)


def test_generation_metrics_use_the_cached_path(llama_lm):
    probes = Probes.from_chat(CHATS).tokenize(llama_lm.tokenizer, n_ctx=64)
    batch = next(probes.batches(len(probes)))
    metric = GenerationMetric(
        lambda prompts, responses: [float(len(r)) for r in responses], max_new_tokens=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FullForwardFallback)
        metric.score(llama_lm, batch)
    assert metric.last_.method == "cached"
    full = GenerationMetric(metric.judge, max_new_tokens=4, method="full")
    full.score(llama_lm, batch)
    assert (
        full.last_.method == "full" and full.last_.tokens.tolist() == metric.last_.tokens.tolist()
    )
    assert full.generation_key != metric.generation_key


def test_method_is_validated(llama_lm):
    probes = Probes.from_chat(CHATS[:1]).tokenize(llama_lm.tokenizer, n_ctx=64)
    from revlens.errors import ConfigError

    with pytest.raises(ConfigError, match="method"):
        greedy_generate(llama_lm, next(probes.batches(1)), max_new_tokens=2, method="kv")


def test_plain_twin_holds_the_source_tensors_or_says_which_is_missing():
    from revlens.sites.cached import plain_twin

    hf, _ = families.build("llama")
    twin = plain_twin(hf)
    src = dict(hf.named_parameters(remove_duplicate=False))
    assert all(p is src[name] for name, p in twin.named_parameters(remove_duplicate=False))
    assert not twin.training and not any(m._forward_hooks for m in twin.modules())
    hf.model.norm = torch.nn.Identity()
    with pytest.raises(CachedPathError, match="model.norm.weight"):
        plain_twin(hf)


def test_an_edit_on_the_bridges_hf_model_is_not_dropped_by_the_twin(llama_lm):
    """Edits registered on ``lm.hf_model`` (not the bridge) would not reach the twin: full path, typed."""
    tok = families.tokenizer()
    batch = next(Probes.from_chat(CHATS).tokenize(tok, n_ctx=64).batches(len(CHATS)))
    with steer(llama_lm.hf_model, unit(llama_lm.d_model, 7), [1], 6.0):
        with pytest.raises(CachedPathError, match="did not register"):
            greedy_generate(llama_lm, batch, max_new_tokens=2, tokenizer=tok, method="cached")
        with pytest.warns(FullForwardFallback):
            auto = greedy_generate(llama_lm, batch, max_new_tokens=2, tokenizer=tok)
    assert auto.method == "full"
