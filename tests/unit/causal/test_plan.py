"""The ablation plan: the default subset, the forward count (checked against real forwards), the ETA."""

import pytest
import torch

from revlens.causal import AblationConfig, ablation_study, logit_diff
from revlens.causal.plan import auto_layers, drift_scores, log_spaced_steps
from revlens.errors import ConfigError, HistoryError


def test_log_spaced_steps_keep_the_first_and_the_last():
    lab = [*range(1, 21), *range(25, 101, 5)]
    assert log_spaced_steps(lab, 3) == [1, 10, 100]
    assert log_spaced_steps(lab, 4) == [1, 5, 20, 100]
    assert log_spaced_steps([1, 2, 3], 5) == [1, 2, 3]
    assert log_spaced_steps([3, 7, 9], 1) == [9]


def test_auto_layers_rank_by_motion_along_v():
    v = torch.eye(3, dtype=torch.float64)  # one direction per layer
    start = torch.zeros(3, 3, dtype=torch.float64)
    last = [
        torch.tensor([[0.1, 5, 0], [0, 2.0, 0], [0, 0, 3.0]]),
        torch.tensor([[0.3, 0, 0], [0, 1.0, 0], [0, 0, 2.0]]),
    ]
    scores = drift_scores(last, start, v, [4, 5, 6])
    assert scores == pytest.approx(
        {4: 0.2, 5: 1.5, 6: 2.5}
    )  # the cross-axis motion at layer 4 does not count
    assert auto_layers(scores, 2) == [5, 6] and auto_layers({1: 1.0, 2: 1.0, 3: 0.0}, 1) == [1]


def test_config_defaults_and_cli_values():
    cfg = AblationConfig()
    assert (cfg.steps, cfg.layers, cfg.kinds, cfg.auto_steps, cfg.auto_layers) == (
        "auto",
        "auto",
        ("clamp",),
        3,
        2,
    )
    assert AblationConfig(steps="all", layers="all").layers == "all"
    with pytest.raises(ConfigError, match="auto_layers"):
        AblationConfig(auto_layers=0)
    import argparse

    parser = argparse.ArgumentParser()
    AblationConfig.add_arguments(parser)
    args = parser.parse_args(["--steps", "all", "--layers", "auto", "--auto-steps", "4"])
    got = AblationConfig.from_args(args)
    assert (got.steps, got.layers, got.auto_steps) == ("all", "auto", 4)
    with pytest.raises(ConfigError, match="--layers takes integers, 'auto' or 'all'"):
        AblationConfig.from_args(parser.parse_args(["--layers", "x"]))


def test_planned_forwards_are_the_forwards_that_run(
    tiny_history, lm, prompts_module, ref_stats, caplog
):
    calls = []
    handle = lm.bridge.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with caplog.at_level("INFO", logger="revlens.causal.study"):
            rep = ablation_study(
                tiny_history,
                prompts_module,
                logit_diff(["w1"], ["w3"]),
                model=lm,
                stats=ref_stats,
                layers=[1, 2],
                runs=["seed0"],
                steps=[1, 3],
                kinds=("clamp", "patch", "steer"),
                alphas=[1.0],
                controls=3,
                batch_size=4,
                max_rows=20,
                progress=False,
            )
    finally:
        handle.remove()
    plan = rep.config["plan"]
    assert len(calls) == plan["n_forwards"] + 3  # + the warm-up and two timed forwards of the ETA
    assert plan["eta_s"] > 0 and plan["n_interventions"] == 6 * 2 * 7 * (2 * 2 + 1)
    assert "planned:" in caplog.text and "ETA" in caplog.text


def test_auto_defaults_pick_the_subset_and_say_so(
    tiny_history, lm, prompts_module, ref_stats, monkeypatch
):
    from revlens.causal.selection import Selection

    calls, choose = [], Selection._auto_layers

    def counted(self, *args):
        calls.append(1)
        return choose(self, *args)

    monkeypatch.setattr(Selection, "_auto_layers", counted)
    rep = ablation_study(
        tiny_history,
        prompts_module,
        logit_diff(["w1"], ["w3"]),
        model=lm,
        controls=1,
        auto_steps=2,
        auto_layers=1,
        batch_size=4,
        progress=False,
    )
    assert sorted(set(rep.effects.step)) == [1, 3] and set(rep.effects.kind) == {"clamp"}
    assert len(rep.config["layers"]) == 1
    assert len(calls) == 1  # the layers are chosen once (each call reads every last checkpoint)
    assert (
        "log-spaced" in rep.config["choices"]["steps"]
        and "furthest along" in rep.config["choices"]["layers"]
    )
    with pytest.raises(HistoryError, match="nope"):
        ablation_study(
            tiny_history,
            prompts_module,
            logit_diff(["w1"], ["w3"]),
            model=lm,
            runs=["nope"],
            progress=False,
        )
