"""Per-checkpoint statistics fan out over any concurrent.futures executor and merge exactly."""

import pytest
import torch

import tiny
from revlens import collect
from revlens.collect import dask_executor, ray_executor
from revlens.collect.stats import CheckpointStats
from revlens.errors import ConfigError


def test_prompt_shards_merge_exactly(tiny_history, tiny_lm):
    from revlens.collect import collect_checkpoint
    from revlens.probes import Probes
    from revlens.sites import resolve_sites

    sites = resolve_sites(tiny_lm.bridge)
    full = Probes(tiny.PROMPTS).tokenize(tiny_lm.tokenizer)
    ck = tiny_history["seed0/step-2"]
    whole = collect_checkpoint(tiny_lm, ck, full, sites, n_bootstrap=16, second=True)
    # shard by hand (forward numerics differ ~1e-7 with batch width; the merge algebra is exact).
    # Indices keep their global position, so Poisson
    # weights (a function of (seed, prompt index)) are identical
    parts = []
    for sl in (slice(0, 2), slice(2, 6)):
        shard = type(full)(
            full.tokens[sl],
            full.lengths[sl],
            full.weights[sl],
            labels=None,
            position="last",
            tokenizer_id=full.tokenizer_id,
            texts=None,
        )
        offset = sl.start
        orig = shard.batches

        def batches(bs, _orig=orig, _offset=offset):
            for b in _orig(bs):
                b.indices = b.indices + _offset
                yield b

        shard.batches = batches
        parts.append(collect_checkpoint(tiny_lm, ck, shard, sites, n_bootstrap=16, second=True))
    merged: CheckpointStats = parts[0].merge(parts[1])
    assert merged.count == whole.count
    assert torch.allclose(merged.mean, whole.mean, atol=1e-6)
    assert torch.allclose(merged.boot_total, whole.boot_total, atol=1e-5)
    assert torch.allclose(merged.covariance, whole.covariance, atol=1e-6)


@pytest.fixture(scope="module")
def serial(tiny_history):
    return collect(tiny_history, tiny.PROMPTS, progress=False, n_bootstrap=8)


def _same_as_serial(fanned, serial) -> None:
    for name in serial.checkpoints:
        assert torch.allclose(fanned.mean(name), serial.mean(name), atol=1e-6)
        assert torch.allclose(fanned[name].boot_total, serial[name].boot_total, atol=1e-5)
        if serial[name].refs is not None:  # per-prompt references come back from the workers too
            assert torch.allclose(
                fanned[name].refs.to_tensor(), serial[name].refs.to_tensor(), atol=1e-6
            )


@pytest.mark.slow
def test_dask_local_cluster_gives_the_serial_result(tiny_history, serial):
    # no importorskip: CI installs the dask extra (make test installs .[dev]), and this must run there
    executor = dask_executor(n_workers=2, threads_per_worker=1, host="127.0.0.1")
    try:
        fanned = collect(
            tiny_history, tiny.PROMPTS, progress=False, n_bootstrap=8, executor=executor
        )
    finally:
        executor.shutdown()
    _same_as_serial(fanned, serial)


@pytest.mark.slow
def test_ray_gives_the_serial_result(tiny_history, serial, tmp_path):
    executor = ray_executor(num_cpus=2)  # a local Ray instance of 2 CPUs, stopped by shutdown()
    try:
        fanned = collect(
            tiny_history,
            tiny.PROMPTS,
            progress=False,
            n_bootstrap=8,
            executor=executor,
            memory_budget=0,
            spill_dir=tmp_path,
        )
    finally:
        executor.shutdown()
    _same_as_serial(fanned, serial)
    assert fanned["aligned"].refs.on_disk  # shipped back in memory, held within the budget here


def test_array_task_parts_combine_into_the_serial_result(tiny_history, serial, tmp_path):
    # one "array task" per run, each saving its own statistics; a last job loads and combines them
    for i, run in enumerate(tiny_history.runs):
        part = collect(tiny_history.restricted([run]), tiny.PROMPTS, progress=False, n_bootstrap=8)
        part.save(tmp_path / f"part-{i}")
    parts = [type(serial).load(tmp_path / f"part-{i}") for i in range(len(tiny_history.runs))]
    combined = type(serial).combine(parts)
    assert list(combined.runs) == list(serial.runs) and set(combined.checkpoints) == set(
        serial.checkpoints
    )
    assert combined.run_starts == serial.run_starts and combined.kinds == serial.kinds
    for name in serial.checkpoints:
        assert torch.equal(combined.mean(name), serial.mean(name))
        assert torch.equal(combined[name].boot_total, serial[name].boot_total)
    with pytest.raises(ConfigError, match="cannot combine"):
        type(serial).combine(
            [
                parts[0],
                collect(tiny_history.restricted(), tiny.PROMPTS, progress=False, n_bootstrap=4),
            ]
        )
