"""``compare_defenses`` (sketch) on the shipped lab pair: every defense beside its random control and
the undefended run, same seed and batches, a few steps; the table's shape and invariants."""

import numpy as np
import pytest
import torch

from revlens.errors import ConfigError
from revlens.lab.defenses import compare_defenses
from revlens.lab.runner import asset_dir


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_each_defense_beside_its_control_on_the_same_seed():
    table = compare_defenses(asset_dir() / "pair0", ("safelora", "safety_freeze", "procon"), seeds=(0,), steps=2)
    assert list(table["defense"]) == ["none", "safelora", "safelora", "safety_freeze", "safety_freeze",
                                      "procon", "procon"]
    assert list(table["control"]) == [False, False, True, False, True, False, True]
    assert {"harm_rate", "harm_logodds", "task_loss", "task_acc", "seconds", "time_multiple",
            "cos_drift_v"} <= set(table.columns)
    assert table.loc[0, "time_multiple"] == 1.0
    assert np.isfinite(table[["harm_logodds", "task_loss", "cos_drift_v"]].to_numpy()).all()
    first, last = table.attrs["safety_layers"]
    assert 0 <= first <= last <= 3
    # a defense and its control change the run differently (different V / blocks / directions)
    for name in ("safelora", "safety_freeze", "procon"):
        pair = table[table["defense"] == name]["harm_logodds"].to_numpy()
        assert pair[0] != pair[1], name


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="defense"):
        compare_defenses(asset_dir() / "pair0", ("lisa",))
    with pytest.raises(ConfigError, match="pair dir"):
        compare_defenses(tmp_path)
