"""collect() on a real tiny TransformerBridge history, against independent oracles."""

import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

import tiny
from conftest import hook_count
from revlens import History, Probes, collect
from revlens.errors import CacheError, NonFiniteError
from revlens.model import load_state_dict


@pytest.fixture(scope="module")
def stats(tiny_history):
    return collect(tiny_history, tiny.PROMPTS, batch_size=4, progress=False)


def hf_hidden(path, prompts, position="last"):
    """Oracle: per-prompt hidden states from plain Hugging Face, one prompt at a time."""
    model = GPT2LMHeadModel.from_pretrained(path).eval()
    tok = tiny.tiny_tokenizer()
    rows = []
    for p in prompts:
        ids = torch.tensor([tok(p)["input_ids"]])
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states  # last one is after ln_f
        per_layer = [h[0, -1] if position == "last" else h[0].mean(0) for h in hs[:-1]]
        rows.append(torch.stack(per_layer))
    return torch.stack(rows).double()  # [prompt, layer (0..L-1), d]


def test_means_match_hugging_face_hidden_states(stats, tiny_dirs):
    ref = hf_hidden(tiny_dirs["runs"]["seed0"][2], tiny.PROMPTS)
    ours = stats.mean("seed0/step-2")
    assert ours.dtype == torch.float64 and ours.shape == (3, 32)
    assert torch.allclose(ours[:2], ref.mean(0), atol=1e-5)


def test_last_layer_matches_bridge_cache(stats, tiny_history, tiny_lm):
    tiny_lm.load_weights(tiny_history["seed1/step-3"].state_dict(), name="seed1/step-3")
    tok = tiny.tiny_tokenizer()
    vals = []
    for p in tiny.PROMPTS:
        _, cache = tiny_lm.bridge.run_with_cache(torch.tensor([tok(p)["input_ids"]]))
        vals.append(cache["blocks.1.hook_resid_post"][0, -1].double())
    assert torch.allclose(stats.mean("seed1/step-3")[2], torch.stack(vals).mean(0), atol=1e-5)


def test_padded_batches_equal_prompts_one_by_one(tiny_history, stats):
    one = collect(tiny_history, tiny.PROMPTS, batch_size=1, progress=False, n_bootstrap=10)
    for name in ("base", "seed0/step-3"):
        assert torch.allclose(one.mean(name), stats.mean(name), atol=1e-6)
    mean_rule = collect(
        tiny_history,
        Probes(tiny.PROMPTS, position="mean"),
        batch_size=6,
        progress=False,
        n_bootstrap=0,
    )
    ref = hf_hidden(tiny_history["aligned"].local_path(), tiny.PROMPTS, position="mean")
    assert torch.allclose(mean_rule.mean("aligned")[:2], ref.mean(0), atol=1e-5)


def test_moments_activations_and_bootstrap(stats):
    al = stats["aligned"]
    assert al.activations.shape == (6, 3, 32) and stats["seed0/step-1"].activations is None
    np_cov = np.cov(al.activations[:, 1].double().numpy(), rowvar=False)
    assert np.allclose(al.covariance[1].numpy(), np_cov, atol=1e-4)
    assert stats["seed0/step-1"].second is None  # moments only for references by default
    boot = stats["seed0/step-1"].boot_mean
    assert boot.shape == (100, 3, 32)
    assert not torch.allclose(boot[0], boot[1])
    # Paired weights: replicate b weighs prompt i identically at every checkpoint.
    assert torch.equal(stats["base"].boot_count, stats["seed1/step-2"].boot_count)


def test_hooks_removed_when_collection_fails(tiny_history, tiny_lm, tmp_path):
    sd = load_state_dict(tiny_history.aligned.local_path())
    # finite weights whose activations overflow: block 1's MLP writes ~1e41 into the stream
    sd["transformer.h.1.mlp.c_fc.bias"] = torch.full_like(sd["transformer.h.1.mlp.c_fc.bias"], 10.0)
    sd["transformer.h.1.mlp.c_proj.weight"] = torch.full_like(
        sd["transformer.h.1.mlp.c_proj.weight"], 3e38
    )
    torch.save(sd, tmp_path / "inf.pt")
    h = History.from_state_dicts(
        tiny_history.architecture,
        base=tiny_history.base[0].local_path(),
        aligned=tiny_history.aligned.local_path(),
        runs={"boom": {1: tmp_path / "inf.pt"}},
    )
    before = hook_count(tiny_lm.bridge)
    cache = tmp_path / "cache"
    with pytest.raises(NonFiniteError, match=r"checkpoint boom/step-1: activations at layer 2 "):
        collect(h, tiny.PROMPTS, model=tiny_lm, progress=False, cache_dir=cache)
    assert hook_count(tiny_lm.bridge) == before
    # the checkpoints before the failure are cached, nothing half-written is left
    files = sorted(p.name for p in cache.iterdir())
    assert not [f for f in files if f.startswith(".tmp")]
    assert len([f for f in files if f.startswith("stats-")]) == 2


def test_cache_resumes_identically_and_recovers_from_corruption(tiny_history, tmp_path):
    cache = tmp_path / "cache"
    first = collect(tiny_history, tiny.PROMPTS, cache_dir=cache, progress=False, n_bootstrap=8)
    files = sorted(cache.glob("stats-*.safetensors"))
    assert len(files) == len(tiny_history)
    files[3].unlink()  # as if interrupted before this checkpoint
    data = bytearray(files[4].read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside the tensor data
    files[4].write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = collect(tiny_history, tiny.PROMPTS, cache_dir=cache, progress=False, n_bootstrap=8)
    assert any("corrupt statistics cache" in str(w.message) for w in caught)
    for name in first.checkpoints:
        assert torch.equal(first.mean(name), again.mean(name))
        assert torch.equal(first[name].boot_total, again[name].boot_total)


def test_cache_from_another_version_is_refused(tiny_history, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "revlens-cache.json").write_text('{"revlens_version": "0.0.1"}')
    with pytest.raises(CacheError, match="written by revlens 0.0.1"):
        collect(tiny_history, tiny.PROMPTS, cache_dir=cache, progress=False)


def test_process_pool_gives_identical_results(tiny_history, stats):
    # spawn, not fork: forking a process that already runs torch threads can deadlock
    with ProcessPoolExecutor(
        max_workers=2, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        fanned = collect(tiny_history, tiny.PROMPTS, batch_size=4, progress=False, executor=pool)
    for name in stats.checkpoints:
        assert torch.allclose(fanned.mean(name), stats.mean(name), atol=1e-6)
        assert torch.allclose(fanned[name].boot_total, stats[name].boot_total, atol=1e-5)


def test_history_stats_save_load_round_trip(stats, tmp_path):
    stats.save(tmp_path / "s")
    back = type(stats).load(tmp_path / "s")
    assert back.layers == stats.layers and back.runs == stats.runs
    for name in stats.checkpoints:
        assert torch.equal(back.mean(name), stats.mean(name))
    assert "HistoryStats(8 checkpoints" in repr(back)


def test_layer_subset_and_site(tiny_history):
    st = collect(
        tiny_history,
        tiny.PROMPTS,
        layers=[2],
        site="resid_mid" if False else "resid_post",
        progress=False,
        n_bootstrap=0,
        moments="none",
        keep="none",
    )
    assert st.layers == [2] and st.mean("base").shape == (1, 32)
    assert st["base"].boot_total is None and st["base"].second is None
