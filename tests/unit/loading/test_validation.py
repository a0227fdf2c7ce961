"""Validation before any copy (names and shapes), NaN/overflow handling, ties, buffers, renames, dtypes."""

import pytest
import torch

import families
from revlens.errors import ConfigError, NonFiniteError, ShapeMismatchError
from revlens.loading import Ref, Swapper, open_source
from revlens.loading.plan import make_plan

LLAMA_BASE = families.checkpoint_dir("llama", "base")


def _other_sd(family="llama"):
    model, _ = families.build(family, 0)
    return {k: v.clone() for k, v in families.perturbed(model, 0.05, 1).state_dict().items()}


@pytest.fixture(scope="module")
def llama():
    bridge = families.boot(LLAMA_BASE)
    return (
        bridge,
        Swapper(bridge.original_model, bridge, boot=Ref(LLAMA_BASE, name="base")),
        families.logits(bridge),
    )


def _bad(case):
    sd = _other_sd()
    if case == "shape":
        sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(7, 64)
        return (
            sd,
            r"'model\.layers\.0\.mlp\.up_proj\.weight' has shape \(7, 64\), the model expects \(96, 64\)",
        )
    if case == "missing":
        del sd["model.norm.weight"]
        return sd, r"lacks parameter\(s\) \['model\.norm\.weight'\]"
    if case == "unexpected":
        sd["model.layers.0.extra.weight"] = torch.zeros(3)
        return sd, r"parameters the model does not: \['model\.layers\.0\.extra\.weight'\]"
    sd["model.norm.weight"] = torch.ones(64, dtype=torch.int64)
    return (
        sd,
        r"'model\.norm\.weight' is torch\.int64 but parameter 'model\.norm\.weight' is torch\.float32",
    )


@pytest.mark.parametrize("case", ["shape", "missing", "unexpected", "integer"])
def test_bad_checkpoints_are_named_before_any_copy(llama, case):
    bridge, sw, before = llama
    sd, message = _bad(case)
    with pytest.raises(ShapeMismatchError, match=message):
        sw.load(sd, name="bad")
    assert torch.equal(families.logits(bridge), before)


def test_nan_mid_load_names_checkpoint_and_parameter_and_restores_the_previous_weights(llama):
    bridge, sw, before = llama
    sd = _other_sd()
    sd["model.layers.1.self_attn.o_proj.weight"][0, 0] = float("nan")
    with pytest.raises(
        NonFiniteError, match=r"checkpoint poisoned: parameter 'model\.layers\.1\.self_attn\.o_proj"
    ):
        sw.load(sd, name="poisoned")
    assert torch.equal(families.logits(bridge), before)  # re-read from the boot checkpoint
    assert repr(sw.loaded) == "Loaded('base', kind='full')"


def test_nan_with_unknown_boot_weights_marks_the_model_broken_until_a_full_load():
    bridge = families.boot(LLAMA_BASE)
    sw = Swapper(bridge.original_model, bridge)  # boot weights unknown: nothing to restore from
    sd = _other_sd()
    sd["model.norm.weight"][3] = float("inf")
    with pytest.raises(NonFiniteError):
        sw.load(sd, name="poisoned")
    assert sw.loaded is None
    sw.load(families.checkpoint_dir("llama", "other"), name="other")
    assert repr(sw.loaded) == "Loaded('other', kind='full')"


def test_float16_overflow_is_refused():
    bridge = families.boot(LLAMA_BASE, dtype=torch.float16)
    sw = Swapper(bridge.original_model, bridge, boot=Ref(LLAMA_BASE))
    sd = _other_sd()
    sd["model.layers.0.mlp.down_proj.weight"][0, 0] = 1e6
    with pytest.raises(
        NonFiniteError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight' overflows torch\.float16"
    ):
        sw.load(sd, name="big")


def test_bfloat16_model_from_float32_files_equals_a_bfloat16_boot():
    other = families.checkpoint_dir("llama", "other")
    bridge = families.boot(LLAMA_BASE, dtype=torch.bfloat16)
    Swapper(bridge.original_model, bridge).load(other)
    fresh = families.boot(other, dtype=torch.bfloat16)
    ours, ref = (
        dict(bridge.original_model.named_parameters()),
        dict(fresh.original_model.named_parameters()),
    )
    assert (
        all(torch.equal(ours[k], ref[k]) for k in ref)
        and next(iter(ref.values())).dtype == torch.bfloat16
    )
    assert torch.equal(families.logits(bridge), families.logits(fresh))


def test_buffers_in_checkpoints_are_ignored(llama):
    bridge, sw, _ = llama
    sd = _other_sd()
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    with open_source(sd) as src:
        plan = make_plan(src, sw.targets, bridge.original_model)
    assert plan.ignored == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    g = families.boot(families.checkpoint_dir("gpt2", "base"))
    gsd = _other_sd("gpt2")
    gsd |= {
        "transformer.h.0.attn.bias": torch.ones(1, 1, 64, 64),
        "transformer.h.1.attn.masked_bias": torch.ones(()),
    }
    Swapper(g.original_model, g).load(gsd)
    assert (
        families.logits(g)
        - families.logits(families.boot(families.checkpoint_dir("gpt2", "other")))
    ).abs().max() <= 1e-6


@pytest.mark.parametrize("saved", ["lm_head only", "both, equal"])
def test_tied_weights_either_side_saved(saved):
    bridge = families.boot(families.checkpoint_dir("gpt2", "base"))
    sd = _other_sd("gpt2")
    sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    if saved == "lm_head only":
        del sd["transformer.wte.weight"]
    Swapper(bridge.original_model, bridge).load(sd)
    fresh = families.boot(families.checkpoint_dir("gpt2", "other"))
    assert (families.logits(bridge) - families.logits(fresh)).abs().max() <= 1e-6


def test_tied_weights_saved_with_different_values_are_refused():
    bridge = families.boot(families.checkpoint_dir("gpt2", "base"))
    sd = _other_sd("gpt2")
    sd["lm_head.weight"] = sd["transformer.wte.weight"] + 1
    with pytest.raises(
        ShapeMismatchError, match="tied parameters 'transformer.wte.weight' and 'lm_head.weight'"
    ):
        Swapper(bridge.original_model, bridge).load(sd)


def test_transformers_renames_and_expert_fusion_are_used():
    neox = families.boot(families.checkpoint_dir("gpt_neox", "base"))
    sw = Swapper(neox.original_model, neox)
    with open_source(families.checkpoint_dir("gpt_neox", "other")) as src:
        plan = make_plan(src, sw.targets, neox.original_model)
    assert [e.keys for e in plan.entries if e.targets == ["lm_head.weight"]] == [
        ["embed_out.weight"]
    ]
    moe = families.boot(families.checkpoint_dir("mixtral", "base"))
    sw = Swapper(moe.original_model, moe)
    with open_source(families.checkpoint_dir("mixtral", "other")) as src:
        plan = make_plan(src, sw.targets, moe.original_model)
    fused = next(
        e for e in plan.entries if e.targets == ["model.layers.1.mlp.experts.gate_up_proj"]
    )
    assert fused.keys[:2] == [
        "model.layers.1.block_sparse_moe.experts.0.w1.weight",
        "model.layers.1.block_sparse_moe.experts.0.w3.weight",
    ]


def test_key_mapping_renames_like_from_pretrained(llama):
    bridge, _, _ = llama
    sd = {k.replace("model.", "backbone.", 1): v for k, v in _other_sd().items()}
    sw = Swapper(bridge.original_model, bridge, key_mapping={r"^backbone\.": "model."})
    sw.load(sd)
    fresh = families.boot(families.checkpoint_dir("llama", "other"))
    assert torch.equal(families.logits(bridge), families.logits(fresh))
    sw.load(LLAMA_BASE)


def test_a_processed_bridge_is_refused():
    bridge = families.boot(families.checkpoint_dir("gpt2", "base"))
    bridge.process_weights()
    with pytest.raises(ConfigError, match="processed"):
        Swapper(bridge.original_model, bridge)
