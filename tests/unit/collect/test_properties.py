"""Property-based tests (hypothesis): the statistics merge exactly over any prompt split, and the
cache key changes with every part of a request and with nothing else."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from revlens.collect.cache import StatsCache
from revlens.collect.stats import CheckpointStats


def _stats(x: torch.Tensor, idx: torch.Tensor, n_boot: int) -> CheckpointStats:
    s = CheckpointStats("c", list(range(x.shape[1])))
    s.update(x, idx, n_bootstrap=n_boot, seed=3, second=True, keep=False)
    return s.finalize()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 24),
    layers=st.integers(1, 3),
    d=st.integers(1, 6),
    n_boot=st.integers(0, 5),
    cut=st.floats(0.05, 0.95),
    seed=st.integers(0, 10_000),
)
def test_merging_prompt_shards_equals_one_pass(n, layers, d, n_boot, cut, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, layers, d, generator=g, dtype=torch.float64) * 10
    idx = torch.randperm(n, generator=g)  # shards hold arbitrary prompt indices, in any order
    k = max(1, min(n - 1, int(cut * n)))
    whole = _stats(x, idx, n_boot)
    merged = _stats(x[:k], idx[:k], n_boot).merge(_stats(x[k:], idx[k:], n_boot))
    assert merged.count == whole.count == n
    torch.testing.assert_close(merged.total, whole.total, atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(merged.second, whole.second, atol=1e-8, rtol=1e-12)
    torch.testing.assert_close(merged.covariance, whole.covariance, atol=1e-8, rtol=1e-10)
    if n_boot:
        # Poisson weights are a function of (seed, prompt index): the same in every shard layout
        torch.testing.assert_close(merged.boot_total, whole.boot_total, atol=1e-9, rtol=1e-12)
        torch.testing.assert_close(merged.boot_count, whole.boot_count, atol=0, rtol=0)


_PART = st.one_of(st.integers(-5, 5), st.text(max_size=6), st.lists(st.integers(0, 4), max_size=3))


@settings(max_examples=80, deadline=None)
@given(
    parts=st.dictionaries(
        st.sampled_from(
            [
                "weights",
                "architecture",
                "probes",
                "layers",
                "site",
                "dtype",
                "n_bootstrap",
                "bootstrap_seed",
                "second",
                "keep",
            ]
        ),
        _PART,
        min_size=1,
    ),
    which=st.integers(0, 100),
    other=_PART,
)
def test_cache_key_changes_with_any_part_and_only_with_it(parts, which, other):
    key = StatsCache.key(**parts)
    assert StatsCache.key(**dict(reversed(list(parts.items())))) == key  # order does not matter
    name = sorted(parts)[which % len(parts)]
    changed = {**parts, name: other}
    assert (StatsCache.key(**changed) == key) == (
        other == parts[name] and type(other) is type(parts[name])
    )
