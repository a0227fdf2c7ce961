import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

import tiny
from revlens.errors import CheckpointError, NonFiniteError, ShapeMismatchError
from revlens.model import LensModel, load_state_dict


def test_swapped_weights_give_the_logits_of_a_fresh_boot(tiny_dirs):
    lm = LensModel.boot(tiny_dirs["base"])
    step_dir = tiny_dirs["runs"]["seed1"][3]
    lm.load_weights(load_state_dict(step_dir), name="seed1/step-3")
    hf = tiny.tiny_model(0).__class__.from_pretrained(step_dir).eval()
    x = torch.tensor([[2, 3, 4, 5, 6], [7, 8, 9, 10, 11]])
    with torch.no_grad():
        ours = lm.bridge(x)
        ref = hf(x).logits
    assert torch.allclose(ours, ref, atol=1e-5)
    assert lm.loaded == "seed1/step-3"
    # swapping back restores the first logits exactly
    lm.load_weights(load_state_dict(tiny_dirs["base"]), name="base")
    with torch.no_grad():
        base_ref = tiny.tiny_model(0)(x).logits
        assert torch.allclose(lm.bridge(x), base_ref, atol=1e-5)


def test_swap_matches_a_freshly_booted_bridge(tiny_dirs):
    lm = LensModel.boot(tiny_dirs["base"])
    lm.load_weights(load_state_dict(tiny_dirs["aligned"]), name="aligned")
    fresh = TransformerBridge.boot_transformers(str(tiny_dirs["aligned"]))
    fresh.eval()
    x = torch.tensor([[2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(lm.bridge(x), fresh(x))


def test_shape_mismatch_names_parameter_and_both_shapes(tiny_dirs):
    lm = LensModel.boot(tiny_dirs["base"])
    sd = load_state_dict(tiny_dirs["aligned"])
    sd["transformer.h.0.mlp.c_fc.bias"] = torch.zeros(7)
    with pytest.raises(ShapeMismatchError, match=r"transformer\.h\.0\.mlp\.c_fc\.bias.*\(7,\).*\(128,\)"):
        lm.load_weights(sd, name="bad")


def test_missing_and_unknown_parameters(tiny_dirs):
    lm = LensModel.boot(tiny_dirs["base"])
    sd = load_state_dict(tiny_dirs["aligned"])
    del sd["transformer.ln_f.weight"]
    with pytest.raises(ShapeMismatchError, match=r"checkpoint x lacks parameter\(s\) \['transformer\.ln_f\.weight'\]"):
        lm.load_weights(sd, name="x")
    sd = load_state_dict(tiny_dirs["aligned"])
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ShapeMismatchError, match="extra.weight"):
        lm.load_weights(sd, name="x")


def test_nan_weights_name_checkpoint_and_parameter(tiny_dirs):
    lm = LensModel.boot(tiny_dirs["base"])
    sd = load_state_dict(tiny_dirs["aligned"])
    sd["transformer.h.1.attn.c_proj.weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"checkpoint poisoned.*transformer\.h\.1\.attn\.c_proj\.weight"):
        lm.load_weights(sd, name="poisoned")


def test_load_state_dict_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_state_dict(tmp_path / "empty")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_state_dict(tmp_path / "junk.safetensors")


def test_repr_and_signature(tiny_lm):
    assert "n_layers=2" in repr(tiny_lm) and "d_model=32" in repr(tiny_lm)
    sig = tiny_lm.signature()
    assert sig["transformer.wte.weight"] == (32, 32)
