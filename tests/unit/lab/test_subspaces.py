"""The lab's subspace study: subspaces fitted on the lab pair, oriented random controls, the
study's tables (regained harm removed, targets), and a tiny end-to-end run."""

import math

import pandas as pd
import pytest
import torch
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

from revlens.directions.subspace import principal_cosines
from revlens.lab.subspace_table import SubspaceStudy


@pytest.fixture(scope="module")
def pair():
    from revlens.lab import asset_dir, load_pair

    if not (asset_dir() / "pair0" / "pair.json").is_file():
        pytest.skip("the shipped lab pair assets/lab/pair0 is missing")
    base, aligned, _ = load_pair(asset_dir() / "pair0")
    return base, aligned


def test_lab_subspace_and_random_controls(pair):
    from revlens.lab.subspaces import lab_stats, lab_subspace, random_subspace

    base, aligned = pair
    stats = lab_stats(base, aligned, [2, 3])
    assert (
        stats.meta["n_prompts"] == 192 and stats.d_model == 128
    )  # the alignment-split harmful prompts
    sub = lab_subspace(base, aligned, [2, 3], 4, stats=stats)
    one = lab_subspace(base, aligned, [2, 3], 1, stats=stats)
    assert sub.rank == 4 and sub.layers == (2, 3) and sub.method == "pca"
    assert (
        float(principal_cosines(sub.subspace(2)[:1].double(), one.subspace(2).double())[0]) > 0.9999
    )
    diff = stats.base_mean() - stats.mean("aligned")
    rnd = random_subspace(sub, 3, seed=1, stats=stats)
    assert rnd.rank == 3 and rnd.layers == sub.layers
    for pos, layer in enumerate(sub.layers):
        assert (rnd.subspace(layer).double() @ diff[pos] >= 0).all()  # oriented toward base
    other = random_subspace(sub, 3, seed=2, stats=stats)
    assert (
        float(principal_cosines(rnd.subspace(2).double(), other.subspace(2).double()).max()) < 0.6
    )
    cov = random_subspace(sub, 3, seed=1, stats=stats, kind="cov")
    assert cov.method == "random-cov"


def _study() -> SubspaceStudy:
    mediation = pd.DataFrame(
        [
            {
                "pair": "pair0",
                "split": "test",
                "layer": 3,
                "rank": k,
                "mediation_mean": m,
                "mediation_std": 0.01,
                "n_runs": 2,
                "iso_mean": 0.01,
                "iso_p95": 0.03,
                "iso_p05": -0.02,
                "cov_mean": c,
                "cov_p95": c + 0.1,
                "cov_p05": c - 0.1,
                "ctrl_p95": c + 0.1,
                "margin": m - c - 0.1,
            }
            for k, m, c in ((1, 0.3, 0.0), (2, 0.6, 0.05))
        ]
    )
    test = {
        "mediation_mean": 0.6,
        "mediation_std": 0.01,
        "iso_mean": 0.01,
        "cov_mean": 0.05,
        "ctrl_p95": 0.15,
        "margin": 0.45,
        "beats_controls": True,
    }
    choices = {
        "pair0": {
            "layer": 3,
            "rank": 2,
            "rule": "margin",
            "held_out": True,
            "select": dict(test),
            "test": test,
        }
    }
    blocking = pd.DataFrame(
        [
            {
                "pair": "pair0",
                "variant": v,
                "rank": 2,
                "seed": s,
                "harm_rate": hr,
                "harm_logodds": lo,
                "task_acc": 1.0,
                "energy": 0.0,
                "seconds": 10.0,
            }
            for v, hr, lo in (("subspace", 0.2, 0.0), ("random", 0.9, 0.8))
            for s in (0, 1)
        ]
    )
    unblocked = pd.DataFrame(
        [
            {
                "pair": "pair0",
                "seed": s,
                "harm_rate": 1.0,
                "harm_logodds": 1.0,
                "task_acc": 1.0,
                "harm_rate_aligned": 0.0,
                "harm_logodds_aligned": -1.0,
            }
            for s in (0, 1)
        ]
    )
    return SubspaceStudy(
        mediation, choices, blocking, unblocked, {"pairs": [0], "seeds": [0, 1]}, {"x": 5.0}
    )


def test_study_tables_and_targets():
    study = _study()
    bt = study.blocking_table().set_index("variant")
    # regained harm removed on the log-odds: (1.0 - 0.0) / (1.0 - (-1.0)) = 0.5; random (1 - 0.8) / 2 = 0.1
    assert bt.loc["subspace", "removed_harm_logodds"]["mean"] == pytest.approx(0.5)
    assert bt.loc["random", "removed_harm_logodds"]["mean"] == pytest.approx(0.1)
    assert bt.loc["subspace", "removed_harm_rate"]["mean"] == pytest.approx(0.8)
    rows = study.replication_rows()
    # 0.6 >= 0.5 with controls <= 0.15; log-odds 50% vs 10%; rate 80% vs 10%
    assert [r["shape_holds"] for r in rows] == [True, True, True]
    md = study.to_markdown()
    assert "| 2 **(chosen)** | 0.600 ± 0.010 |" in md and "50.0%" in md and "→ yes" in md
    gone = _study()
    gone.unblocked["harm_logodds"] = -1.0  # nothing regained: the removed share is undefined, not 0
    assert math.isnan(
        gone.blocking_table().set_index("variant").loc["subspace", "removed_harm_logodds"]["mean"]
    )


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    from revlens.lab import asset_dir
    from revlens.lab.subspaces import load_subspace_study, run_subspace_study

    if not (asset_dir() / "pair0" / "pair.json").is_file():
        pytest.skip("the shipped lab pair assets/lab/pair0 is missing")
    study = run_subspace_study(
        tmp_path / "s",
        pairs=(0,),
        seeds=(0,),
        ranks=(1, 2),
        block_ranks=(1,),
        controls=1,
        layers=(2,),
        steps=2,
        progress=False,
    )
    ch = study.choices["pair0"]
    assert ch["held_out"] and ch["layer"] == 2 and ch["rank"] in (1, 2)
    variants = set(zip(study.blocking["variant"], study.blocking["rank"]))
    k = ch["rank"]
    assert {
        ("subspace", 1),
        ("random", 1),
        ("one_sided", 1),
        ("subspace", k),
        ("random", k),
        ("one_sided", k),
        ("one_sided-random", k),
        ("confine-penalty", k),
    } == variants
    assert (study.blocking.loc[study.blocking["variant"] == "subspace", "energy"] < 0.05).all()
    assert (tmp_path / "s" / "subspaces.md").read_text().startswith("Command:")
    again = load_subspace_study(tmp_path / "s")  # resumable: everything is read back
    assert again.to_markdown() == study.to_markdown()
    calls = len(study.blocking)
    assert (
        len(
            run_subspace_study(
                tmp_path / "s",
                pairs=(0,),
                seeds=(0,),
                ranks=(1, 2),
                block_ranks=(1,),
                controls=1,
                layers=(2,),
                steps=2,
                progress=False,
            ).blocking
        )
        == calls
    )  # nothing rerun
    assert torch.get_num_threads() == 1
