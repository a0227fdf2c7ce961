"""Blocking and monitoring along the refusal direction ``r`` (the ``"refusal"`` estimator on the
aligned checkpoint, harmful − harmless): update blocking along ``r`` holds the drift's component along
``r`` where the unblocked run and the same blocking along random directions do not; the monitor
tracks the drift along ``r`` during a live run, equal to a hand projection."""

import pytest
import torch
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from revlens.block import ReversionBlocker
from revlens.collect import collect
from revlens.directions import Directions, RefusalDirection
from revlens.monitor import ReversionMonitor
from revlens.probes import Probes

TOK = tiny.tiny_tokenizer()
LABELS = ["harmful", "harmful", "harmful", "harmless", "harmless", "harmless"]


@pytest.fixture(scope="module")
def refusal(tiny_history):
    """r on the tiny history's aligned checkpoint (the same weights as ``tinyrev.pair()[1]``)."""
    probes = Probes(list(tiny.PROMPTS), labels=LABELS)
    stats = collect(
        tiny_history.restricted(),
        probes,
        layers=tinyrev.LAYERS,
        keep="reference",
        n_bootstrap=0,
        progress=False,
    )
    return RefusalDirection(n_bootstrap=0).fit(stats).direction_


def random_directions(seed):
    g = torch.Generator().manual_seed(seed)
    return Directions.from_tensor(
        torch.randn(len(tinyrev.LAYERS), 32, generator=g), tinyrev.LAYERS, method="random"
    )


def along(directions, model):
    """|drift · direction| on the probe set per layer (the blocker's own measurement)."""
    return (
        ReversionBlocker(directions, tinyrev.probes(), tinyrev.pair()[1], tokenizer=TOK)
        .projection(model)
        .abs()
    )


def blocked_run(directions, steps=12):
    b = ReversionBlocker(
        directions,
        tinyrev.probes(),
        tinyrev.pair()[1],
        tokenizer=TOK,
        method="update",
        refresh_every=1,
    )
    model = tinyrev.train("revert", steps=steps, opt="adamw", setup=lambda m, o: b.attach(m, o))
    b.detach()
    return model


def test_aligned_weights_match(refusal, tiny_history):
    """The fixture's r and tinyrev's pair are the same model: s along r is 0 on aligned."""
    assert along(refusal, tinyrev.pair()[1]).max() < 1e-5


def test_update_blocking_along_r_holds_its_component_unlike_random_directions(refusal):
    free = along(refusal, tinyrev.train("revert", steps=12, opt="adamw"))
    held = along(refusal, blocked_run(refusal))
    controls = torch.stack([along(refusal, blocked_run(random_directions(s))) for s in (1, 2)])
    assert free.min() > 0.05  # the unblocked reverting run moves along r
    assert held.max() < 0.05 * free.min()
    assert (controls > 0.4 * free).all()  # blocking random directions leaves the component along r


def test_monitor_tracks_the_drift_along_r(refusal):
    mon = ReversionMonitor(
        refusal, tinyrev.probes(), tinyrev.pair()[1], tokenizer=TOK, every=2, probe_batch_size=None
    )
    model = tinyrev.train("revert", steps=6, callbacks=[mon])
    h = mon.history_
    assert h.step.tolist() == [2, 2, 4, 4, 6, 6] and h.null_p99.notna().all()
    drift = tinyrev.means(model) - tinyrev.means(tinyrev.pair()[1])  # [layer, d] at layers 1, 2
    last = h[h.step == 6]
    for i, layer in enumerate(tinyrev.LAYERS):
        r = refusal[layer].double()
        row = last[last.layer == layer].iloc[0]
        assert row["cos"] == pytest.approx(float(drift[i] @ r / drift[i].norm()), abs=1e-5)
        assert row["proj"] == pytest.approx(float(drift[i] @ r), abs=1e-5)
