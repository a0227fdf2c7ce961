"""Degenerate layers: constant over the probe set, reported and left out (not a crash)."""

import warnings

import pytest
import torch

import revlens
from revlens.collect import (
    DegenerateLayerWarning,
    degenerate_layers,
    select_layers,
    without_degenerate,
)
from revlens.errors import ConfigError


def _acts(constant_layers=(0,), n=12, layers=3, d=8, seed=0):
    """base/aligned/run activations [prompt, layer, d]; the given layers identical for every prompt."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, name in enumerate(("base", "aligned", "s1", "s2")):
        x = torch.randn(n, layers, d, generator=g, dtype=torch.float64) + 0.5 * i
        for layer in constant_layers:
            x[:, layer] = torch.randn(
                d, generator=g, dtype=torch.float64
            )  # one vector for all prompts
        out[name] = x.float().double()  # values a float32 model produces
    return out


def test_constant_layers_are_found_from_second_moments_or_activations(make_stats):
    stats = make_stats(_acts(), runs={"r": {1: "s1", 2: "s2"}})
    assert degenerate_layers(stats) == {0: ["base", "aligned"]}
    no_second = make_stats(_acts(), runs={"r": {1: "s1", 2: "s2"}}, second=False)
    assert degenerate_layers(no_second) == {0: ["base", "aligned"]}  # from the kept activations
    assert degenerate_layers(make_stats(_acts(()), runs={"r": {1: "s1", 2: "s2"}})) == {}


def test_select_layers_is_an_exact_slice(make_stats):
    stats = make_stats(_acts(), runs={"r": {1: "s1", 2: "s2"}})
    sub = select_layers(stats, [1, 2])
    assert sub.layers == [1, 2] and sub.roles == stats.roles
    for name in stats.checkpoints:
        assert torch.equal(sub.mean(name), stats.mean(name)[1:])
        if stats[name].second is not None:
            assert torch.equal(sub[name].covariance, stats[name].covariance[1:])
        if stats[name].boot_mean is not None:
            assert torch.equal(sub[name].boot_mean, stats[name].boot_mean[:, 1:])
    assert torch.equal(sub["aligned"].activations, stats["aligned"].activations[:, 1:])


def test_left_out_with_a_warning_naming_the_layer(make_stats):
    stats = make_stats(_acts(), runs={"r": {1: "s1", 2: "s2"}})
    with pytest.warns(
        DegenerateLayerWarning,
        match=r"degenerate layer\(s\) \[0\] left out.*analysed layers: \[1, 2\]",
    ):
        kept, bad = without_degenerate(stats, what="analyze")
    assert kept.layers == [1, 2] and bad == {0: ["base", "aligned"]}
    with pytest.raises(ConfigError, match=r"every layer \[0, 1, 2\] is constant"):
        without_degenerate(
            make_stats(_acts((0, 1, 2)), runs={"r": {1: "s1", 2: "s2"}}), what="analyze"
        )


def test_analyze_continues_on_the_other_layers(make_stats):
    """Before: ConfigError 'covariance is zero' / 'zero norm' for the whole analysis."""
    stats = make_stats(_acts(), runs={"r": {1: "s1", 2: "s2"}})
    with pytest.warns(DegenerateLayerWarning, match="layer"):
        rep = revlens.analyze(stats, n_null=20, n_stability=0)
    assert rep.config["degenerate_layers"] == [0] and rep.config["layers"] == [1, 2]
    assert sorted(rep.drift.layer.unique()) == [1, 2] and rep.drift.cos.notna().all()
    # a direction tensor names the collected layers by row; it is bound before layer 0 is left out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        custom = revlens.analyze(stats, methods=[torch.randn(3, 8)], n_null=20, n_stability=0)
    assert list(custom.directions["custom"].layers) == [1, 2]
