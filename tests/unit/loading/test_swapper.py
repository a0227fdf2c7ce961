"""Histories of swaps: 100 adapter swaps restore exactly, mixed full/adapter sequences leave no
residue, start models are followed, fingerprints make reloads no-ops."""

import pytest
import torch
from unit.loading.lora_fixtures import make_adapter

import families
from revlens.errors import CheckpointError, ConfigError
from revlens.loading import Ref, Swapper

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)  # PEFT -> transformers

BASE, OTHER = families.checkpoint_dir("llama", "base"), families.checkpoint_dir("llama", "other")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two llama adapters on base: (dir, merged model) each."""
    root = tmp_path_factory.mktemp("swaps")
    one = make_adapter(
        "llama",
        root / "one",
        seed=1,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "up_proj"],
        modules_to_save=["lm_head"],
    )
    two = make_adapter(
        "llama", root / "two", seed=2, r=2, lora_alpha=4, target_modules="all-linear"
    )
    return (root / "one", one), (root / "two", two)


def _params(bridge):
    return {k: v.detach().clone() for k, v in bridge.original_model.named_parameters()}


def _same_params(bridge, ref):
    return all(torch.equal(p, ref[k]) for k, p in bridge.original_model.named_parameters())


@pytest.mark.parametrize("keep_originals", [False, True], ids=["reread start", "keep originals"])
def test_100_adapter_swaps_then_the_start_weights_are_bit_exact(adapters, keep_originals):
    (one, _m1), (two, m2) = adapters
    bridge = families.boot(BASE)
    start = _params(bridge)
    sw = Swapper(
        bridge.original_model, bridge, boot=Ref(BASE, name="base"), keep_originals=keep_originals
    )
    for i in range(100):
        sw.load(one if i % 2 == 0 else two, name=f"adapter {i}")
    assert (families.logits(bridge) - families.logits(m2)).abs().max() <= 1e-5  # the 100th: `two`
    sw.reset()
    assert _same_params(bridge, start) and repr(sw.loaded) == "Loaded('base', kind='full')"


def test_mixed_full_and_adapter_sequence_leaves_no_residue(adapters):
    (one, m1), (two, _) = adapters
    bridge = families.boot(BASE)
    base_params = _params(bridge)
    fresh_other = families.logits(families.boot(OTHER))
    sw = Swapper(bridge.original_model, bridge, boot=Ref(BASE, name="base"))
    base = Ref(BASE, name="base")
    sw.load(OTHER, name="other")
    assert torch.equal(families.logits(bridge), fresh_other)
    assert (
        repr(sw.load(one, name="one", start=base)) == "Loaded('one', kind='adapter', start='base')"
    )
    assert (families.logits(bridge) - families.logits(m1)).abs().max() <= 1e-5
    sw.load(OTHER, name="other")  # a full checkpoint right after an adapter
    assert torch.equal(families.logits(bridge), fresh_other)
    sw.load(two, name="two on other (a control)", start=Ref(OTHER, name="other"))
    assert sw.loaded.start.name == "other"
    sw.load(one, name="one", start=base)  # switches start: other -> base
    assert (families.logits(bridge) - families.logits(m1)).abs().max() <= 1e-5
    sw.load(BASE, name="base")
    assert _same_params(bridge, base_params)


def test_state_dict_start_and_unknown_boot(adapters):
    (one, m1), _ = adapters
    bridge = families.boot(BASE)
    sw = Swapper(bridge.original_model, bridge)  # boot weights unknown
    assert sw.loaded is None
    with pytest.raises(ConfigError, match="needs a start model"):
        sw.load(one)
    model, _ = families.build("llama", 0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sw.load(one, start=Ref(sd, name="base (in memory)"))
    assert (families.logits(bridge) - families.logits(m1)).abs().max() <= 1e-5
    sw.reset()
    assert torch.equal(families.logits(bridge), families.logits(families.boot(BASE)))


def test_fingerprints_make_reloads_no_ops(adapters, tmp_path):
    import shutil

    (one, _), _ = adapters
    copy = tmp_path / "one"
    shutil.copytree(one, copy)
    bridge = families.boot(BASE)
    sw = Swapper(bridge.original_model, bridge, boot=Ref(BASE, name="base", fingerprint="fp-base"))
    sw.load(copy, name="one", fingerprint="fp-one")
    after = families.logits(bridge)
    (copy / "adapter_model.safetensors").write_bytes(b"")  # a reload would now fail
    assert sw.load(copy, name="one", fingerprint="fp-one").fingerprint == "fp-one"
    sw.load(Ref(OTHER, name="other", fingerprint="fp-other"))
    sw.load(Ref(OTHER, name="other", fingerprint="fp-other"))
    with pytest.raises(CheckpointError, match="0 bytes"):
        sw.load(
            copy, name="one", fingerprint="fp-one"
        )  # other start now: really read, really broken
    assert torch.equal(families.logits(families.boot(OTHER)), families.logits(bridge))
    assert not torch.equal(after, families.logits(bridge))


def test_check_validates_without_writing_and_signature(adapters, tmp_path):
    (one, _), _ = adapters
    bridge = families.boot(BASE)
    before = families.logits(bridge)
    sw = Swapper(bridge.original_model, bridge, boot=Ref(BASE))
    assert sw.check(OTHER).kind == "full" and sw.check(one).kind == "adapter"
    assert torch.equal(families.logits(bridge), before)
    sig = sw.signature()
    assert sig["model.layers.0.mlp.up_proj.weight"] == (96, 64) and "lm_head.weight" in sig
    assert not any("_original_component" in k or ".q." in k for k in sig)
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"Trainer run \(checkpoint-N folders \[3\]\)"):
        sw.load(tmp_path / "run")


def test_a_bare_hf_model_and_reloading_the_start_takes_the_adapter_off(adapters):
    """No bridge: the Swapper works on a plain from_pretrained model too."""
    from transformers import AutoModelForCausalLM

    (one, m1), _ = adapters
    model = AutoModelForCausalLM.from_pretrained(str(BASE)).eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    sw = Swapper(model, boot=Ref(BASE, name="base", fingerprint="fp-base"))
    sw.load(one, name="one")
    assert torch.equal(families.logits(model), families.logits(m1))
    assert repr(sw.load(BASE, name="base", fingerprint="fp-base")) == "Loaded('base', kind='full')"
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
