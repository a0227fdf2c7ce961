"""Checkpoint layouts stream in alike; damaged files fail with typed errors naming the file."""

import json
import shutil
import weakref

import pytest
import torch
from safetensors.torch import save_file

import families
from revlens.errors import CheckpointError
from revlens.loading import Ref, Swapper, open_source, weight_files
from revlens.loading.plan import make_plan
from revlens.loading.sources import SafetensorsSource
from revlens.loading.swap import execute


@pytest.fixture(scope="module")
def llama():
    """(bridge booted on base, swapper, the 'other' model, its fresh-boot logits, base logits)."""
    base = families.checkpoint_dir("llama", "base")
    bridge = families.boot(base)
    other, _ = families.build("llama", 0)
    other = families.perturbed(other, 0.05, 1)
    fresh = families.logits(families.boot(families.checkpoint_dir("llama", "other")))
    return bridge, Swapper(bridge.original_model, bridge, boot=Ref(base, name="base")), other, fresh


def _layouts(tmp, other):
    sd = {k: v.clone() for k, v in other.state_dict().items()}
    sharded = families.save(other, None, tmp / "sharded", tokenizer=False, max_shard_size="40KB")
    binary = tmp / "bin"
    binary.mkdir()
    torch.save(sd, binary / "pytorch_model.bin")
    torch.save({"state_dict": sd, "epoch": 3, "optimizer": {}}, tmp / "lightning.ckpt")
    return {
        "sharded dir": sharded,
        "single safetensors file": families.checkpoint_dir("llama", "other") / "model.safetensors",
        "pytorch_model.bin dir": binary,
        "wrapped .ckpt": tmp / "lightning.ckpt",
        "state dict": sd,
        "module": other,
        "prefix-less state dict": {k.removeprefix("model."): v for k, v in sd.items()},
    }


def test_every_layout_gives_the_fresh_boot_logits(llama, tmp_path):
    bridge, sw, other, fresh = llama
    layouts = _layouts(tmp_path, other)
    assert len(weight_files(layouts["sharded dir"])) > 2  # really sharded
    for what, source in layouts.items():
        sw.load(families.checkpoint_dir("llama", "base"), name="base")
        sw.load(source, name=what)
        assert torch.equal(families.logits(bridge), fresh), what


def test_moe_experts_fused_across_shards(tmp_path):
    """Mixtral's per-expert keys, spread over shards, are fused by transformers' own converters."""
    base = families.checkpoint_dir("mixtral", "base")
    model, tok = families.build("mixtral", 0)
    d = families.save(
        families.perturbed(model, 0.05, 1), tok, tmp_path / "m", max_shard_size="20KB"
    )
    files = weight_files(d)
    with open_source(d) as src:
        experts = [src.info(k).file for k in src if ".experts.0." in k or ".experts.3." in k]
        assert len(set(experts)) > 1 and len(files) > 3
    bridge = families.boot(base)
    Swapper(bridge.original_model, bridge).load(d)
    assert (families.logits(bridge) - families.logits(families.boot(d))).abs().max() <= 1e-6


class _CountingSource(SafetensorsSource):
    """A real safetensors source that counts how many of the tensors it read are alive at once."""

    def __init__(self, files):
        super().__init__(files)
        self.live = self.peak = 0

    def _read(self, key):
        t = super()._read(key)
        self.live += 1
        self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._freed)
        return t

    def _freed(self):
        self.live -= 1


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_streaming_holds_one_tensor_or_one_expert_group(family):
    bridge = families.boot(families.checkpoint_dir(family, "base"))
    sw = Swapper(bridge.original_model, bridge)
    src = _CountingSource(weight_files(families.checkpoint_dir(family, "other")))
    plan = make_plan(src, sw.targets, bridge.original_model)
    group = max(len(e.keys) for e in plan.entries)
    execute(plan, src, sw.targets, bridge.original_model)
    assert group == (1 if family == "llama" else 8)  # mixtral: 4 experts x (w1, w3) of one layer
    # llama: every tensor is read straight into its parameter (no tensor allocated); mixtral's
    # expert groups are read whole, one group at a time, for transformers' fusing converter
    assert src.peak == (0 if family == "llama" else group) and src.live == 0


def _damaged(tmp_path):
    good = families.checkpoint_dir("llama", "other") / "model.safetensors"
    data = good.read_bytes()
    out = {}
    for name, blob in {
        "truncated": data[:-1000],
        "empty": b"",
        "header": data[:8] + b"{oops" + data[13:],
    }.items():
        d = tmp_path / name
        d.mkdir()
        shutil.copy(good.parent / "config.json", d)
        (d / "model.safetensors").write_bytes(blob)
        out[name] = d
    d = tmp_path / "pickle"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"PK not a zip, not a pickle")
    out["pickle"] = d
    return out


@pytest.mark.parametrize("damage", ["truncated", "empty", "header", "pickle"])
def test_damaged_files_raise_checkpoint_error_naming_the_file_and_change_nothing(
    llama, tmp_path, damage
):
    bridge, sw, _, _ = llama
    sw.load(families.checkpoint_dir("llama", "base"), name="base")
    before = families.logits(bridge)
    path = _damaged(tmp_path)[damage]
    with pytest.raises(CheckpointError, match=str(path)):
        sw.load(path)
    assert torch.equal(families.logits(bridge), before)
    assert repr(sw.loaded) == "Loaded('base', kind='full')"


def test_missing_paths_shards_and_weights(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no weights"):
        open_source(tmp_path / "empty")
    d = tmp_path / "index"
    d.mkdir()
    save_file({"a": torch.zeros(2)}, d / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing shard.*00002"):
        open_source(d)
    with pytest.raises(CheckpointError, match="not tensors"):
        open_source({"a": torch.zeros(1), "b": [1, 2]})
