"""The lab's side of ``compare_defenses``: ``LabRecipe`` fine-tunes exactly as the lab's ``finetune``
(same batches, same optimizer: the same weights), and ``compare_lab`` on the shipped pair gives every
defense beside its random control, same seed, a few steps."""

import numpy as np
import pytest
import torch

from revlens.errors import ConfigError
from revlens.lab import LabConfig, build_tokenizer
from revlens.lab.defenses import compare_lab, lab_recipe, lab_sets
from revlens.lab.modeling import load_checkpoint
from revlens.lab.runner import asset_dir
from revlens.lab.train import finetune


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_lab_recipe_is_the_labs_finetune():
    aligned = load_checkpoint(asset_dir() / "pair0" / "aligned")
    recipe = lab_recipe("pretrain-like", steps=3)
    assert (recipe.batch_size, recipe.lr, recipe.optimizer) == (32, 1e-3, "adamw")
    ours = recipe.train(aligned, build_tokenizer(), seed=1)
    theirs = finetune(
        aligned, LabConfig.for_track("pretrain-like"), seed=1, steps=3, progress=False
    ).model
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=n)


def test_each_defense_beside_its_control_on_the_same_seed():
    cmp = compare_lab(
        steps=2,
        seeds=(0,),
        defenses=("safelora", "safety_freeze", "procon"),
        trajectory_points=1,
        progress=False,
    )
    t = cmp.table
    assert list(t["defense"]) == [
        "none",
        "safelora",
        "safelora",
        "safety_freeze",
        "safety_freeze",
        "procon",
        "procon",
    ]
    assert list(t["control"]) == [False, False, True, False, True, False, True]
    assert t.loc[0, "time_multiple"] == 1.0 and (t["harm_n"] == 96).all()
    assert np.isfinite(
        t[["harm_score", "task_loss", "cos_drift_v_rev", "cos_drift_r", "kl_aligned"]].to_numpy()
    ).all()
    first, last = cmp.meta["safety_layers"]
    assert 0 <= first <= last <= 3
    for name in (
        "safelora",
        "safety_freeze",
        "procon",
    ):  # a defense and its control are different runs
        pair = t[t["defense"] == name]["harm_score"].to_numpy()
        assert pair[0] != pair[1], name
    assert len(lab_sets().alignment) > 100


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="pair dir"):
        compare_lab(tmp_path)
    with pytest.raises(ConfigError, match="track"):
        lab_recipe("nope")
