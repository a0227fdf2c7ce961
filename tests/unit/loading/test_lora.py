"""LoRA adapters applied in place equal PEFT's merge_and_unload; restores are exact."""

import shutil
import sys

import pytest
import torch
from unit.loading.lora_fixtures import make_adapter, merged_from_dir, train_adapter

import families
from revlens.errors import ConfigError, MissingExtraError
from revlens.loading import AdapterConfig, Ref, Swapper, classify

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)  # PEFT -> transformers

ADAPTERS = {
    "llama patterns+embedding+modules_to_save": (
        "llama",
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "embed_tokens", "down_proj"],
            modules_to_save=["lm_head"],
            rank_pattern={"layers.1.self_attn.q_proj": 2},
            alpha_pattern={"v_proj": 3},
        ),
    ),
    "llama all-linear rslora": (
        "llama",
        dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True),
    ),
    "gpt2 fan_in_fan_out bias=all": (
        "gpt2",
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["c_attn", "c_fc", "c_proj"],
            fan_in_fan_out=True,
            bias="all",
        ),
    ),
    "gpt2 dora": (
        "gpt2",
        dict(
            r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True
        ),
    ),
    "llama dora": (
        "llama",
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], use_dora=True),
    ),
    "gpt_neox fused qkv": (
        "gpt_neox",
        dict(r=4, lora_alpha=8, target_modules=["query_key_value", "dense_h_to_4h"]),
    ),
    "qwen2 lora_bias": (
        "qwen2",
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"], lora_bias=True),
    ),
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: (family, root / f"a{i}", make_adapter(family, root / f"a{i}", seed=i, **cfg))
        for i, (name, (family, cfg)) in enumerate(ADAPTERS.items())
    }


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_equals_merge_and_unload_and_resets_exactly(adapters, name):
    family, path, merged = adapters[name]
    base = families.checkpoint_dir(family, "base")
    bridge = families.boot(base)
    before = families.logits(bridge)
    params = {k: v.clone() for k, v in bridge.original_model.named_parameters()}
    sw = Swapper(bridge.original_model, bridge, boot=Ref(base, name="base"))
    assert repr(sw.load(path, name="adapter")) == "Loaded('adapter', kind='adapter', start='base')"
    ours = families.logits(bridge)
    assert (ours - before).abs().max() > 1e-2
    assert (ours - families.logits(merged)).abs().max() <= 1e-5
    sw.reset()
    assert torch.equal(families.logits(bridge), before)
    assert all(torch.equal(p, params[k]) for k, p in bridge.original_model.named_parameters())


def test_modules_to_save_replaces_the_module(adapters):
    family, path, merged = adapters["llama patterns+embedding+modules_to_save"]
    bridge = families.boot(families.checkpoint_dir(family, "base"))
    Swapper(bridge.original_model, bridge, boot=Ref(families.checkpoint_dir(family, "base"))).load(
        path
    )
    cfg = AdapterConfig.read(path)
    assert (
        cfg.modules_to_save == ("lm_head",)
        and cfg.scaling("model.layers.1.self_attn.v_proj") == 3 / 4
    )
    assert cfg.scaling("model.layers.1.self_attn.q_proj") == 8 / 2
    assert torch.equal(bridge.original_model.lm_head.weight, merged.lm_head.weight)


def test_trainer_checkpoints_are_adapters(tmp_path):
    run = train_adapter(tmp_path / "run")
    info = classify(run)
    assert info.kind == "trainer_run" and list(info.steps) == [1, 2]
    step = info.steps[2]
    assert classify(step).kind == "adapter" and not (step / "model.safetensors").exists()
    base = families.checkpoint_dir("llama", "base")
    bridge = families.boot(base)
    before = families.logits(bridge)
    sw = Swapper(bridge.original_model, bridge, boot=Ref(base, name="base"))
    for s, d in info.steps.items():
        sw.load(d, name=f"run/{s}")
        ours = families.logits(bridge)
        assert (ours - before).abs().max() > 1e-3  # training moved B off zero
        assert (ours - families.logits(merged_from_dir("llama", d))).abs().max() <= 1e-5


def test_dora_without_peft_says_how_to_install_it_while_plain_lora_needs_no_peft(
    adapters, monkeypatch
):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    family, path, merged = adapters["llama all-linear rslora"]
    base = families.checkpoint_dir(family, "base")
    bridge = families.boot(base)
    sw = Swapper(bridge.original_model, bridge, boot=Ref(base, name="base"))
    sw.load(path)
    assert (families.logits(bridge) - families.logits(merged)).abs().max() <= 1e-5
    before = families.logits(bridge)
    with pytest.raises(MissingExtraError, match=r'pip install "revlens\[peft\]"'):
        sw.load(adapters["llama dora"][1])
    assert torch.equal(families.logits(bridge), before)  # refused before anything changed
    assert repr(sw.loaded) == "Loaded('" + str(path) + "', kind='adapter', start='base')"


def test_other_peft_methods_are_refused(tmp_path):
    from peft import IA3Config, get_peft_model

    model, _ = families.build("llama", 0)
    get_peft_model(
        model, IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    ).save_pretrained(tmp_path / "ia3")
    bridge = families.boot(families.checkpoint_dir("llama", "base"))
    with pytest.raises(ConfigError, match="peft_type 'IA3' is not supported"):
        Swapper(
            bridge.original_model, bridge, boot=Ref(families.checkpoint_dir("llama", "base"))
        ).load(tmp_path / "ia3")


def test_a_folder_with_full_weights_and_an_adapter(adapters, tmp_path):
    family, path, merged = adapters["llama all-linear rslora"]
    both = tmp_path / "both"
    shutil.copytree(families.checkpoint_dir(family, "other"), both)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(path / f, both)
    info = classify(both)
    assert (info.kind, info.also) == ("full", ("adapter",))
    assert classify(both, kind="adapter").kind == "adapter"
    base = families.checkpoint_dir(family, "base")
    bridge = families.boot(base)
    sw = Swapper(bridge.original_model, bridge, boot=Ref(base, name="base"))
    sw.load(both)  # auto: the full weights
    assert torch.equal(
        families.logits(bridge),
        families.logits(families.boot(families.checkpoint_dir(family, "other"))),
    )
    sw.load(both, kind="adapter", start=Ref(base, name="base"))
    assert (families.logits(bridge) - families.logits(merged)).abs().max() <= 1e-5
