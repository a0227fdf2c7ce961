"""The real track's defense comparison entry point without the model: its plan is validated (typed
errors naming the field), a missing adapter is refused, and ``revlens defenses real`` wires the plan,
the adapter and the comparison settings through (default defenses: REAL_DEFENSES)."""

import dataclasses

import pytest

from revlens.errors import ConfigError
from revlens.lab import real_defenses as rd


@pytest.mark.parametrize("bad,match", [
    ({"steps": 0}, "steps"),
    ({"n_harmful": True}, "n_harmful"),
    ({"lr": 0.0}, "lr"),
    ({"harmful_sources": ("jbb",)}, "harmful_sources"),
    ({"harmful_sources": ("jbb", "advbench")}, "harmful_sources"),
    ({"layers": (0, 5)}, "layers"),
    ({"layers": ()}, "layers"),
])
def test_bad_plans_are_refused_by_name(bad, match):
    with pytest.raises(ConfigError, match=match):
        rd.RealDefensePlan(**bad)


def test_the_default_plan_is_the_documented_one():
    p = rd.RealDefensePlan()
    assert (p.steps, p.batch_size, p.lr, p.lora_rank, p.n_harmful, p.max_new_tokens) == (6, 4, 1e-3, 8, 12, 16)
    assert p.harmful_sources == ("jbb", "harmbench") and p.layers == (5, 10, 15, 20, 25, 30)
    assert rd.REAL_DEFENSES[:5] == ("update", "safelora", "asft", "safety_freeze", "procon")


def test_a_missing_adapter_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no safety adapter"):
        rd.real_history(adapter=tmp_path)


def test_the_command_line_passes_plan_adapter_and_settings(monkeypatch, tmp_path):
    from revlens.cli import main

    seen = {}

    class Result:
        def __init__(self):
            self.meta = {"date": "d", "machine": "m"}

        def save(self, path):
            seen["saved"] = path

        def printed(self):
            return "TABLE"

    def fake(out, *, plan, adapter, config):
        seen.update(out=out, plan=plan, adapter=adapter, config=config)
        return Result()

    monkeypatch.setattr(rd, "compare_real", fake)
    assert main(["defenses", "real", "--out", str(tmp_path), "--steps", "3", "--seeds", "4", "5", "6"]) == 0
    assert seen["plan"] == dataclasses.replace(rd.RealDefensePlan(), steps=3) and seen["adapter"] is None
    assert seen["config"].defenses == rd.REAL_DEFENSES and seen["config"].seeds == (4, 5, 6)
    assert main(["defenses", "real", "--out", str(tmp_path), "--defenses", "update", "--adapter", "A"]) == 0
    assert seen["config"].defenses == ("update",) and seen["adapter"] == "A"
