"""compare_defenses on a tiny real GPT-2 history: one table (each defense beside its random control,
the undefended run, harm with its Wilson interval, drift along v_rev and r, the reverted fraction,
multiples of the undefended run), resumable per-run results keyed by what changes them, save/load,
figure and HTML, the command line, and bad inputs refused before any training."""

import json

import pandas as pd
import plotly.graph_objects as go
import pytest

import revlens
from revlens.defenses import (
    CompareConfig,
    DefenseComparison,
    EvalSets,
    FinetuneRecipe,
    compare_defenses,
)
from revlens.defenses.recipe import FinetuneRecipe as Recipe
from revlens.errors import ConfigError, DatasetError

W = [f"w{i}" for i in range(30)]
DATA = [(f"{W[i]} {W[i + 1]}", f"{W[i + 2]}") for i in range(0, 20)]
HARMFUL = [f"{W[i]} {W[i + 3]} {W[i + 7]}" for i in range(10)]
HARMLESS = [f"{W[i + 2]} {W[i + 1]}" for i in range(8)]
PROBES = [f"{W[i + 5]} {W[i]} {W[i + 9]}" for i in range(12)]
ALIGN = [(p, "w0") for p in PROBES[:6]]
DEFENSES = ("safelora", "asft", "lisa", "update", "update_r", "weights", "procon")


def _sets(**kw):
    return EvalSets(
        harmful=HARMFUL,
        harmless=HARMLESS,
        probes=PROBES,
        task=DATA[:6],
        alignment=ALIGN,
        harm={"name": "logit_diff", "pos": ["w5"], "neg": ["w0"]},
        **kw,
    )


def _recipe(**kw):
    return FinetuneRecipe(data=DATA, steps=2, batch_size=4, lr=0.05, optimizer="sgd", **kw)


@pytest.fixture(scope="module")
def run(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    hist = {"base": str(pair["base"]), "aligned": str(pair["aligned"])}
    cmp = compare_defenses(
        hist,
        _recipe(),
        _sets(),
        defenses=DEFENSES,
        seeds=(0, 1),
        trajectory_points=2,
        lisa_user_steps=1,
        out=out,
        progress=False,
    )
    return hist, out, cmp


def test_one_table_with_every_defense_beside_its_control(run):
    _, _, cmp = run
    t = cmp.table
    assert len(t) == (1 + 2 * len(DEFENSES)) * 2
    assert set(t["defense"]) == {"none", *DEFENSES}
    assert t.groupby(["defense", "seed"])["control"].nunique().loc[list(DEFENSES)].eq(2).all()
    assert (t["harm_n"] == len(HARMFUL)).all() and t["harm_k"].between(0, len(HARMFUL)).all()
    assert ((t["harm_lo"] <= t["harm_rate"]) & (t["harm_rate"] <= t["harm_hi"])).all()
    for col in (
        "kl_aligned",
        "over_refusal",
        "task_loss",
        "cos_drift_v_rev",
        "cos_drift_r",
        "reverted_fraction",
        "time_multiple",
        "peak_mb",
    ):
        assert col in t and t[col].notna().all(), col
    # memory multiples only where the undefended run's peak is a usable denominator (>= 16 MB)
    free = t[t["defense"] == "none"].set_index("seed")["peak_mb"]
    assert (t["mem_multiple"].isna() == (t["seed"].map(free) < 16)).all()
    assert t["cos_drift_v_rev"].between(-1, 1).all() and (t["kl_aligned"] >= 0).all()
    assert (t.loc[t["defense"] == "none", "time_multiple"] == 1.0).all()
    # the update projection along v_rev holds the drift off v_rev; each control is a different run
    mean = t.groupby(["defense", "control"])["cos_drift_v_rev"].mean()
    assert abs(mean[("update", False)]) < 0.2
    # ... and the same projection along r holds the drift off r (its control does not have to)
    mean_r = t.groupby(["defense", "control"])["cos_drift_r"].mean()
    assert abs(mean_r[("update_r", False)]) < 0.2 < abs(mean_r[("none", False)]), mean_r
    pub, ctl = (t[(t["defense"] == "safelora") & (t["control"] == c)] for c in (False, True))
    assert (
        not pub["harm_score"]
        .reset_index(drop=True)
        .equals(ctl["harm_score"].reset_index(drop=True))
    )
    # the trajectory: harm at step 1 and at T for every run
    assert set(cmp.trajectories["step"]) == {1, 2} and len(cmp.trajectories) == 2 * len(t)
    s = cmp.summary()
    assert (s["n_seeds"] == 2).all() and (s["harm_n"] == 2 * len(HARMFUL)).all()
    text = cmp.printed()
    assert "asft (random control)" in text and "harm k/n [95% CI]" in text


def test_resumes_what_is_done_and_recomputes_what_changed(run, monkeypatch):
    hist, out, cmp = run
    files = sorted(out.glob("runs/*/*.json"))
    assert len(files) == len(cmp.table)
    calls = []
    real = Recipe.train
    monkeypatch.setattr(
        Recipe, "train", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1]
    )
    again = compare_defenses(
        hist,
        _recipe(),
        _sets(),
        defenses=DEFENSES,
        seeds=(0, 1),
        trajectory_points=2,
        lisa_user_steps=1,
        out=out,
        progress=False,
    )
    assert calls == []  # nothing retrained
    pd.testing.assert_frame_equal(again.table, cmp.table)
    compare_defenses(
        hist,
        _recipe(),
        _sets(),
        defenses=("asft",),
        seeds=(0,),
        trajectory_points=2,
        asft_lam=0.5,
        out=out,
        progress=False,
    )
    assert len(calls) == 2  # asft and its control at the new λ; the undefended run was reused
    assert len(sorted(out.glob("runs/*/*.json"))) == len(files) + 2


def test_save_load_figure_html(run, tmp_path):
    _, _, cmp = run
    cmp.save(tmp_path / "c")
    back = revlens.load(tmp_path / "c")
    assert isinstance(back, DefenseComparison)
    pd.testing.assert_frame_equal(back.summary(), cmp.summary())
    fig = back.figure()
    assert isinstance(fig, go.Figure) and any(
        "random control" in (tr.name or "") for tr in fig.data
    )
    html = back.to_html(tmp_path / "d.html").read_text()
    assert "<h2>Defenses</h2>" in html and "asft (random control)" in html


def test_bad_inputs_refused_before_training(pair, tmp_path, monkeypatch):
    hist = {"base": str(pair["base"]), "aligned": str(pair["aligned"])}
    monkeypatch.setattr(Recipe, "train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError, match="lisa needs alignment data|'lisa' needs alignment"):
        compare_defenses(
            hist,
            _recipe(),
            EvalSets(harmful=HARMFUL, harmless=HARMLESS, probes=PROBES),
            defenses=("lisa",),
            out=tmp_path / "o",
            progress=False,
        )
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="recipe must be a FinetuneRecipe"):
        compare_defenses(hist, {"steps": 2}, _sets(), progress=False)
    with pytest.raises(ConfigError, match="data= is required"):
        compare_defenses(hist, FinetuneRecipe(), _sets(), progress=False)
    with pytest.raises(ConfigError, match="defenses"):
        compare_defenses(hist, _recipe(), _sets(), defenses=("safelora", "nope"), progress=False)
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        CompareConfig(seeds=(0, 0))
    with pytest.raises(ConfigError, match="asft_lam must be >= 0"):
        CompareConfig(asft_lam=-1.0)
    with pytest.raises(ConfigError, match="EvalSets.harmful"):
        EvalSets(harmful=[], harmless=HARMLESS, probes=PROBES)
    with pytest.raises(DatasetError):
        FinetuneRecipe(data=[("w1", "")])
    with pytest.raises(ConfigError, match="optimizer"):
        FinetuneRecipe(data=DATA, optimizer="lion")


def test_the_command_line(pair, tmp_path, capsys):
    from revlens.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["defenses", "compare", "--help"])
    assert exc.value.code == 0 and "module:callable" in capsys.readouterr().out
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "data": [list(p) for p in DATA],
                "steps": 1,
                "batch_size": 4,
                "lr": 0.05,
                "optimizer": "sgd",
            }
        )
    )
    sets = tmp_path / "sets.json"
    sets.write_text(
        json.dumps(
            {
                "harmful": HARMFUL,
                "harmless": HARMLESS,
                "probes": PROBES,
                "harm": {"name": "logit_diff", "pos": ["w5"], "neg": ["w0"]},
            }
        )
    )
    (tmp_path / "h").mkdir()
    for role in ("base", "aligned"):
        (tmp_path / "h" / role).symlink_to(pair[role])
    code = main(
        [
            "defenses",
            "compare",
            str(tmp_path / "h"),
            "--recipe",
            str(recipe),
            "--sets",
            str(sets),
            "--out",
            str(tmp_path / "out"),
            "--defenses",
            "asft",
            "--seeds",
            "0",
            "--trajectory-points",
            "0",
            "--html",
            str(tmp_path / "p.html"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "asft (random control)" in printed and (tmp_path / "p.html").is_file()
    assert isinstance(revlens.load(tmp_path / "out" / "comparison"), DefenseComparison)
    assert (
        main(
            [
                "defenses",
                "compare",
                str(tmp_path / "h"),
                "--recipe",
                "nope:x",
                "--sets",
                str(sets),
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
