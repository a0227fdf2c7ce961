"""The refusal direction as a first-class candidate on a tiny Llama history: estimated on the
aligned checkpoint, selected on a held-out split, then used wherever ``v_rev`` is — analyze's drift
tables (checked against a hand projection of the collected means), a saved and reloaded report,
ablation_study, the monitor on plain HF models, and compare_directions beside both nulls."""

import warnings

import pytest
import torch
import transformers as tf

import families
import revlens
from revlens.causal import ablation_study, select_refusal_direction
from revlens.causal.refusal import RefusalSelectionWarning
from revlens.collect import DegenerateLayerWarning, collect
from revlens.directions import refusal_directions
from revlens.drift import compare_directions
from revlens.metrics import refusal_score
from revlens.monitor import ReversionMonitor
from revlens.probes import Probes

HARMFUL = ["w10 w11", "w12 w13 w14", "w20", "w30 w31 w32", "w33", "w34 w35"]
HARMLESS = ["w50", "w51 w52 w53", "w60 w61", "w70 w71", "w72", "w80 w81 w82"]
TOKENS = ["w40", "w41"]


def split(rows):
    harmful, harmless = [HARMFUL[i] for i in rows], [HARMLESS[i] for i in rows]
    return Probes.from_chat(
        [*harmful, *harmless], labels=["harmful"] * len(harmful) + ["harmless"] * len(harmless)
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    return revlens.History.load(
        families.write_history(tmp_path_factory.mktemp("h"), "llama", n_runs=1, steps=(1, 2, 3))
    )


@pytest.fixture(scope="module")
def selection(history):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        warnings.simplefilter("ignore", RefusalSelectionWarning)
        r = refusal_directions(history, split([0, 1, 2, 3]), position=("post_instruction", 2))
        return select_refusal_direction(
            history, r, split([4, 5]), metric=TOKENS, prune_fraction=0.0
        )


def test_analyze_takes_the_refusal_direction_beside_v_rev(history, selection, tmp_path):
    probes = split(range(6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        report = revlens.analyze(
            history,
            probes,
            methods=["mean_diff", selection.directions],
            layers=[1, 2],
            n_null=20,
            n_stability=0,
            n_bootstrap=0,
            progress=False,
        )
        stats = collect(history, probes, layers=[1, 2], n_bootstrap=0, progress=False)
    assert set(report.directions) == {"mean_diff", "refusal"}
    rows = report.drift[report.drift["method"] == "refusal"]
    assert len(rows) == 3 * 2  # steps × layers
    for _, row in rows.iterrows():
        d = stats.mean(f"seed0/step-{int(row['step'])}") - stats.mean("aligned")
        d = d[stats.layer_pos(int(row["layer"]))]
        r = selection.directions[int(row["layer"])].double()
        assert row["cos"] == pytest.approx(float(d @ r / d.norm()), abs=1e-6)
    saved = report.save(tmp_path / "report")
    back = revlens.load(saved)
    assert torch.equal(back.directions["refusal"].basis, report.directions["refusal"].basis)
    cmp = compare_directions(
        report.directions["mean_diff"], report.directions["refusal"], stats=stats, n_null=200
    )
    assert list(cmp.table["layer"]) == [1, 2] and cmp.table["cov_p"].notna().all()
    v, r = report.directions["mean_diff"][2].double(), selection.directions[2].double()
    assert cmp.table.iloc[1]["cos"] == pytest.approx(float(v @ r), abs=1e-6)
    # the monitor reads the same drift along r from the plain HF models of a fine-tune
    hf = {
        name: tf.AutoModelForCausalLM.from_pretrained(history[name].local_path()).eval()
        for name in ("aligned", "seed0/step-3")
    }
    tok = tf.AutoTokenizer.from_pretrained(history["aligned"].local_path())
    mon = ReversionMonitor(
        selection.directions,
        probes,
        hf["aligned"],
        layers=[1, 2],
        probe_batch_size=None,
        tokenizer=tok,
    )
    table = mon.measure(hf["seed0/step-3"])
    for _, row in table.iterrows():
        want = rows[(rows["step"] == 3) & (rows["layer"] == row["layer"])]["cos"].item()
        assert row["cos"] == pytest.approx(want, abs=1e-5)


def test_ablation_study_along_the_refusal_direction(history, selection):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        report = ablation_study(
            history,
            split(range(6)),
            refusal_score(TOKENS),
            directions=selection.directions,
            layers=[1],
            steps=[3],
            controls=2,
            control_kinds=["iso"],
            progress=False,
        )
    assert report.directions.method == "refusal"
    assert torch.equal(report.directions[1], selection.directions[1])
    assert report.config["directions"] == "refusal"
    assert len(report.effects) > 0


def test_analyze_fits_refusal_by_name_at_every_post_instruction_position(history):
    """By name: one r per (post-instruction position, layer), each equal to that position's r from
    refusal_directions on the same prompts and checkpoint; drift rows with both nulls."""
    probes = split(range(6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        report = revlens.analyze(
            history,
            probes,
            methods=["mean_diff", "refusal"],
            layers=[1, 2],
            position=("post_instruction", 2),
            n_null=20,
            n_stability=0,
            n_bootstrap=0,
            progress=False,
        )
        want = refusal_directions(history, probes, position=("post_instruction", 2), layers=[1, 2])
    assert {"refusal@-2", "refusal@-1"} <= set(report.directions)
    for label in ("-2", "-1"):
        assert torch.allclose(
            report.directions[f"refusal@{label}"].basis, want[label].basis, atol=1e-5
        )
    rows = report.drift[report.drift["method"].str.startswith("refusal")]
    assert len(rows) == 2 * 3 * 2 and rows[["p_iso", "p_cov"]].notna().all().all()
