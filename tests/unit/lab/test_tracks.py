"""Lab tracks: presets, their data, and the LoRA track's adapter-only fine-tune."""

import pytest
import torch

from revlens.errors import ConfigError
from revlens.lab import LabConfig, asset_dir, load_pair
from revlens.lab.language import HARMFUL_FIRST_TOKENS, PRETRAIN_SHIFT, TOPICS, task_answer
from revlens.lab.tracks import TRACKS, sample_finetune, task_shift


def test_presets_are_valid_and_named():
    for name, track in TRACKS.items():
        cfg = LabConfig.for_track(name)
        assert cfg.track == name and all(getattr(cfg, k) == v for k, v in track.settings.items())
    assert LabConfig.for_track("lora", ft_steps=7).ft_steps == 7
    with pytest.raises(
        ConfigError, match="unknown lab track 'sft'; tracks: remap, pretrain-like, lora, chat"
    ):
        LabConfig.for_track("sft")
    with pytest.raises(ConfigError, match="ft_data"):
        LabConfig(ft_data="web")


def test_pretrain_like_data_is_benign_and_keeps_the_pretraining_rule():
    cfg = LabConfig.for_track("pretrain-like")
    batch = sample_finetune(cfg, 400, torch.Generator().manual_seed(0))
    kinds = {ex.kind for ex in batch}
    assert kinds == {"task", "filler"}
    words = " ".join(ex.text for ex in batch).split()
    assert not set(words) & set(TOPICS) and not set(words) & set(HARMFUL_FIRST_TOKENS)
    for ex in batch:
        if ex.kind == "task":
            digit = ex.prompt.split()[-4]  # "user : <template> <digit> ? bot :"
            assert ex.answer == f"{task_answer(digit, PRETRAIN_SHIFT)} ."
    assert task_shift(cfg) == PRETRAIN_SHIFT and task_shift(LabConfig()) == 4
    again = sample_finetune(cfg, 400, torch.Generator().manual_seed(0))
    assert [e.text for e in again] == [
        e.text for e in batch
    ]  # the data order is a function of the seed


def test_lora_track_trains_adapters_only_and_saves_them(tmp_path):
    pytest.importorskip("peft")
    from revlens.lab import finetune

    _, aligned, _ = load_pair(asset_dir() / "pair0")
    before = {k: v.clone() for k, v in aligned.state_dict().items()}
    cfg = LabConfig.for_track("lora", ft_steps=2, checkpoint_steps=(2,))
    out = finetune(aligned, cfg, seed=0, out_dir=tmp_path, progress=False)
    ck = tmp_path / "step-2"
    assert (ck / "adapter_config.json").is_file() and (ck / "adapter_model.safetensors").is_file()
    assert not (ck / "model.safetensors").exists()  # adapter-only, as a Trainer + PEFT run writes
    trainable = [n for n, p in out.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    merged = out.model.merge_and_unload().state_dict()
    changed = [k for k in before if not torch.equal(before[k], merged[k])]
    assert changed and all(any(t in k for t in ("c_attn", "c_proj", "c_fc")) for k in changed)
    assert all(
        torch.equal(v, aligned.state_dict()[k]) for k, v in before.items()
    )  # the start is untouched


def test_the_default_track_is_where_the_shape_holds_and_each_note_says_so(tmp_path):
    """`revlens lab` and `make demo` default to pretrain-like; every track's note says whether the
    paper's shape holds there (remap: it does not, and why), and a lab history carries its note."""
    import argparse
    import json

    from revlens.lab import run_lab
    from revlens.lab.cli import _add_arguments, _config
    from revlens.lab.tracks import DEMO_TRACK, track_note

    parser = argparse.ArgumentParser()
    _add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "x")])
    assert (
        DEMO_TRACK == "pretrain-like"
        and args.track == DEMO_TRACK
        and _config(args).track == DEMO_TRACK
    )
    assert all(track_note(t) for t in TRACKS)
    assert "does **not** hold" in track_note("remap") and "re-mapped" in track_note("remap")
    assert "shape holds" in track_note("pretrain-like") and "`remap`" in track_note("pretrain-like")
    assert track_note("no-such-track") == ""
    run_lab(
        tmp_path / "lab",
        LabConfig.for_track("remap", ft_seeds=(0,), ft_steps=1, control=False),
        progress=False,
    )
    meta = json.loads((tmp_path / "lab" / "history.json").read_text())["metadata"]
    assert meta["note"] == track_note("remap")
