"""The real track's defense comparison entry point without the model: its plan is validated (typed
errors naming the field), a missing adapter is refused, and ``revlens defenses compare`` takes the
track's history, recipe and sets as module:callable."""

import pytest

from revlens.errors import ConfigError
from revlens.lab import real_defenses as rd


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"steps": 0}, "steps"),
        ({"n_harmful": True}, "n_harmful"),
        ({"lr": 0.0}, "lr"),
        ({"harmful_sources": ("jbb",)}, "harmful_sources"),
        ({"harmful_sources": ("jbb", "advbench")}, "harmful_sources"),
        ({"layers": (0, 5)}, "layers"),
        ({"layers": ()}, "layers"),
    ],
)
def test_bad_plans_are_refused_by_name(bad, match):
    with pytest.raises(ConfigError, match=match):
        rd.RealDefensePlan(**bad)


def test_the_default_plan_is_the_documented_one():
    p = rd.RealDefensePlan()
    assert (p.steps, p.batch_size, p.lr, p.lora_rank, p.n_harmful, p.max_new_tokens) == (
        6,
        4,
        1e-3,
        8,
        12,
        16,
    )
    assert p.harmful_sources == ("jbb", "harmbench") and p.layers == (5, 10, 15, 20, 25, 30)
    assert rd.REAL_DEFENSES[:5] == ("update", "safelora", "asft", "safety_freeze", "procon")


def test_a_missing_adapter_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no safety adapter"):
        rd.real_history(adapter=tmp_path)


def test_the_command_line_takes_the_real_track_by_module_callable(monkeypatch, tmp_path):
    import revlens.defenses as d
    from revlens.cli import main
    from revlens.defenses import EvalSets, FinetuneRecipe
    from revlens.history import History

    seen = {}

    class Result:
        def __init__(self):
            self.meta = {"date": "d", "machine": "m"}

        def save(self, path):
            seen["saved"] = path

        def printed(self):
            return "TABLE"

    import tiny

    pair = tiny.save(tiny.tiny_model(0), tmp_path / "pair")
    hist = History.from_dirs(base=pair, aligned=pair)
    recipe = FinetuneRecipe(data=[("a", "b")], steps=2)
    sets = EvalSets(harmful=["x"], harmless=["y"], probes=["z"])
    monkeypatch.setattr(rd, "real_history", lambda: hist)
    monkeypatch.setattr(rd, "real_recipe", lambda: recipe)
    monkeypatch.setattr(rd, "real_eval_sets", lambda: sets)

    def fake(history, recipe, sets, *, config, out, device):
        seen.update(history=history, recipe=recipe, sets=sets, config=config)
        return Result()

    monkeypatch.setattr(d, "compare_defenses", fake)
    m = "revlens.lab.real_defenses:"
    assert (
        main(
            [
                "defenses",
                "compare",
                m + "real_history",
                "--recipe",
                m + "real_recipe",
                "--sets",
                m + "real_eval_sets",
                "--out",
                str(tmp_path / "o"),
                "--steps",
                "3",
                "--seeds",
                "4",
                "5",
                "6",
                "--defenses",
                *rd.REAL_DEFENSES,
            ]
        )
        == 0
    )
    assert seen["history"] is hist and seen["sets"] is sets and seen["recipe"].steps == 3
    assert seen["config"].defenses == rd.REAL_DEFENSES and seen["config"].seeds == (4, 5, 6)
