"""Interventions as context managers: exact math at the site, hooks always removed."""

import pytest
import torch
from jaxtyping import TypeCheckError

from revlens.causal import clamp, intervene, patch, steer
from revlens.causal.interventions import apply_intervention
from revlens.errors import ConfigError, ShapeMismatchError, SiteError


def hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _capture(lm, tokens, layer):
    """Activation at revlens layer `layer` as the model sees it (after earlier hooks)."""
    name = "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
    store = {}
    handle = lm.bridge.hook_dict[name].register_forward_hook(
        lambda m, a, o: store.setdefault("h", o.clone())
    )
    try:
        with torch.no_grad():
            logits = lm.bridge(tokens)
    finally:
        handle.remove()
    return store["h"], logits


def test_clamp_zeroes_the_coordinate_relative_to_the_mean(lm, tokens, unit_vectors):
    v = unit_vectors[2]
    h0, _ = _capture(lm, tokens.tokens, 2)
    mu = h0.mean((0, 1))
    with clamp(lm, v, layers=[2], reference_mean=mu):
        h1, _ = _capture(lm, tokens.tokens, 2)
    assert torch.allclose((h1 - mu) @ v, torch.zeros(h1.shape[:2]), atol=1e-5)
    ortho = torch.eye(lm.d_model) - torch.outer(v, v)
    assert torch.allclose(h1 @ ortho, h0 @ ortho, atol=1e-5)
    assert not torch.allclose(h1, h0)


def test_patch_takes_the_source_coordinate_and_steer_adds_alpha_v(lm, tokens, unit_vectors):
    v = unit_vectors[1]
    h0, _ = _capture(lm, tokens.tokens, 1)
    source = torch.randn(h0.shape, generator=torch.Generator().manual_seed(0))
    with patch(lm, v, layers=1, source_acts=source):
        h1, _ = _capture(lm, tokens.tokens, 1)
    assert torch.allclose(h1 @ v, source @ v, atol=1e-5)
    with steer(lm, v[None], layers=[1], alpha=2.5):
        h2, _ = _capture(lm, tokens.tokens, 1)
    assert torch.allclose(h2 - h0, 2.5 * v.expand_as(h0), atol=1e-5)


def test_positions_mask_limits_the_change(lm, tokens, unit_vectors):
    v = unit_vectors[1]
    h0, _ = _capture(lm, tokens.tokens, 1)
    mask = torch.zeros(tokens.tokens.shape, dtype=torch.bool)
    mask[:, 0] = True
    with steer(lm, v, layers=[1], alpha=3.0, positions=mask):
        h1, _ = _capture(lm, tokens.tokens, 1)
    assert torch.allclose(h1[:, 1:], h0[:, 1:])
    assert torch.allclose(h1[:, 0] - h0[:, 0], 3.0 * v.expand(h0.shape[0], -1), atol=1e-5)


def test_hooks_removed_on_exit_and_on_exception(lm, tokens, unit_vectors):
    before = hook_count(lm.bridge)
    _, clean = _capture(lm, tokens.tokens, 1)
    with (
        pytest.raises(RuntimeError, match="boom"),
        steer(lm, unit_vectors[:3], layers=[0, 1, 2], alpha=1.0),
    ):
        assert hook_count(lm.bridge) == before + 3
        raise RuntimeError("boom")
    assert hook_count(lm.bridge) == before
    with clamp(lm, unit_vectors[:2], layers=[0, 1], reference_mean=torch.zeros(2, lm.d_model)):
        pass
    assert hook_count(lm.bridge) == before
    _, after = _capture(lm, tokens.tokens, 1)
    assert torch.equal(after, clean)


def test_error_inside_the_forward_still_removes_hooks(lm, tokens, unit_vectors):
    before = hook_count(lm.bridge)
    wrong = torch.zeros(1, 2, lm.d_model)
    with (
        pytest.raises(ShapeMismatchError, match="source activation"),
        patch(lm, unit_vectors[1], 1, wrong),
    ):
        lm.bridge(tokens.tokens)
    assert hook_count(lm.bridge) == before


def test_bad_input_is_named(lm, unit_vectors):
    with (
        pytest.raises(ConfigError, match="alpha"),
        steer(lm, unit_vectors[1], 1, alpha=float("nan")),
    ):
        pass
    with pytest.raises(SiteError, match="layer 9"), steer(lm, unit_vectors[1], 9, alpha=1.0):
        pass
    with pytest.raises(ShapeMismatchError, match="d_model"), steer(lm, torch.ones(5), 1, alpha=1.0):
        pass
    with pytest.raises(ConfigError, match="reference_mean"), clamp(lm, unit_vectors[1], 1):
        pass
    with (
        pytest.raises((ConfigError, TypeCheckError), match="nudge"),
        intervene(lm, "nudge", unit_vectors[1], 1),
    ):
        pass


def test_apply_intervention_broadcasts_copies():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(1, 2, 3, 4, generator=g)
    vec = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    out = apply_intervention(h, "clamp", vec, reference=torch.zeros(4))
    assert out.shape == (5, 2, 3, 4)
    assert torch.allclose((out * vec[:, None, None]).sum(-1), torch.zeros(5, 2, 3), atol=1e-6)
