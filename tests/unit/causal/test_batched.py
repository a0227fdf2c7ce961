"""Batched sweeps equal one intervention per forward (float tolerance), with chunking."""

import pytest
import torch

from revlens.causal.batched import Stack, run_stacks
from revlens.metrics import LogitDiff
from revlens.sites import access, resolve_sites


def hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize(
    ("positions", "kind"),
    [
        ("all", "resid_post"),
        ("first", "resid_post"),
        ("all", "resid_mid"),
        ("first", "attn_out"),
        ("all", "mlp_out"),
    ],
)
def test_grow_and_repeat_equal_the_loop(lm, tokens, unit_vectors, positions, kind):
    """Also at sites inside a block, where grow appends the copies at the block's input."""
    bridge = lm.bridge
    sites = {s.layer: s for s in resolve_sites(bridge, "all", kind)}
    metric = LogitDiff([3, 4], [5]).bind(lm.tokenizer)
    with torch.no_grad():
        _, acts = access(bridge).capture(tokens.tokens, list(sites.values()))
    source = {k: v + 0.5 for k, v in acts.items()}  # a different "aligned" activation
    g = torch.Generator().manual_seed(0)
    stacks = []
    for layer in sites:
        vec = torch.nn.functional.normalize(torch.randn(3, lm.d_model, generator=g), dim=1)
        vec[0] = unit_vectors[layer]
        stacks += [
            Stack(layer, "clamp", vec, reference=acts[layer].mean((0, 1))),
            Stack(layer, "patch", vec),
            Stack(layer, "steer", vec, alphas=torch.tensor([0.5, 1.0, 2.0])),
        ]
    mask = None
    if positions == "first":
        mask = torch.zeros(tokens.tokens.shape, dtype=torch.bool)
        mask[:, 0] = True
    before = hook_count(bridge)
    results = {}
    with torch.no_grad():
        for strategy, max_rows in (
            ("loop", 10_000),
            ("grow", 10_000),
            ("grow", 20),
            ("repeat", 40),
        ):
            results[(strategy, max_rows)] = run_stacks(
                bridge,
                tokens,
                stacks,
                metric,
                sites=sites,
                sources=source,
                mask=mask,
                strategy=strategy,
                max_rows=max_rows,
            )
    assert hook_count(bridge) == before
    ref_clean, ref = results[("loop", 10_000)]
    for key, (clean, vals) in results.items():
        assert torch.allclose(clean, ref_clean, atol=1e-5), key
        for a, b in zip(vals, ref):
            assert torch.allclose(a, b, atol=1e-4), key
    # the interventions did something: not every copy equals the clean metric
    assert max(float((v - ref_clean).abs().max()) for v in ref) > 1e-2


def test_subspace_stacks_grow_equal_loop_and_the_context_manager(lm, tokens):
    """k-dim copies: grow (chunked) and repeat equal one forward per copy, which equals the
    subspace clamp / patch context managers; k = 1 frames equal [n, d] directions exactly."""
    from revlens.causal import clamp, patch
    from revlens.directions.subspace import random_frames

    bridge = lm.bridge
    sites = {s.layer: s for s in resolve_sites(bridge, [1, 2])}
    metric = LogitDiff([3, 4], [5]).bind(lm.tokenizer)
    with torch.no_grad():
        _, acts = access(bridge).capture(tokens.tokens, list(sites.values()))
    source = {k: v + 0.3 for k, v in acts.items()}
    mu = {k: v.mean((0, 1)) for k, v in acts.items()}
    frames = {
        layer: random_frames(
            4, 3, lm.d_model, generator=torch.Generator().manual_seed(layer)
        ).float()
        for layer in sites
    }
    stacks = [
        Stack(layer, kind, frames[layer], reference=mu[layer] if kind == "clamp" else None)
        for layer in sites
        for kind in ("clamp", "patch")
    ]
    with torch.no_grad():
        loop = run_stacks(
            bridge, tokens, stacks, metric, sites=sites, sources=source, strategy="loop"
        )
        for strategy, rows in (("grow", 10_000), ("grow", 24), ("repeat", 10_000)):
            clean, vals = run_stacks(
                bridge,
                tokens,
                stacks,
                metric,
                sites=sites,
                sources=source,
                strategy=strategy,
                max_rows=rows,
            )
            assert torch.allclose(clean, loop[0], atol=1e-5)
            for a, b in zip(vals, loop[1]):
                assert torch.allclose(a, b, atol=1e-4), strategy
        # the loop's copy 2 at layer 2 is the subspace clamp context manager
        with clamp(bridge, frames[2][2][None], layers=[2], reference_mean=mu[2][None]):
            ref = metric(bridge(tokens.tokens), tokens)
        assert torch.allclose(loop[1][2][2], ref.double(), atol=1e-4)
        with patch(bridge, frames[1][0][None], layers=[1], source_acts={1: source[1]}):
            ref = metric(bridge(tokens.tokens), tokens)
        assert torch.allclose(loop[1][1][0], ref.double(), atol=1e-4)
        # k = 1 frames are the [n, d] directions, exactly
        flat = [Stack(2, "clamp", frames[2][:, 0], reference=mu[2])]
        thin = [Stack(2, "clamp", frames[2][:, :1], reference=mu[2])]
        a = run_stacks(bridge, tokens, flat, metric, sites=sites)[1][0]
        b = run_stacks(bridge, tokens, thin, metric, sites=sites)[1][0]
        assert torch.equal(a, b)
    assert (
        max(float((v - loop[0]).abs().max()) for v in loop[1]) > 1e-2
    )  # the subspaces did something
