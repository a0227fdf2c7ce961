"""LabConfig and bad input."""

import argparse
import json

import pytest

from revlens.errors import ConfigError, RevlensError
from revlens.lab import LabConfig, LabOutputError, default_checkpoint_steps
from revlens.lab.cli import _add_arguments, _config, register
from revlens.lab.runner import prepare_out, run_lab


def test_round_trip_through_json():
    cfg = LabConfig(ft_seeds=(3, 4), ft_steps=30, checkpoint_steps=(1, 2, 30), ft_optimizer="adamw")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert LabConfig.from_dict(d) == cfg
    assert LabConfig.from_dict(LabConfig().to_dict()) == LabConfig()


def test_default_checkpoint_steps():
    steps = default_checkpoint_steps(100)
    assert steps[:20] == tuple(range(1, 21)) and steps[20:] == tuple(range(25, 101, 5))
    assert default_checkpoint_steps(3) == (1, 2, 3)
    assert default_checkpoint_steps(27)[-2:] == (25, 27)


@pytest.mark.parametrize(
    "bad",
    [
        {"ft_steps": 0},
        {"ft_steps": -3},
        {"ft_lr": 0.0},
        {"ft_optimizer": "adam"},
        {"ft_seeds": ()},
        {"ft_seeds": (1, 1)},
        {"checkpoint_steps": (0, 5)},
        {"checkpoint_steps": (101,)},
        {"n_head": 3},
        {"n_ctx": 16},
    ],
)
def test_bad_values_raise_config_error(bad):
    with pytest.raises(ConfigError):
        LabConfig(**bad)


def test_unknown_field():
    with pytest.raises(ConfigError, match="unknown LabConfig field"):
        LabConfig.from_dict({"nonsense": 1})


def _args(*argv):
    p = argparse.ArgumentParser()
    _add_arguments(p)
    return p.parse_args(["--out", "x", *argv])


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "0"],
        ["--steps", "-5"],
        ["--steps", "ten"],
        ["--lr", "-1"],
        ["--lr", "nan"],
        ["--lr", "fast"],
        ["--seeds", "a"],
        ["--seeds", "1", "1"],
        ["--pretrain-seeds", "-1"],
    ],
)
def test_cli_bad_values(argv):
    with pytest.raises(RevlensError):
        _config(_args(*argv))


def test_cli_registers_lab_subcommand():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["lab", "--out", "d", "--seeds", "0", "--steps", "5", "--no-control"])
    cfg = _config(args)
    assert (cfg.ft_seeds, cfg.ft_steps, cfg.control) == ((0,), 5, False)
    assert callable(args.func)


def test_out_refused_without_force(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LabOutputError, match="--force"):
        prepare_out(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    prepare_out(tmp_path, force=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_assets_error(tmp_path):
    from revlens.lab import LabAssetsError

    with pytest.raises(LabAssetsError, match="--retrain"):
        run_lab(tmp_path / "out", LabConfig(pretrain_seeds=(7,)), assets=tmp_path / "nothing")
    assert not (tmp_path / "out").exists()  # refused before touching --out
