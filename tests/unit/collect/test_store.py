"""ReferenceStore (memory / file, budget) and the streamed statistics files (checksum, safetensors)."""

import pickle

import pytest
import torch
from safetensors import safe_open

from revlens.collect.checkpoint import CheckpointStats, PoissonTable, poisson_weights
from revlens.collect.files import read_stats_file, write_stats_file
from revlens.collect.store import MemoryBudget, ReferenceStore, store_dtype


def _batches(x: torch.Tensor, size: int):
    for start in range(0, x.shape[0], size):
        yield torch.arange(start, min(start + size, x.shape[0])), x[start : start + size]


@pytest.fixture
def acts() -> torch.Tensor:
    return torch.randn(23, 3, 8, generator=torch.Generator().manual_seed(0))  # [prompt, layer, d]


@pytest.mark.parametrize("budget", [None, 0])
def test_memory_and_file_stores_hold_the_same_values(acts, budget, tmp_path):
    store = ReferenceStore.allocate(
        3,
        23,
        8,
        torch.float32,
        budget=None if budget is None else MemoryBudget(budget),
        spill_dir=tmp_path,
    )
    assert store.on_disk is (budget == 0)
    for idx, x in _batches(acts, 5):
        store.write(idx, x)
    assert list(tmp_path.iterdir()) == []  # the spill file is unlinked at once
    for j in range(3):
        assert torch.equal(store.layer(j), acts[:, j])
    assert torch.equal(store.to_tensor(), acts.transpose(0, 1))
    back = pickle.loads(pickle.dumps(store))  # a worker's result: shipped in memory
    assert not back.on_disk and torch.equal(back.to_tensor(), store.to_tensor())


def test_out_of_order_rows_land_at_their_prompts(acts, tmp_path):
    store = ReferenceStore.allocate(
        3, 23, 8, torch.float32, budget=MemoryBudget(0), spill_dir=tmp_path
    )
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(1))
    store.write(perm, acts[perm])
    assert torch.equal(store.to_tensor(), acts.transpose(0, 1))


def test_budget_is_shared_and_stores_keep_the_model_dtype():
    budget = MemoryBudget(2 * 3 * 10 * 8 * 2)  # room for exactly two bf16 stores of [3, 10, 8]
    stores = [ReferenceStore.allocate(3, 10, 8, torch.bfloat16, budget=budget) for _ in range(3)]
    assert [s.on_disk for s in stores] == [False, False, True]
    assert all(s.dtype == torch.bfloat16 for s in stores) and stores[0].nbytes == 480
    assert (
        store_dtype(torch.float64) == torch.float32 and store_dtype(torch.float16) == torch.float16
    )


def test_concat_and_select(acts, tmp_path):
    a = ReferenceStore.from_tensor(acts[:10].transpose(0, 1))
    b = ReferenceStore.allocate(3, 13, 8, torch.float32, budget=MemoryBudget(0), spill_dir=tmp_path)
    b.write(torch.arange(13), acts[10:])
    joined = ReferenceStore.concat([a, b], spill_dir=tmp_path)
    assert joined.on_disk and torch.equal(joined.to_tensor(), acts.transpose(0, 1))
    assert torch.equal(joined.select([2, 0]).to_tensor(), acts.transpose(0, 1)[[2, 0]])
    spilled = a.within(MemoryBudget(0), tmp_path)
    assert spilled.on_disk and torch.equal(spilled.to_tensor(), a.to_tensor())
    assert a.within(MemoryBudget(None)) is a


def _stats(acts, *, keep_budget):
    st = CheckpointStats("ck", [0, 1, 2])
    st.start_refs(
        acts.shape[0], acts.shape[2], torch.float32, layers=[0, 2], budget=MemoryBudget(keep_budget)
    )
    table = PoissonTable(7, 3)
    for idx, x in _batches(acts, 4):
        st.update(x, idx, n_bootstrap=7, seed=3, second=True, keep=True, weights=table)
    return st.finalize()


@pytest.mark.parametrize("keep_budget", [None, 0])
def test_statistics_file_round_trip_is_exact_and_is_safetensors(acts, keep_budget, tmp_path):
    st = _stats(acts, keep_budget=keep_budget)
    assert st.ref_layers == [0, 2] and st.activations is None  # not kept at every layer
    assert torch.equal(st.reference_layer(2), acts[:, 2]) and st.reference_layer(1) is None
    path = tmp_path / "s.safetensors"
    digest = st.write(path, {"name": "ck"})
    back, meta = CheckpointStats.read(path, "ck")
    assert meta["checksum"] == digest and back.refs.on_disk and back.ref_layers == [0, 2]
    for key, value in st.tensors().items():
        assert torch.equal(back.tensors()[key], value), key
    assert torch.equal(back.refs.to_tensor(), st.refs.to_tensor())
    with safe_open(str(path), framework="pt") as f:  # any safetensors reader opens it
        assert torch.equal(f.get_tensor("refs"), acts[:, [0, 2]].transpose(0, 1))
        assert torch.equal(f.get_tensor("total"), st.total)


def test_statistics_file_refuses_altered_or_truncated_bytes(acts, tmp_path):
    path = tmp_path / "s.safetensors"
    write_stats_file(
        path, {"a": torch.arange(5.0), "refs": ReferenceStore.from_tensor(acts.transpose(0, 1))}, {}
    )
    read_stats_file(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        read_stats_file(path)
    path.write_bytes(bytes(data[:-40]))
    with pytest.raises(ValueError, match="truncated"):
        read_stats_file(path)


def test_poisson_table_equals_the_pure_function():
    table = PoissonTable(11, 5)
    idx = torch.tensor([4, 0, 9])
    assert torch.equal(table(idx), poisson_weights(idx, 11, 5))
    assert torch.equal(table(torch.tensor([9, 4])), poisson_weights(torch.tensor([9, 4]), 11, 5))


def test_merge_joins_references_in_shard_order(acts):
    a, b = (CheckpointStats("ck", [0, 1, 2]) for _ in range(2))
    for st, (lo, hi) in ((a, (0, 9)), (b, (9, 23))):
        st.update(acts[lo:hi], torch.arange(lo, hi), n_bootstrap=0, seed=0, second=False, keep=True)
        st.finalize()
    merged = a.merge(b)
    assert merged.count == 23 and torch.equal(merged.activations, acts)
