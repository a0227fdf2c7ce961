"""The blocking-strategy seam: the registry (and modes' Literal kept equal to it), one class per
method, fitted state only after ``prepare``, typed measurement records under the old log names,
and ``finish`` only after a normal end."""

import copy
from typing import get_args

import pytest
import torch
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from revlens.block import (
    METHODS,
    BlockingStrategy,
    Measurement,
    ReversionBlocker,
    method_class,
    register,
    unregister,
)
from revlens.block.methods import ForwardHook, GradientProjection, Penalty, UpdateProjection
from revlens.errors import ConfigError, NotFittedError
from revlens.modes import BLOCK_METHODS, BlockMethod

TOK = tiny.tiny_tokenizer()


def blocker(**kw) -> ReversionBlocker:
    return ReversionBlocker(
        tinyrev.direction(), tinyrev.probes(), tinyrev.pair()[1], tokenizer=TOK, **kw
    )


def test_builtin_methods_are_the_registry_and_the_literal():
    assert tuple(METHODS)[: len(BLOCK_METHODS)] == BLOCK_METHODS == get_args(BlockMethod)
    classes = [UpdateProjection, GradientProjection, Penalty, ForwardHook]
    assert [method_class(m) for m in BLOCK_METHODS] == classes
    assert [type(blocker(method=m)) for m in BLOCK_METHODS] == classes
    assert type(blocker()) is UpdateProjection  # the default method


def test_a_method_class_knows_its_name_and_checks_its_settings():
    v, pr, ref = tinyrev.direction(), tinyrev.probes(), tinyrev.pair()[1]
    assert GradientProjection(v, pr, ref, tokenizer=TOK).method == "gradient"
    with pytest.raises(ConfigError, match="is method 'gradient', not method='update'"):
        GradientProjection(v, pr, ref, tokenizer=TOK, method="update")
    with pytest.raises(ConfigError, match="cannot confine"):
        ForwardHook(v, pr, ref, tokenizer=TOK, constraint="confine")
    with pytest.raises(ConfigError, match="method='nope' is not understood; valid: 'update'"):
        blocker(method="nope")
    with pytest.raises(ConfigError, match="not a registered blocking method"):
        type("Unregistered", (ReversionBlocker,), {"method": ""})(v, pr, ref, tokenizer=TOK)
    with pytest.raises(ConfigError, match="plain word"):
        register("two words")


def test_nothing_fitted_before_prepare_and_records_are_typed():
    b = blocker(refresh_every=1)
    assert not b.is_fitted and b.measurements() == [] and b.history_.empty
    for call in (b.before_step, b.after_step, b.finish, lambda: b.cost_):
        with pytest.raises(NotFittedError, match="not attached"):
            call()
    model = copy.deepcopy(tinyrev.pair()[1]).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with b.attached(model, opt):
        for step in range(1, 3):
            opt.zero_grad()
            tinyrev.loss_fn("revert", 1)(model, step).backward()
            opt.step()
    last = b.measurements()
    assert all(isinstance(m, Measurement) and m.step == 1 for m in last)
    assert [(m.quantity, m.layer, m.logged) for m in last] == [
        ("s", 1, True),
        ("s", 2, True),
        ("active_rows", None, True),
        ("rows", None, False),
    ]
    assert [m.log_name for m in last if m.logged] == [
        "block_s_layer1",
        "block_s_layer2",
        "block_active_rows",
    ]
    h = b.history_
    assert h.step.tolist() == [0, 0, 1, 1] and h.layer.tolist() == [1, 2, 1, 2]
    assert h.s.tolist() == [m.value for m in b.records_ if m.quantity == "s"]
    assert b.active_.to_dict("list") == {"step": [0, 1], "rows": [2, 2], "active": [2, 2]}


def test_weight_blocker_is_a_registered_strategy():
    from revlens.block import BlockingCallback
    from revlens.weights import WeightBlocker, WeightBlockerCallback

    assert method_class("weights") is WeightBlocker and issubclass(WeightBlocker, BlockingStrategy)
    assert WeightBlockerCallback is BlockingCallback and WeightBlocker.source == "weights"
    assert "weights" not in METHODS  # not an activation-space method


class _Counting(BlockingStrategy):
    """Counts the protocol calls."""

    acts_on_step = False

    def prepare(self, model, *, optimizer=None, params=None):
        self.calls_: list[str] = ["prepare"]
        self._start()
        return self

    def finish(self) -> None:
        super().finish()
        self.calls_.append("finish")


def test_finish_runs_after_a_normal_end_only():
    register("test_counting")(_Counting)
    try:
        model = torch.nn.Linear(2, 2)
        ok = _Counting()
        with ok.attached(model):
            assert ok.is_attached
        assert ok.calls_ == ["prepare", "finish"] and not ok.is_attached
        bad = _Counting()
        with pytest.raises(RuntimeError, match="diverged"), bad.attached(model):
            raise RuntimeError("diverged")
        assert bad.calls_ == ["prepare"] and not bad.is_attached
    finally:
        unregister("test_counting")
    assert "test_counting" not in METHODS


def test_strategies_registered_by_other_modules_are_known_before_those_modules_are_imported() -> (
    None
):
    """WeightBlocker and the published defenses register through the ``revlens.blocking`` entry
    points: a fresh process knows their names (and builds them by name) without importing them."""
    import subprocess
    import sys

    code = (
        "import sys; from revlens.block.registry import method_class, method_names; "
        "assert 'revlens.defenses' not in sys.modules; names = method_names(); "
        "print(','.join(names)); print(method_class('safelora').__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"weights", "safelora", "asft", "safety_freeze", "procon"} <= set(out[0].split(","))
    assert out[1] == "revlens.defenses.safelora"
