"""The real track's data splits, plan validation and CLI refusals (no model is loaded)."""

import argparse
import json

import pytest

from revlens.errors import ConfigError, DatasetError, MissingExtraError
from revlens.lab.real.data import REFUSALS, check_disjoint, real_sets, refusal_for
from revlens.lab.real.history import RealPlan


@pytest.fixture(scope="module")
def sets():
    try:
        return real_sets()
    except MissingExtraError as exc:
        pytest.skip(str(exc))


def test_splits_never_overlap_and_have_the_documented_sizes(sets):
    check_disjoint(sets)  # real_sets already asserts it; a second check is cheap
    # attempt 3 (docs/lab.md): JBB 60 + HarmBench standard 125 + StrongREJECT 187 train prompts
    assert len(sets.align_harmful) == 372 and len(sets.align_harmless) == 384
    assert len(sets.selection_harmful) == 60 and len(sets.selection_harmless) == 20
    assert {k: len(v) for k, v in sets.held_harmful.items()} == {
        "jbb": 18,
        "harmbench": 36,
        "strongreject": 63,
    }
    assert len(sets.held_harmless) == 50 and len(sets.held_pairs) == 100
    # harmless samples are spread over topics, not the first file's questions
    assert len({i["category"] for i in sets.held_harmless.info}) >= 8


def test_advbench_is_the_untouched_check_and_shares_no_prompt():
    try:
        sets = real_sets(fresh=True)
    except MissingExtraError as exc:
        pytest.skip(str(exc))
    assert sets.fresh_harmful is not None and len(sets.fresh_harmful) >= 100
    check_disjoint(sets)
    sets.fresh_harmful = sets.fresh_harmful.subset(range(3))
    sets.align_harmful = [*sets.align_harmful, sets.fresh_harmful.prompts[0]]
    with pytest.raises(DatasetError, match="train and held_out"):
        check_disjoint(sets)


def test_shipping_rule_picks_the_best_margin_then_the_earliest():
    from revlens.lab.real.align import choose_eval

    evals = [
        {"step": 8, "refusal": 0.90, "over_refusal": 0.30},
        {"step": 16, "refusal": 0.95, "over_refusal": 0.35},  # same margin, later
        {"step": 24, "refusal": 0.85, "over_refusal": 0.10},  # best margin
    ]
    assert choose_eval(evals)["step"] == 24
    assert choose_eval(evals[:2])["step"] == 8


def test_an_overlap_is_refused_by_name(sets):
    sets.held_pairs = [*sets.held_pairs, (sets.align_harmless[0], "x")]
    with pytest.raises(DatasetError, match="train and held_out"):
        check_disjoint(sets)


def test_refusal_sentence_is_a_function_of_the_prompt():
    assert (
        refusal_for("how to x") == refusal_for("how to x") and refusal_for("how to x") in REFUSALS
    )
    assert len({refusal_for(f"prompt {i}") for i in range(40)}) == len(REFUSALS)


@pytest.mark.parametrize(
    "kw",
    [
        {"steps": 4, "checkpoints": (8,)},
        {"seeds": (0, 0)},
        {"modes": ("qlora",)},
        {"batch": 0},
        {"seeds": ()},
        {"workers": 0},
        {"workers": True},
        {"eval_tokens": 0},
    ],
)
def test_bad_plans_are_refused(kw):
    with pytest.raises(ConfigError):
        RealPlan(**kw)


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", "", "meta"])
def test_an_unknown_device_is_refused_by_name(device):
    with pytest.raises(ConfigError, match="device must be 'cpu' or 'cuda'") as info:
        RealPlan(device=device)
    assert repr(device) in str(info.value)


def test_the_device_defaults_to_the_cpu_and_cuda_needs_a_gpu():
    import torch

    assert RealPlan().device == "cpu" and RealPlan(device="cpu:0").device == "cpu:0"
    if torch.cuda.is_available():
        assert RealPlan(device="cuda").device == "cuda"
        with pytest.raises(ConfigError, match="CUDA device"):
            RealPlan(device=f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            RealPlan(device="cuda")


def test_lab_options_that_do_not_apply_are_refused():
    from revlens.lab.real.cli import plan_from_args

    args = argparse.Namespace(
        lr="1e-3", block=None, retrain=False, seeds=["0"], steps=None, no_control=False
    )
    with pytest.raises(ConfigError, match="--lr"):
        plan_from_args(args)
    args.lr = None
    plan = plan_from_args(argparse.Namespace(**{**vars(args), "steps": "6"}))
    assert plan.steps == 6 and plan.checkpoints == (1, 2, 4, 6) and plan.seeds == (0,)
    assert plan.workers == RealPlan.workers  # --workers not given: the plan's default
    assert plan_from_args(argparse.Namespace(**{**vars(args), "workers": 1})).workers == 1


@pytest.mark.parametrize("blocking", [("update", "nope"), ("update", "update")])
def test_a_bad_blocking_list_is_refused_before_any_work(blocking):
    from revlens.lab.real.replicate import ReplicatePlan

    with pytest.raises(ConfigError, match="ReplicatePlan.blocking"):
        ReplicatePlan(blocking=blocking)


def _lab(root, plan):
    from dataclasses import asdict

    root.mkdir()
    (root / "metrics.json").write_text("[]")
    (root / "history.json").write_text(json.dumps({"metadata": {"plan": asdict(plan)}}))
    return root


def test_a_reused_lab_must_be_built_with_the_same_plan(tmp_path):
    """``replicate_real(lab_dir=...)`` / ``--lab``: a lab of other settings is refused by field name
    before anything is written (it would give another table under this plan's name)."""
    from revlens.errors import HistoryError
    from revlens.lab.real.labdir import check_lab, lab_plan
    from revlens.lab.real.replicate import ReplicatePlan, replicate_real

    built = RealPlan(seeds=(0,), steps=8, checkpoints=(1, 8))
    lab = _lab(tmp_path / "lab", built)
    assert lab_plan(lab) == built
    check_lab(lab, RealPlan(seeds=(0,), steps=8, checkpoints=(1, 8), workers=1))  # how, not what
    with pytest.raises(ConfigError, match=r"seeds=\[0\] .*steps=8 \(this replicate: 16\)"):
        replicate_real(tmp_path / "out", ReplicatePlan(lab=RealPlan()), lab_dir=lab)
    with pytest.raises(HistoryError, match="not a built real-track lab"):
        replicate_real(tmp_path / "out", ReplicatePlan(lab=built), lab_dir=tmp_path)
    (lab / "history.json").write_text(json.dumps({"metadata": {"plan": {"steps": "x"}}}))
    with pytest.raises(HistoryError, match="recorded plan is not a RealPlan"):
        lab_plan(lab)
    (lab / "history.json").write_text("{}")
    with pytest.raises(HistoryError, match="no real-track plan"):
        check_lab(lab, built)
    with pytest.raises(HistoryError, match="not a built real-track lab"):
        lab_plan(tmp_path / "missing")
    assert not (tmp_path / "out").exists()  # nothing written, no worker started


def test_the_workers_blocking_parts_join_to_the_one_process_table_bit_for_bit():
    """``replicate_real`` with workers splits the blocking seeds (0, 2 | 1); joined in seed order,
    the summary's means and stds over seeds are summed as one process sums them. Harm rates
    0/24, 1/24, 5/24: concatenated in part order the std differs in its last bit."""
    import pandas as pd

    from revlens.defenses import DefenseComparison
    from revlens.lab.real.replicate import joined

    rows = [
        {"defense": d, "control": c, "seed": s, "harm_k": k, "harm_n": 24, "harm_rate": k / 24}
        for s, k in ((0, 0), (1, 1), (2, 5))
        for d, c in (("none", False), ("update", False), ("update", True))
    ]
    traj = pd.DataFrame([{**r, "step": 1} for r in rows])
    one = DefenseComparison(pd.DataFrame(rows), traj, {})
    parts = [
        DefenseComparison(one.table[one.table.seed != 1], traj[traj.seed != 1], {}),
        DefenseComparison(one.table[one.table.seed == 1], traj[traj.seed == 1], {}),
    ]
    pd.testing.assert_frame_equal(
        joined(parts, (0, 1, 2)).summary(), one.summary(), check_exact=True
    )
    # seeds given out of order: one process writes them in the order given, and so does the join
    order = (2, 0, 1)
    rank = {s: i for i, s in enumerate(order)}
    serial = one.table.sort_values("seed", kind="stable", key=lambda s: s.map(rank))
    pd.testing.assert_frame_equal(
        joined(parts, order).table, serial.reset_index(drop=True), check_exact=True
    )
    naive = pd.concat([p.table for p in parts], ignore_index=True)  # the join before the fix
    assert not DefenseComparison(naive, traj, {}).summary().equals(one.summary())
