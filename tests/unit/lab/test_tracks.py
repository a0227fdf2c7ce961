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
    with pytest.raises(ConfigError, match="unknown lab track 'sft'; tracks: remap, pretrain-like, lora, chat"):
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
    assert [e.text for e in again] == [e.text for e in batch]  # the data order is a function of the seed


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
    assert all(torch.equal(v, aligned.state_dict()[k]) for k, v in before.items())  # the start is untouched
