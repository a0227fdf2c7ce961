"""Per-prompt references at scale: spilled to disk, cached, saved, at chosen layers — same results."""

import warnings

import numpy as np
import pytest
import torch

import tiny
from revlens import collect
from revlens.collect import HistoryStats
from revlens.directions import LinearProbe, MeanDiff, PairedPCA, Whitened
from revlens.directions.table import directions_table
from revlens.errors import ConfigError

ESTIMATORS = (MeanDiff, PairedPCA, LinearProbe, Whitened)


@pytest.fixture(scope="module")
def in_memory(tiny_history, tiny_lm):
    return collect(
        tiny_history, tiny.PROMPTS, model=tiny_lm, batch_size=4, n_bootstrap=8, progress=False
    )


@pytest.fixture(scope="module")
def spilled(tiny_history, tiny_lm, tmp_path_factory):
    spill = tmp_path_factory.mktemp("spill")
    out = collect(
        tiny_history,
        tiny.PROMPTS,
        model=tiny_lm,
        batch_size=4,
        n_bootstrap=8,
        progress=False,
        memory_budget=0,
        spill_dir=spill,
    )
    assert list(spill.iterdir()) == []  # spill files are unlinked: nothing left behind
    return out


def _same(a: HistoryStats, b: HistoryStats) -> None:
    for name, st in a.checkpoints.items():
        other = b[name]
        for key, value in st.tensors().items():
            assert torch.equal(other.tensors()[key], value), (name, key)
        assert (st.refs is None) == (other.refs is None)
        if st.refs is not None:
            assert torch.equal(st.refs.to_tensor(), other.refs.to_tensor()), name


def _fits(stats: HistoryStats) -> dict:
    return {cls.method: cls(n_bootstrap=3).fit(stats) for cls in ESTIMATORS}


def test_spilled_references_give_identical_statistics_and_directions(in_memory, spilled):
    refs = {n for n, st in spilled.checkpoints.items() if st.refs is not None}
    assert refs == {"base", "aligned"}  # keep="reference": base and aligned only
    assert all(spilled[n].refs.on_disk and not in_memory[n].refs.on_disk for n in refs)
    assert in_memory["aligned"].refs.dtype == torch.float32  # the model's dtype, not float64
    _same(in_memory, spilled)
    a, b = _fits(in_memory), _fits(spilled)
    # the same numbers up to the last bit the BLAS leaves to chance: LedoitWolf / lstsq results vary
    # by 1 ulp between two fits of the *same* in-memory statistics (buffer alignment), so not bit-equal
    for method in a:
        assert torch.allclose(
            a[method].direction_.basis, b[method].direction_.basis, rtol=0, atol=1e-12
        ), method
        np.testing.assert_allclose(
            a[method].stability_, b[method].stability_, rtol=1e-12, err_msg=method
        )
    vectors = {m: e.direction_ for m, e in a.items()}
    pd_a = directions_table(in_memory, vectors, n_permutations=50)
    pd_b = directions_table(spilled, vectors, n_permutations=50)
    assert pd_a.equals(pd_b) and pd_a.perm_p.notna().all()


def test_cache_and_save_keep_references_exact(tiny_history, tiny_lm, in_memory, tmp_path):
    kw = {"model": tiny_lm, "batch_size": 4, "n_bootstrap": 8, "progress": False}
    cache = tmp_path / "cache"
    first = collect(tiny_history, tiny.PROMPTS, cache_dir=cache, memory_budget=0, **kw)
    again = collect(
        tiny_history, tiny.PROMPTS, cache_dir=cache, **kw
    )  # every checkpoint from the cache
    _same(in_memory, first)
    _same(in_memory, again)
    assert again["aligned"].refs.on_disk  # read from the cache file a layer at a time
    part = collect(tiny_history, tiny.PROMPTS, cache_dir=cache, keep_layers=[1], **kw)
    assert part["aligned"].ref_layers == [
        1
    ]  # another keep_layers is another key: nothing stale is read
    with pytest.raises(ConfigError, match="keep_layers"):
        collect(tiny_history, tiny.PROMPTS, keep_layers=[9], **kw)
    in_memory.save(tmp_path / "saved")
    back = HistoryStats.load(tmp_path / "saved")
    _same(in_memory, back)
    assert back["base"].refs.on_disk and back.meta == in_memory.meta


def test_cached_reference_file_with_a_flipped_byte_is_recomputed(
    tiny_history, tiny_lm, in_memory, tmp_path
):
    kw = {
        "model": tiny_lm,
        "batch_size": 4,
        "n_bootstrap": 8,
        "progress": False,
        "cache_dir": tmp_path,
    }
    collect(tiny_history, tiny.PROMPTS, **kw)
    biggest = max(
        tmp_path.glob("stats-*.safetensors"), key=lambda p: p.stat().st_size
    )  # holds references
    data = bytearray(biggest.read_bytes())
    data[-7] ^= 0x10  # inside the per-prompt references (the last tensor in key order)
    biggest.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = collect(tiny_history, tiny.PROMPTS, **kw)
    assert any("corrupt statistics cache" in str(w.message) for w in caught)
    _same(in_memory, again)


def test_references_only_at_the_layers_asked_for(tiny_history, tiny_lm, in_memory):
    part = collect(
        tiny_history,
        tiny.PROMPTS,
        model=tiny_lm,
        batch_size=4,
        n_bootstrap=8,
        progress=False,
        keep_layers=[1],
    )
    assert part["aligned"].ref_layers == [1] and part["aligned"].refs.shape == (1, 6, 32)
    assert part["aligned"].activations is None and not part.has_references()
    with pytest.raises(ConfigError, match=r"kept at layers \[1\]: fit on stats.select\(\[1\]\)"):
        PairedPCA(n_bootstrap=0).fit(part)
    # mean_diff and whitened with a fixed shrinkage need no per-prompt reference at all
    assert MeanDiff(n_bootstrap=4).fit(part).direction_.layers == (0, 1, 2)
    assert Whitened(shrinkage=0.1, n_bootstrap=0).fit(part).direction_.layers == (0, 1, 2)
    sub = PairedPCA(n_bootstrap=0).fit(part.select([1])).direction_
    full = PairedPCA(n_bootstrap=0).fit(in_memory.select([1])).direction_
    assert sub.layers == (1,) and torch.equal(sub.basis, full.basis)


def test_bf16_model_keeps_bf16_references(tiny_history):
    st = collect(
        tiny_history.restricted(), tiny.PROMPTS, dtype=torch.bfloat16, n_bootstrap=0, progress=False
    )
    assert st["aligned"].refs.dtype == torch.bfloat16
    assert st["aligned"].total.dtype == torch.float64  # sums stay float64
