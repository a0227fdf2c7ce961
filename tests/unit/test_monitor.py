"""ReversionMonitor: exact null, warnings on a reverting run, silence on a control run."""

import copy
import warnings

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from revlens.drift import isotropic_p99
from revlens.errors import ConfigError, ShapeMismatchError
from revlens.monitor import ReversionMonitor, ReversionWarning

TOK = tiny.tiny_tokenizer()


def monitor(**kw) -> ReversionMonitor:
    return ReversionMonitor(
        tinyrev.direction(), tinyrev.probes(), tinyrev.pair()[1], tokenizer=TOK, **kw
    )


def test_isotropic_p99_is_exact():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(200_000, 16, generator=g, dtype=torch.float64)
    cos = u[:, 0] / u.norm(dim=1)
    assert abs(float(np.quantile(cos.numpy(), 0.99)) - isotropic_p99(16)) < 0.01
    assert isotropic_p99(128) < 0.21 < isotropic_p99(32)


def test_warns_on_reverting_run_and_keeps_a_history():
    mon = monitor(every=2, patience=2)
    with pytest.warns(ReversionWarning, match="step 4"):  # layers 1 and 2
        tinyrev.train("revert", steps=6, callbacks=[mon])
    h = mon.history_
    assert list(h.columns) == [
        "step",
        "layer",
        "cos",
        "proj",
        "norm",
        "null_p99",
        "n_probes",
        "proj_se",
    ]
    assert (h.n_probes == len(tiny.PROMPTS)).all() and (h.proj_se == 0).all()  # 6 prompts: all read
    assert h.step.tolist() == [2, 2, 4, 4, 6, 6]
    assert (h.cos > h.null_p99).all() and (h.proj > 0).all()
    assert mon.alerts_[0][:2] == (4, 1)  # second consecutive check above p99
    assert not mon.should_stop_


def test_silent_on_control_run():
    mon = monitor(every=2, patience=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReversionWarning)
        tinyrev.train("control", steps=6, callbacks=[mon])
    h = mon.history_
    assert len(h) == 6 and (h.cos < h.null_p99).all() and not mon.alerts_


def test_measure_is_no_grad_and_restores_train_mode():
    model = copy.deepcopy(tinyrev.pair()[1]).train()
    mon = monitor(every=1, threshold=0.5, stop=True)
    table = mon.measure(model)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert np.allclose(table.proj, 0.0, atol=1e-6)  # aligned itself: no drift
    assert mon.step(model, 3) is not None and mon.history_.step.unique().tolist() == [3]


def test_rotating_subset_is_paired_unbiased_and_covers_the_set():
    model = tinyrev.train("revert", steps=4)
    full = monitor().measure(model)
    mon = monitor(every=1, probe_batch_size=2, seed=3).prepare(model)
    seen = [
        mon.next_subset() for _ in range(3)
    ]  # 6 prompts, 2 per check: 3 checks cover the set once
    assert sorted(torch.cat(seen).tolist()) == list(range(6))
    mon.reset()  # the rotation starts again
    tables = [mon.step(model, step) for step in range(1, 4)]
    assert all((t.n_probes == 2).all() and (t.proj_se > 0).all() for t in tables)
    # disjoint equal subsets of a paired difference average to the full-set drift exactly
    mean_proj = np.mean([t.proj.to_numpy() for t in tables], axis=0)
    assert np.allclose(mean_proj, full.proj.to_numpy(), atol=1e-6)
    assert not np.allclose(
        tables[0].proj, full.proj, atol=1e-6
    )  # one check alone is a noisy estimate
    assert (full.n_probes == 6).all() and (full.proj_se == 0).all()
    with pytest.raises(ConfigError, match="probe_batch_size"):
        monitor(probe_batch_size=0)


def test_bad_inputs():
    for every in (
        0,
        -1,
        1.5,
    ):  # 1.5: TypeCheckError under the jaxtyping plugin, ConfigError without
        with pytest.raises((ConfigError, TypeCheckError), match="every"):
            monitor(every=every)
    with pytest.raises(ConfigError, match="patience"):
        monitor(patience=0)
    with pytest.raises(ConfigError, match="threshold"):
        monitor(threshold="p95")
    with pytest.raises(ShapeMismatchError):
        monitor().measure(tiny.tiny_model(0, d=48))


def test_behaviour_metrics_are_measured_at_every_check():
    from revlens.metrics import logit_diff, metric_values, refusal_rate
    from revlens.probes import Probes

    probes = Probes(tiny.PROMPTS)
    metrics = {"gen": refusal_rate(["w3"], max_new_tokens=3), "lo": logit_diff(["w3"], ["w4"])}
    mon = monitor(every=3, metrics=metrics, metric_probes=probes)
    model = copy.deepcopy(tinyrev.pair()[1]).train()
    assert mon.step(model, 1) is None and mon.metrics_.empty
    mon.step(model, 3)
    got = mon.metrics_.set_index("metric")["value"]
    assert mon.metrics_.step.tolist() == [3, 3] and model.training
    batch = next(probes.tokenize(TOK).batches(64))
    model.eval()
    for name, m in metrics.items():
        assert got[name] == pytest.approx(float(metric_values(m, model, batch).mean()))
    with pytest.raises(ConfigError, match="kl_to\\(\\) needs reference logits"):
        from revlens.metrics import kl_to

        monitor(metrics={"kl": kl_to()})
