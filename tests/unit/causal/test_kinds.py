"""Intervention kinds as objects: a new kind is one class registered here, in this file alone, and
then runs through ablation_study (batched and sequential, equal), the context managers, the
config, the plan, the report and the HTML page like the built-in ones."""

import argparse
import contextlib
import io
import math

import pytest
import torch

from revlens.causal import AblationConfig, ablation_study, intervene, logit_diff
from revlens.causal.kinds import (
    Intervention,
    intervention,
    masked,
    project,
    register_intervention,
    unregister_intervention,
)
from revlens.errors import ConfigError
from revlens.metrics import ModelMetric, call_metric
from revlens.modes import INTERVENTION_KINDS
from revlens.sites import access


class ProjectOut(Intervention):
    """A toy necessity test reading no reference: ``h ← h − QᵀQ h``."""

    def edit(self, h, basis, ref, mask):
        return masked(h, -project(h, basis), mask)


class Amplify(Intervention):
    """A toy sufficiency test (like steer, on the aligned model over the alphas): ``h ← h + α QᵀQ h``."""

    reference = "alpha"
    test = "sufficiency"

    def edit(self, h, basis, ref, mask):
        return masked(h, ref.to(h.dtype)[:, None, None, None] * project(h, basis), mask)


@pytest.fixture(scope="module")
def toy_kinds():
    register_intervention("project_out", ProjectOut)
    register_intervention("amplify", Amplify)
    try:
        yield
    finally:
        unregister_intervention("project_out")
        unregister_intervention("amplify")


@pytest.fixture(scope="module")
def metric():
    return logit_diff(["w1", "w2"], ["w3"])


class Forwarded(ModelMetric):
    """A model metric (scored one intervention per pass, by the sequential runner) that reads the
    same logits as ``metric``: the two runners must agree on it."""

    name = "forwarded"

    def __init__(self, metric):
        super().__init__()
        self.metric = metric

    def bind(self, tokenizer, vocab_size=None):
        self.metric.bind(tokenizer, vocab_size=vocab_size)
        return super().bind(tokenizer, vocab_size)

    def score(self, model, batch):
        return call_metric(self.metric, access(model).forward(batch.tokens), batch)


def _study(tiny_history, lm, prompts, metric, stats, **kw):
    return ablation_study(
        tiny_history,
        prompts,
        metric,
        model=lm,
        stats=stats,
        layers=[1, 2],
        runs=["seed0"],
        steps=[3],
        controls=2,
        batch_size=4,
        progress=False,
        **kw,
    )


def test_a_kind_registered_here_is_known_everywhere(toy_kinds):
    assert {"clamp", "patch", "steer", "project_out", "amplify"} <= set(INTERVENTION_KINDS)
    parser = argparse.ArgumentParser()
    AblationConfig.add_arguments(parser)  # the CLI's choices come from the registry
    args = parser.parse_args(["--kinds", "clamp", "project_out"])
    assert AblationConfig.from_args(args).kinds == ("clamp", "project_out")
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["--kinds", "unregistered"])
    with pytest.raises(ConfigError, match="'amplify' needs alphas"):
        AblationConfig(kinds=("amplify",))
    assert (
        intervention("project_out").test == "necessity"
        and intervention("amplify").test == "sufficiency"
    )


def test_toy_kind_batched_and_sequential_equal(
    toy_kinds, tiny_history, lm, prompts_module, metric, ref_stats
):
    kw = {"kinds": ("clamp", "project_out", "amplify"), "alphas": [0.0, 0.5]}
    batched = _study(tiny_history, lm, prompts_module, metric, ref_stats, **kw).effects
    sequential = _study(
        tiny_history, lm, prompts_module, Forwarded(metric), ref_stats, **kw
    ).effects
    assert (
        len(batched) == len(sequential) == 2 * (2 + 2) * 5
    )  # layers × (necessity kinds + alphas) × directions
    assert list(batched["kind"]) == list(sequential["kind"])
    torch.testing.assert_close(
        torch.tensor(batched["metric"].to_numpy()),
        torch.tensor(sequential["metric"].to_numpy()),
        rtol=1e-5,
        atol=1e-5,
    )
    po = batched[batched["kind"] == "project_out"]
    assert (po["run"] == "seed0").all() and po["alpha"].isna().all()
    assert po["effect"].abs().max() > 1e-4  # the edit changed the metric
    gap = po["metric_clean"] - po["metric_aligned"]
    assert ((po["mediation_fraction"] - po["effect"] / gap).abs() < 1e-12).all()
    amp = batched[batched["kind"] == "amplify"]
    assert (amp["run"] == "aligned").all() and amp["mediation_fraction"].isna().all()
    zero = amp[amp["alpha"] == 0.0]  # α = 0 leaves the aligned model as it is
    assert ((zero["metric"] - zero["metric_aligned"]).abs() < 1e-9).all()


def test_toy_kinds_in_the_report_plan_and_html(
    toy_kinds, tiny_history, lm, prompts_module, metric, ref_stats, tmp_path
):
    report = _study(
        tiny_history,
        lm,
        prompts_module,
        metric,
        ref_stats,
        kinds=("project_out", "amplify"),
        alphas=[0.0, 1.0],
    )
    assert report.kinds() == ["project_out", "amplify"]
    assert set(report.mean_over_runs()["kind"]) == {"project_out"}
    assert set(report.dose_response()["layer"]) == {1, 2} and len(report.dose_response()) == 4
    assert report.best_layer("project_out") in (1, 2)
    assert len(report.kind_figures("project_out")) == 2 and len(report.kind_figures("amplify")) == 1
    html = report.to_html(tmp_path / "r.html").read_text()
    assert "<h2>project_out</h2>" in html and "<h2>amplify</h2>" in html
    plan = report.config["plan"]
    # one checkpoint × 2 layers × 5 directions × project_out, and 2 alphas × amplify on the aligned model
    assert plan["n_interventions"] == len(prompts_module) * 2 * 5 * (1 + 2)


def test_the_context_manager_calls_the_same_edit(toy_kinds, lm, tokens, unit_vectors):
    """project_out through intervene(): the layer's activation has no component along v left, and a
    k = 2 frame is projected out whole."""
    acc = access(lm)
    site = acc.sites([2])[0]
    seen = {}

    def read(h):
        seen["h"] = h.detach().clone()
        return h

    frame = unit_vectors[1:3]
    q, _ = torch.linalg.qr(frame.T.double())
    with (
        torch.no_grad(),
        intervene(lm, "project_out", frame[None], [2]),
        acc.hooked([(site, read)]),
    ):
        acc.forward(tokens.tokens)
    coords = seen["h"].double() @ q
    assert coords.abs().max() < 1e-4
    with torch.no_grad(), acc.hooked([(site, read)]):
        acc.forward(tokens.tokens)
    assert (seen["h"].double() @ q).abs().max() > 1e-2  # not zero without the edit


def test_sequential_runner_takes_subspaces(tiny_history, lm, prompts_module, metric, ref_stats):
    """Rank-k frames through the sequential runner (they were read as a [layer, d] tensor before)."""
    kw = {"kinds": ("clamp", "patch"), "ranks": (1, 2), "directions": "pca", "select_fraction": 0.0}
    batched = _study(tiny_history, lm, prompts_module, metric, ref_stats, **kw).effects
    sequential = _study(
        tiny_history, lm, prompts_module, Forwarded(metric), ref_stats, **kw
    ).effects
    assert set(batched["rank"]) == {1, 2}
    torch.testing.assert_close(
        torch.tensor(batched["metric"].to_numpy()),
        torch.tensor(sequential["metric"].to_numpy()),
        rtol=1e-5,
        atol=1e-5,
    )


def test_registry_refuses_bad_kinds():
    with pytest.raises(ConfigError, match="already registered"):
        register_intervention("clamp", ProjectOut)
    with pytest.raises(ConfigError, match="identifier"):
        register_intervention("project out", ProjectOut)
    with pytest.raises(ConfigError, match="not an Intervention subclass"):
        register_intervention("toy", dict)

    class Scaled(Intervention):
        reference = "alpha"

    with pytest.raises(ConfigError, match="sufficiency test"):
        register_intervention("scaled", Scaled)
    with pytest.raises(ConfigError, match="cannot be unregistered"):
        unregister_intervention("steer")
    with pytest.raises(ConfigError, match="kind='nope' is not understood; valid: 'clamp'"):
        intervention("nope")
    assert "scaled" not in INTERVENTION_KINDS


def test_mediation_is_read_by_the_kind():
    clamp, steer = intervention("clamp"), intervention("steer")
    assert clamp.mediation_fraction(2.0, 1.5, 1.0, 1e-6) == pytest.approx(0.5)
    assert math.isnan(clamp.mediation_fraction(1.0, 0.5, 1.0, 1e-6))  # no gap
    assert math.isnan(steer.mediation_fraction(2.0, 1.5, 1.0, 1e-6))  # a sufficiency test
    with pytest.raises(ConfigError, match="steer needs one direction per copy"):
        steer.check_rank(2)
