"""revlens replicate: the table arithmetic (pooled over seeds and pairs), argument checks, and a
tiny end-to-end run on the lab."""

import argparse
import json
import math

import numpy as np
import pytest

from revlens.errors import ConfigError
from revlens.lab.replicate import Replication, check_args, replicate, summary_markdown
from revlens.lab.replicate_pair import Plan
from revlens.lab.replicate_table import (
    blocking_rows,
    drift_rows,
    per_pair,
    pool,
    pool_count,
    records_frame,
)

PAIRS, SEEDS = ("pair0", "pair1"), (0, 1, 2)


def _records(cos_first, harm=None):
    """Records for 2 pairs × 3 seeds: cos_first[pair][seed], 4 of 5 steps above the iso null."""
    out = []
    for i, p in enumerate(PAIRS):
        out.append(
            {"pair": p, "run": "aligned", "group": "aligned", "quantity": "harm", "value": 0.0}
        )
        for j, s in enumerate(SEEDS):
            run = f"seed{s}"
            for q, v in (
                ("cos_first", cos_first[i][j]),
                ("cos_step20", 0.5),
                ("final_cos", 0.6),
                ("above_iso", 4),
                ("above_iso_total", 5),
                ("above_cov", 5),
                ("above_cov_total", 5),
                ("harm_T", 0.8),
                ("task_acc_T", 1.0),
            ):
                out.append({"pair": p, "run": run, "group": "runs", "quantity": q, "value": v})
            for group, h, c in (
                ("update", 0.2, 0.0),
                ("update-random", 0.7 if harm is None else harm, 0.5),
            ):
                for q, v in (("harm_T", h), ("final_cos", c), ("task_acc_T", 1.0)):
                    out.append(
                        {
                            "pair": p,
                            "run": f"{group}/{run}",
                            "group": group,
                            "quantity": q,
                            "value": v,
                        }
                    )
    return records_frame(out)


META = {
    p: {"best_layer": b, "step20": 20, "T": 100, "iso_p99": 0.2, "cov_p99": 0.4}
    for p, b in zip(PAIRS, (2, 3))
}


def test_pool_is_mean_and_sample_std_over_seeds_and_pairs():
    cos = [[0.1, 0.2, 0.3], [0.5, 0.6, 0.7]]
    rec = _records(cos)
    got = pool(rec, "runs", "cos_first")
    flat = np.array(cos).ravel()
    assert got["n"] == 6
    assert got["mean"] == pytest.approx(flat.mean())
    assert got["std"] == pytest.approx(
        flat.std(ddof=1)
    )  # over all 6 runs, not the mean of per-pair stds
    assert pool_count(rec, "runs", "above_iso") == {
        "count": 24,
        "total": 30,
    }  # 4 of 5 steps × 6 runs, summed
    empty = pool(rec, "runs", "nothing")
    assert empty["n"] == 0 and math.isnan(empty["mean"])
    assert per_pair(META, "best_layer") == "pair0: 2, pair1: 3" and per_pair(META, "T") == "100"


def test_rows_judge_the_shape_with_their_controls():
    rows = {r["claim"]: r for r in drift_rows(_records([[0.3] * 3, [0.3] * 3]), META)}
    first = rows["cos(drift, v_rev) after the first update (AdamW)"]
    assert (
        first["shape_holds"]
        and first["revlens_lab"] == "0.300 ± 0.000"
        and first["paper"] == "0.429 ± 0.052"
    )
    assert (
        "best layer (pair0: 2, pair1: 3)" in first["note"]
        and "covariance-matched p99 0.400" in first["note"]
    )
    assert rows["run-step pairs above the isotropic p99"]["revlens_lab"] == "24 / 30"
    assert rows["run-step pairs above the isotropic p99"]["shape_holds"] is False  # 80 % < 90 %
    assert rows["run-step pairs above the covariance-matched p99"]["shape_holds"] is True
    low = {r["claim"]: r for r in drift_rows(_records([[0.1] * 3, [0.1] * 3]), META)}
    assert (
        low["cos(drift, v_rev) after the first update (AdamW)"]["shape_holds"] is False
    )  # below the iso p99

    def random_row(harm):
        rows = blocking_rows(_records([[0.3] * 3] * 2, harm=harm), ["update"])
        (row,) = [r for r in rows if "random-direction control" in r["claim"]]
        return row

    # unblocked 0.8, blocked 0.2: the control must remove < half of the 0.6 removed, i.e. stay above 0.5
    assert random_row(0.7)["shape_holds"] is True
    assert random_row(0.45)["shape_holds"] is False
    assert random_row(0.45)["revlens_lab"].startswith(
        "45.0% ± 0.0% (blocked 20.0% ± 0.0%, unblocked 80.0% ± 0.0%)"
    )


def _args(**kw):
    base = {"track": None, "pairs": None, "seeds": [0, 1, 2], "full": False, "out": None}
    return argparse.Namespace(**{**base, **kw})


def test_check_args_defaults_full_and_culprits(tmp_path):
    tracks, pairs, seeds, plan = check_args(_args(out=tmp_path / "o"))
    assert (tracks, pairs, seeds) == (["pretrain-like"], [0], [0, 1, 2]) and plan.block_methods == (
        "update",
    )
    tracks, pairs, _, plan = check_args(_args(out=tmp_path / "o", full=True))
    assert tracks == ["remap", "pretrain-like", "lora", "chat"] and pairs == [0, 1]
    assert (
        set(plan.block_methods) == {"update", "gradient", "penalty", "hook"} and plan.rank_blocking
    )
    assert plan.workers == 2 and check_args(_args(out=tmp_path / "o", workers=1))[3].workers == 1
    for kw, match in (
        ({"track": ["pretrain"]}, r"--track: unknown track\(s\) \['pretrain'\]"),
        ({"pairs": [0, 5]}, r"--pairs: no shipped pair \[5\]"),
        ({"seeds": [-1]}, "--seeds must be distinct non-negative"),
    ):
        with pytest.raises(ConfigError, match=match):
            check_args(_args(out=tmp_path / "o", **kw))
    assert not (tmp_path / "o").exists()


TINY = Plan(ranks=(1, 2), controls=2, ft_steps=3, block_checkpoints=(1,), sgd_lr=0.1)


@pytest.fixture(scope="module")
def tiny_rep(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("replicate")
    return out, replicate(out, track="pretrain-like", seeds=[0, 1], plan=TINY, progress=False)


@pytest.mark.slow  # ~30 s on an idle 2-core machine (the fixture runs a whole tiny replication)
def test_tiny_replication_end_to_end(tiny_rep):
    out, rep = tiny_rep
    assert isinstance(rep, Replication) and rep.track == "pretrain-like"
    md = (out / "pretrain-like" / "replication.md").read_text()
    js = json.loads((out / "pretrain-like" / "replication.json").read_text())
    assert "revlens replicate --track pretrain-like --pairs 0 --seeds 0 1" in md
    claims = [r["claim"] for r in js["rows"]]
    assert any("random-direction control" in c for c in claims)
    assert any("SGD momentum" in c for c in claims) and any(
        "held-out-chosen k" in c for c in claims
    )
    assert any(c.startswith("weight space") for c in claims)
    assert any("covariance-matched" in c for c in claims) and any(
        "fine-tune from base" in c for c in claims
    )
    # every cos row pools the 2 seeds of the one pair; the table quotes exactly the records' numbers
    first = pool(rep.records, "runs", "cos_first")
    assert first["n"] == 2
    row = next(
        r
        for r in rep.rows
        if r["claim"].startswith("cos(drift, v_rev) after the first update (AdamW)")
    )
    assert row["revlens_lab"] == f"{first['mean']:.3f} ± {first['std']:.3f}"
    blocked = rep.records[rep.records["group"] == "update-random"]
    assert set(blocked["run"]) == {"update-random/seed0", "update-random/seed1"}
    assert rep.meta["pair0"]["T"] == 3 and rep.meta["pair0"]["chosen_k"] in (1, 2)
    assert "| `pretrain-like` |" in summary_markdown({"pretrain-like": rep})


@pytest.mark.slow
def test_tiny_replication_resumes_per_pair(tiny_rep):
    out, rep = tiny_rep
    measures = out / "pretrain-like" / "pair0" / "measures.json"
    stamp = measures.stat().st_mtime_ns
    again = replicate(out, track="pretrain-like", seeds=[0, 1], plan=TINY, progress=False)
    assert measures.stat().st_mtime_ns == stamp  # read back, not rerun
    assert [r["revlens_lab"] for r in again.rows] == [r["revlens_lab"] for r in rep.rows]


@pytest.mark.slow
def test_blocking_controls_in_a_second_process_change_no_number(tiny_rep, tmp_path):
    """workers=2 (default: the random-direction controls in a second process, merged back) writes the
    same table and the same lab files, in the same order, as everything in one process (workers=1)."""
    import dataclasses

    out, rep = tiny_rep
    assert (
        TINY.workers == 2 and "workers" not in TINY.to_dict()
    )  # how it runs is not part of the plan's key
    seq = replicate(
        tmp_path,
        track="pretrain-like",
        seeds=[0, 1],
        plan=dataclasses.replace(TINY, workers=1),
        progress=False,
    )
    assert [r["revlens_lab"] for r in seq.rows] == [r["revlens_lab"] for r in rep.rows]
    par_lab, seq_lab = (
        out / "pretrain-like" / "pair0" / "lab",
        tmp_path / "pretrain-like" / "pair0" / "lab",
    )
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (par_lab, seq_lab)]
    assert [r["checkpoint"] for r in metrics[0]] == [r["checkpoint"] for r in metrics[1]]
    assert [r["harm_logodds"] for r in metrics[0]] == [r["harm_logodds"] for r in metrics[1]]
    runs = [list(json.loads((d / "history.json").read_text())["runs"]) for d in (par_lab, seq_lab)]
    assert runs[0] == runs[1] and "update-random/seed1" in runs[0]
    assert (par_lab / "blocked" / "update-random" / "seed1").is_dir()
    assert not (out / "pretrain-like" / "pair0" / "_scratch-controls").exists()
