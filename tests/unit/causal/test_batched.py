"""Batched sweeps equal one intervention per forward (float tolerance), with chunking."""

import pytest
import torch

from revlens.causal.batched import Stack, run_stacks
from revlens.metrics import LogitDiff
from revlens.sites import access, resolve_sites


def hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize(("positions", "kind"), [("all", "resid_post"), ("first", "resid_post"),
                                                ("all", "resid_mid"), ("first", "attn_out"), ("all", "mlp_out")])
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
