"""What a :func:`~revlens.collect.collect` call computes: per checkpoint, what it needs (second
moments, per-prompt references), its cache key at every position, and which are cached already."""

import torch

from revlens.collect.cache import StatsCache
from revlens.collect.checkpoint import STATS_FORMAT, CheckpointStats
from revlens.collect.store import store_dtype
from revlens.history import Checkpoint, History
from revlens.model import LensModel
from revlens.modes import Which
from revlens.probes import TokenizedProbes
from revlens.sites import Site


class _Plan:
    """Which checkpoints need what, their cache keys (one per position), and which are cached.

    ``views``: one tokenized view per position label (a single position is an axis of length 1);
    a checkpoint is computed when any of its positions is missing from the cache."""

    def __init__(
        self,
        hist: History,
        lm: LensModel,
        sites: list[Site],
        views: dict[str, TokenizedProbes],
        cache: StatsCache | None,
        *,
        moments: Which,
        keep: Which,
        n_bootstrap: int,
        bootstrap_seed: int,
        keep_layers: list[int] | None,
    ) -> None:
        self.refs = (
            {c.name for c in hist.base}
            | {hist.aligned.name}
            | {r.start for r in hist.runs.values()}
        )
        self.keep_refs = {c.name for c in hist.base} | {hist.aligned.name}
        self.moments, self.keep = moments, keep
        self.keep_layers = keep_layers
        self.results: dict[str, dict[str, CheckpointStats]] = {label: {} for label in views}
        self.todo: list[tuple[Checkpoint, dict[str, str | None]]] = []
        for ck in hist:
            want = self.want(ck)
            extra = {"keep_layers": keep_layers} if want["keep"] and keep_layers is not None else {}
            keys: dict[str, str | None] = {}
            for label, view in views.items():
                cfg = {
                    "layers": [s.layer for s in sites],
                    "site": sites[0].kind,
                    "n_bootstrap": n_bootstrap,
                    "bootstrap_seed": bootstrap_seed,
                    "probes": view.fingerprint(),
                    "dtype": str(lm.dtype),
                    "architecture": lm.config_fingerprint,
                    "stats_format": STATS_FORMAT,
                }
                key = (
                    StatsCache.key(weights=ck.model_fingerprint(), **cfg, **want, **extra)
                    if cache
                    else None
                )
                hit = cache.get(key, ck.name) if cache is not None and key is not None else None
                if hit is not None:
                    self.results[label][ck.name] = hit
                keys[label] = key
            if any(ck.name not in done for done in self.results.values()):
                self.todo.append((ck, keys))

    def describe(
        self,
        n_total: int,
        sites: list[Site],
        tokenized: TokenizedProbes,
        batch_size: int,
        d: int,
        dtype: torch.dtype,
    ) -> str:
        """One line: what will be computed (the bar then shows the ETA)."""
        n, batches = len(tokenized), -(-len(tokenized) // batch_size)
        n_pos = len(self.results)
        keep = [ck for ck, _ in self.todo if self.want(ck)["keep"]]
        n_ref = len(self.keep_layers) if self.keep_layers is not None else len(sites)
        ref_mb = (
            len(keep)
            * n_pos
            * n
            * n_ref
            * d
            * torch.empty((), dtype=store_dtype(dtype)).element_size()
            / 2**20
        )
        at = f" × {n_pos} positions" if n_pos > 1 else ""
        return (
            f"collect: {len(self.todo)} of {n_total} checkpoints to compute ({n_total - len(self.todo)} cached) "
            f"× {len(sites)} sites{at} × {n} prompts: {len(self.todo) * batches} forward passes of <= "
            f"{batch_size} prompts"
            + (
                f"; per-prompt references of {len(keep)} checkpoints ({ref_mb:.1f} MB)"
                if keep
                else ""
            )
        )

    def want(self, ck: Checkpoint) -> dict[str, bool]:
        return {
            "second": self.moments == "all"
            or (self.moments == "reference" and ck.name in self.refs),
            "keep": self.keep == "all" or (self.keep == "reference" and ck.name in self.keep_refs),
        }

    def store(
        self,
        cache: StatsCache | None,
        ck: Checkpoint,
        keys: dict[str, str | None],
        per_position: dict[str, CheckpointStats],
    ) -> None:
        """Record one computed checkpoint at every position (and cache it under each position's key)."""
        for label, st in per_position.items():
            if (
                ck.name not in self.results[label]
            ):  # a position already cached keeps its cached statistics
                _store(self.results[label], cache, ck, keys[label], st)


def _store(
    results: dict[str, CheckpointStats],
    cache: StatsCache | None,
    ck: Checkpoint,
    key: str | None,
    st: CheckpointStats,
) -> None:
    st.name = ck.name
    results[ck.name] = st
    if cache is not None and key is not None:
        cache.put(key, st)
