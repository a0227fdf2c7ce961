"""Stream the residual stream of every checkpoint through one booted model.

One forward per checkpoint per batch, hooks only at the requested sites (removed in
``finally``), each activation reduced to per-prompt vectors by the position rule inside the hook
and folded into running sums: memory does not grow with the number of prompts (except the
optional per-prompt activations of the reference checkpoints). The forward stops right after the
last requested site, so the unembedding is never computed.
"""

import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from revlens.collect.cache import StatsCache
from revlens.collect.stats import CheckpointStats, HistoryStats
from revlens.errors import ConfigError, NonFiniteError, ProbeError, RevlensError
from revlens.history import Checkpoint, History
from revlens.hooks import LayerSpec, Site, resolve_sites
from revlens.model import LensModel
from revlens.probes import PositionRule, Probes, TokenizedProbes

__all__ = ["collect", "collect_checkpoint", "resolve_probes"]

log = logging.getLogger(__name__)

Which = Literal["reference", "all", "none"]


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the forward pass."""


@dataclass(frozen=True)
class CollectConfig:
    """What to compute per checkpoint (the part of the cache key beside weights and probes)."""

    layers: tuple[int, ...]
    site: str
    n_bootstrap: int
    bootstrap_seed: int
    batch_size: int


def resolve_probes(history: History, probes: Any) -> Probes:
    """Turn ``probes`` (Probes, list of str, JSONL path, or None for a lab history) into Probes."""
    if isinstance(probes, Probes):
        return probes
    if probes is None:
        if history.lab_dir is not None:
            from revlens.lab import probe_prompts

            return Probes(probe_prompts())  # the lab's held-out harmful requests
        raise ProbeError("no probes given: pass a Probes, a list of prompts or a JSONL file "
                         "(only a lab history has a default probe set)")
    if isinstance(probes, (str, Path)) and str(probes).endswith(".jsonl"):
        return Probes.from_jsonl(probes)
    if isinstance(probes, (list, tuple)):
        return Probes(list(probes))
    raise ProbeError(f"cannot make a probe set from {type(probes).__name__}; expected Probes, a list or a .jsonl path")


def _reduce_hook(store: list, pos: int, weights: torch.Tensor, site: Site, name: str, stop: bool) -> Any:
    def hook(module: Any, args: Any, output: Any) -> None:
        act = output[0] if isinstance(output, tuple) else output
        reduced = torch.einsum("bp,bpd->bd", weights.to(act.dtype), act)
        if not bool(torch.isfinite(reduced).all()):
            raise NonFiniteError(f"checkpoint {name}: activations at layer {site.layer} ({site.hook_name}) hold NaN or inf")
        store[pos] = reduced
        if stop:
            raise _StopForward

    return hook


def collect_checkpoint(lm: LensModel, checkpoint: Checkpoint | None, tokenized: TokenizedProbes,
                       sites: Sequence[Site], *, n_bootstrap: int = 100, bootstrap_seed: int = 0,
                       batch_size: int = 32, second: bool = False, keep: bool = False,
                       name: str | None = None) -> CheckpointStats:
    """Statistics of one checkpoint (``None``: the weights loaded now) at ``sites``."""
    label = name or (checkpoint.name if checkpoint is not None else lm.loaded or "model")
    if checkpoint is not None and lm.loaded != checkpoint.name:
        lm.load_weights(checkpoint.state_dict(), name=checkpoint.name)
    stats = CheckpointStats(label, [s.layer for s in sites])
    bridge = lm.bridge
    was_training = bridge.training
    bridge.eval()
    device = lm.device
    try:
        with torch.no_grad():
            for batch in tokenized.batches(batch_size):
                store: list[Any] = [None] * len(sites)
                weights = batch.weights.to(device)
                handles = []
                try:
                    for i, site in enumerate(sites):
                        hp = bridge.hook_dict[site.hook_name]
                        handles.append(hp.register_forward_hook(
                            _reduce_hook(store, i, weights, site, label, stop=(i == len(sites) - 1 and _is_last(sites, site)))))
                    with contextlib.suppress(_StopForward):
                        bridge(batch.tokens.to(device))
                finally:
                    for h in handles:
                        h.remove()
                if any(s is None for s in store):
                    missing = [sites[i].hook_name for i, s in enumerate(store) if s is None]
                    raise RevlensError(f"checkpoint {label}: hooks {missing} never fired")
                stats.update(torch.stack(store, dim=1), batch.indices, n_bootstrap=n_bootstrap,
                             seed=bootstrap_seed, second=second, keep=keep)
    finally:
        bridge.train(was_training)
    return stats.finalize()


def _is_last(sites: Sequence[Site], site: Site) -> bool:
    # Hooks fire in forward order; sorting by layer within one kind is forward order.
    return all(s.kind == site.kind for s in sites) and site.layer == max(s.layer for s in sites)


_WORKER: dict[str, LensModel] = {}


def _worker_collect(arch: str, tokenizer: Any, checkpoint: Checkpoint, tokenized: TokenizedProbes,
                    layers: list[int], site: str, kwargs: dict[str, Any], device: Any = None,
                    dtype: torch.dtype = torch.float32) -> CheckpointStats:
    """Run in an executor's worker: boot the architecture once per process, then swap weights."""
    key = f"{arch}|{device}|{dtype}"
    lm = _WORKER.get(key)
    if lm is None:
        lm = _WORKER[key] = LensModel.boot(Path(arch), tokenizer=tokenizer, device=device, dtype=dtype)
    sites = resolve_sites(lm.bridge, layers, site)
    return collect_checkpoint(lm, checkpoint, tokenized, sites, **kwargs)


def collect(
    history: History | Any,
    probes: Any = None,
    *,
    model: Any = None,
    layers: LayerSpec = "all",
    site: str = "resid_post",
    position: PositionRule | None = None,
    batch_size: int = 32,
    cache_dir: Any = None,
    moments: Which = "reference",
    keep: Which = "reference",
    n_bootstrap: int = 100,
    bootstrap_seed: int = 0,
    device: Any = None,
    dtype: torch.dtype = torch.float32,
    executor: Executor | None = None,
    progress: bool = True,
) -> HistoryStats:
    """Residual-stream statistics at every requested layer of every checkpoint.

    Args:
        history: a :class:`History` (or anything ``History.load`` accepts, e.g. a lab dir).
        probes: a :class:`Probes`, a list of prompts, a JSONL path; ``None`` for a lab history.
        model: a booted :class:`LensModel` / ``TransformerBridge`` to reuse (default: boot one).
        layers: ``"all"`` or layer indices (see :mod:`revlens.hooks`).
        site: ``"resid_post"`` (default), ``"resid_mid"``, ``"resid_pre"`` or ``"ln_final"``.
        position: override the probes' position rule (``"last"``, ``"mean"`` or a mask).
        batch_size: prompts per forward.
        cache_dir: where per-checkpoint statistics are cached by content (resumable).
        moments: which checkpoints get second moments: the references (base, aligned, run
            starts), all, or none.
        keep: which checkpoints keep per-prompt activations (``"reference"``: base + aligned).
        n_bootstrap: Poisson-bootstrap replicates (0 disables confidence intervals).
        bootstrap_seed: seed of the bootstrap weights.
        device, dtype: where and in what precision the model runs (statistics are float64).
        executor: a ``concurrent.futures.Executor`` to fan checkpoints out (each worker boots
            the architecture once and ships back statistics only). For a local
            ``ProcessPoolExecutor`` use ``mp_context=multiprocessing.get_context("spawn")``:
            forking a process that already runs torch threads can deadlock.
        progress: show a tqdm bar over checkpoints.

    Returns:
        :class:`HistoryStats`.

    Example:
        >>> stats = collect(History.from_lab("out/lab"), layers=[1, 2])   # doctest: +SKIP
    """
    hist = History.load(history)
    for arg, val in (("moments", moments), ("keep", keep)):
        if val not in ("reference", "all", "none"):
            raise ConfigError(f"{arg}={val!r}; expected 'reference', 'all' or 'none'")
    if n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    pr = resolve_probes(hist, probes)
    if position is not None:
        pr = pr.with_position(position)
    lm = LensModel.boot(model) if model is not None else hist.boot(device=device, dtype=dtype)
    sites = resolve_sites(lm.bridge, layers, site)
    tokenized = pr.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    refs = {c.name for c in hist.base} | {hist.aligned.name} | {r.start for r in hist.runs.values()}
    keep_refs = {c.name for c in hist.base} | {hist.aligned.name}
    cache = StatsCache(cache_dir) if cache_dir is not None else None
    cfg = {"layers": [s.layer for s in sites], "site": site, "n_bootstrap": n_bootstrap,
           "bootstrap_seed": bootstrap_seed, "probes": tokenized.fingerprint(),
           "dtype": str(dtype)}

    def want(ck: Checkpoint) -> dict[str, Any]:
        return {"second": moments == "all" or (moments == "reference" and ck.name in refs),
                "keep": keep == "all" or (keep == "reference" and ck.name in keep_refs)}

    results: dict[str, CheckpointStats] = {}
    todo: list[tuple[Checkpoint, str | None]] = []
    for ck in hist:
        key = StatsCache.key(weights=ck.fingerprint(), **cfg, **want(ck)) if cache is not None else None
        hit = cache.get(key, ck.name) if cache is not None and key is not None else None
        if hit is not None:
            results[ck.name] = hit
        else:
            todo.append((ck, key))
    common = {"n_bootstrap": n_bootstrap, "bootstrap_seed": bootstrap_seed, "batch_size": batch_size}
    bar = tqdm(total=len(hist), initial=len(hist) - len(todo), desc="collect", unit="ckpt", disable=not progress)
    try:
        if executor is not None and todo:
            arch = str(hist.architecture or hist.aligned.local_path())
            futures = [(ck, key, executor.submit(_worker_collect, arch, hist.tokenizer(), ck, tokenized,
                                                 [s.layer for s in sites], site, {**common, **want(ck)},
                                                 device, dtype))
                       for ck, key in todo]
            for ck, key, fut in futures:
                st = fut.result()
                _store(results, cache, ck, key, st)
                bar.update(1)
        else:
            for ck, key in todo:
                bar.set_postfix_str(ck.name)
                try:
                    st = collect_checkpoint(lm, ck, tokenized, sites, **common, **want(ck))
                except RevlensError:
                    raise
                except Exception as exc:
                    raise RevlensError(f"while collecting checkpoint {ck.name}: {exc}") from exc
                _store(results, cache, ck, key, st)
                bar.update(1)
    finally:
        bar.close()
    roles = {ck.name: (ck.role, ck.run, ck.step) for ck in hist}
    ordered = {ck.name: results[ck.name] for ck in hist}
    return HistoryStats(
        layers=[s.layer for s in sites], site=site, position=tokenized.position, d_model=lm.d_model,
        checkpoints=ordered, roles=roles, run_starts={r.name: r.start for r in hist.runs.values()},
        controls=[r.name for r in hist.runs.values() if r.control],
        meta={"n_prompts": len(tokenized), "n_bootstrap": n_bootstrap, "bootstrap_seed": bootstrap_seed,
              "probe_fingerprint": tokenized.fingerprint(), "prompts": tokenized.texts,
              "model": lm.source, "fingerprints": {}},
    )


def _store(results: dict[str, CheckpointStats], cache: StatsCache | None, ck: Checkpoint, key: str | None,
           st: CheckpointStats) -> None:
    st.name = ck.name
    results[ck.name] = st
    if cache is not None and key is not None:
        cache.put(key, st)


