"""ablation_study on a tiny real history: table shape, formulas, strategies agree, bad input."""

import math

import pytest
import torch

from revlens.causal import ablation_study, logit_diff
from revlens.errors import ConfigError, HistoryError, MetricError, SiteError


@pytest.fixture(scope="module")
def metric():
    return logit_diff(["w1", "w2"], ["w3"])


@pytest.fixture(scope="module")
def report(tiny_history, lm, prompts_module, metric, ref_stats):
    return ablation_study(
        tiny_history,
        prompts_module,
        metric,
        model=lm,
        stats=ref_stats,
        layers=[1, 2],
        runs=["seed0"],
        steps=[2, 3],
        controls=2,
        kinds=("clamp", "patch", "steer"),
        alphas=[0.0, 4.0],
        batch_size=4,
        progress=False,
    )


def test_effects_table_shape_and_formulas(report):
    e = report.effects
    n_dir = 1 + 2 * 2
    assert (
        len(e) == (2 * 2 * 2 + 2 * 2) * n_dir
    )  # (steps × layers × {clamp, patch}) + (layers × alphas)
    assert set(e["direction"]) == {
        "v_rev",
        "random_iso_0",
        "random_iso_1",
        "random_cov_0",
        "random_cov_1",
    }
    cp = e[e["kind"] != "steer"]
    gap = cp["metric_clean"] - cp["metric_aligned"]
    assert (cp["effect"] == cp["metric_clean"] - cp["metric"]).all()
    assert ((cp["mediation_fraction"] - cp["effect"] / gap).abs() < 1e-12).all()
    st = e[e["kind"] == "steer"]
    assert st["mediation_fraction"].isna().all() and (st["run"] == "aligned").all()
    zero = st[st["alpha"] == 0.0]
    assert ((zero["metric"] - zero["metric_aligned"]).abs() < 1e-9).all()
    assert report.summary()["best"].sum() == 2 * 2 + 2  # one per (step, kind) and per alpha
    assert report.config["layers"] == [1, 2] and "seed0" in repr(report)


def test_single_checkpoint_and_strategies_agree(
    tiny_history, lm, prompts_module, metric, ref_stats, report
):
    kw = dict(
        model=lm,
        stats=ref_stats,
        layers=[2],
        runs="seed0",
        steps="last",
        controls=2,
        kinds=("clamp", "patch"),
        batch_size=4,
        progress=False,
    )
    loop = ablation_study(tiny_history, prompts_module, metric, strategy="loop", **kw)
    grow = ablation_study(tiny_history, prompts_module, metric, strategy="grow", max_rows=8, **kw)
    assert len(loop.effects) == 2 * 5 and loop.config["steps"] == [3]
    assert torch.allclose(
        torch.tensor(loop.effects["metric"].to_numpy()),
        torch.tensor(grow.effects["metric"].to_numpy()),
        atol=1e-4,
    )
    sub = report.effects.query("step == 3 and layer == 2 and kind != 'steer'").reset_index(
        drop=True
    )
    assert torch.allclose(
        torch.tensor(sub["metric"].to_numpy()),
        torch.tensor(grow.effects["metric"].to_numpy()),
        atol=1e-4,
    )


def test_directions_from_stats_by_default(tiny_history, lm, prompts_module, metric):
    rep = ablation_study(
        tiny_history,
        prompts_module,
        metric,
        model=lm,
        layers=[1],
        runs="seed1",
        steps="last",
        controls=1,
        control_kinds=("iso",),
        kinds="clamp",
        progress=False,
    )
    assert rep.directions.method == "mean_diff" and rep.directions.layers == (1,)
    assert len(rep.effects) == 2 and not math.isnan(rep.effects["metric"].iloc[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": [7]}, SiteError, "layer 7"),
        ({"controls": 0}, ConfigError, "controls must be >= 1"),
        ({"kinds": ("steer",), "alphas": [1.0, math.inf]}, ConfigError, "alphas must be finite"),
        ({"kinds": ("steer",)}, ConfigError, "needs alphas"),
        ({"kinds": ("ablate",)}, ConfigError, "ablate"),
        ({"runs": ["nope"]}, HistoryError, "nope"),
        ({"steps": [99]}, HistoryError, "99"),
        ({"control_kinds": ("gauss",)}, ConfigError, "gauss"),
    ],
)
def test_bad_input_is_named(
    tiny_history, lm, prompts_module, metric, ref_stats, kwargs, error, match
):
    with pytest.raises(error, match=match):
        ablation_study(
            tiny_history,
            prompts_module,
            metric,
            model=lm,
            stats=ref_stats,
            progress=False,
            **kwargs,
        )


def test_bad_metrics_are_named(tiny_history, lm, prompts_module, ref_stats):
    def scalar_metric(logits, batch):
        return logits.mean()

    def nan_metric(logits, batch):
        return torch.full((logits.shape[0],), math.nan)

    kw = dict(
        model=lm,
        stats=ref_stats,
        layers=[1],
        runs="seed0",
        steps="last",
        controls=1,
        progress=False,
    )
    with pytest.raises(MetricError, match="scalar_metric.*shape"):
        ablation_study(tiny_history, prompts_module, scalar_metric, **kw)
    with pytest.raises(MetricError, match="nan_metric.*NaN"):
        ablation_study(tiny_history, prompts_module, nan_metric, **kw)
    with pytest.raises(MetricError, match="'zzz'"):
        ablation_study(tiny_history, prompts_module, logit_diff(["zzz"], ["w1"]), **kw)


def test_config_fields_are_spelled_out_and_an_unknown_keyword_is_named(tiny_history, metric):
    import inspect

    params = inspect.signature(ablation_study).parameters
    assert {"layers", "steps", "runs", "kinds", "controls", "alphas", "ranks", "site"} <= set(
        params
    )
    assert "settings" not in params  # the config convention: spelled-out fields (as analyze)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['n_controls'\]"):
        ablation_study(tiny_history, ["a b"], metric, n_controls=3, progress=False)
