"""Per-checkpoint statistics fan out over any concurrent.futures executor and merge exactly."""

import pytest
import torch

import tiny
from revlens import collect
from revlens.collect.stats import CheckpointStats


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
        shard = type(full)(full.tokens[sl], full.lengths[sl], full.weights[sl], labels=None, position="last",
                           tokenizer_id=full.tokenizer_id, texts=None)
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


@pytest.mark.slow
def test_dask_local_cluster_gives_the_serial_result(tiny_history):
    distributed = pytest.importorskip("distributed", reason="the optional [dask] extra is not installed")
    serial = collect(tiny_history, tiny.PROMPTS, progress=False, n_bootstrap=8)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        fanned = collect(tiny_history, tiny.PROMPTS, progress=False, n_bootstrap=8, executor=client.get_executor())
    for name in serial.checkpoints:
        assert torch.allclose(fanned.mean(name), serial.mean(name), atol=1e-6)
        assert torch.allclose(fanned[name].boot_total, serial[name].boot_total, atol=1e-5)
