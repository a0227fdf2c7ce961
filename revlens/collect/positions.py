"""Several positions of a chat template read in the same forward passes (``("post_instruction", k)``)."""

from concurrent.futures import Executor
from typing import Any

import torch
from tqdm.auto import tqdm

from revlens.collect.cache import StatsCache
from revlens.collect.checkpoint import PoissonTable
from revlens.collect.collector import (
    _check_args,
    _common,
    _history_stats,
    _keep_layers,
    _one,
    _Plan,
    _store,
    _worker_collect,
    resolve_probes,
)
from revlens.collect.stats import HistoryStats
from revlens.collect.store import DEFAULT_MEMORY_BUDGET, MemoryBudget
from revlens.history import History
from revlens.model import LensModel
from revlens.modes import Which
from revlens.probes import PositionRule
from revlens.sites import LayerSpec, access

__all__ = ["collect_positions"]


def collect_positions(history: History | Any, probes: Any = None, *, position: PositionRule = ("post_instruction", None),
                      model: Any = None, layers: LayerSpec = "all", site: str = "resid_post", batch_size: int = 32,
                      cache_dir: Any = None, moments: Which = "reference", keep: Which = "reference",
                      n_bootstrap: int = 100, bootstrap_seed: int = 0, device: Any = None,
                      dtype: torch.dtype | None = None, executor: Executor | None = None,
                      keep_layers: Any = None, memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
                      spill_dir: Any = None, progress: bool = True) -> dict[str, HistoryStats]:
    """:func:`collect` at several positions at once: one :class:`HistoryStats` per position label
    (``"-k" .. "-1"`` for ``("post_instruction", k)``), every position read in the **same**
    forward pass per checkpoint and batch (DESIGN §4). Each position is cached under its own key.
    The arguments are :func:`collect`'s.
    """
    _check_args(moments, keep, n_bootstrap, bootstrap_seed, batch_size, site, cache_dir, memory_budget, keep_layers,
                spill_dir)
    hist = History.load(history)
    pr = resolve_probes(hist, probes).with_position(position)
    cache = StatsCache(cache_dir) if cache_dir is not None else None
    lm = LensModel.for_history(hist, model, device=device, dtype=dtype)
    sites = access(lm).sites(layers, site)
    kept = _keep_layers(keep_layers, sites)
    tokenized = pr.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    views = {label: tokenized.view(label) for label in tokenized.positions}
    plans = {label: _Plan(hist, lm, sites, view, cache, moments=moments, keep=keep, n_bootstrap=int(n_bootstrap),
                          bootstrap_seed=int(bootstrap_seed), keep_layers=kept) for label, view in views.items()}
    common = _common(n_bootstrap, bootstrap_seed, batch_size, kept, spill_dir if spill_dir is not None else cache_dir)
    keys = {label: dict(plan.todo) for label, plan in plans.items()}
    todo = [ck for ck in hist if any(ck in k for k in keys.values())]
    first = next(iter(plans.values()))
    bar = tqdm(total=len(hist), initial=len(hist) - len(todo), desc="collect", unit="ckpt", disable=not progress)
    try:
        if executor is not None and todo:
            arch, tok = str(hist.architecture_dir()), hist.tokenizer()
            jobs = [(ck, executor.submit(_worker_collect, arch, tok, ck, tokenized, [s.layer for s in sites],
                                         sites[0].kind, {**common, "memory_budget": memory_budget, **first.want(ck)},
                                         device, lm.dtype)) for ck in todo]
            results = ((ck, fut.result()) for ck, fut in jobs)
        else:
            shared = {"memory_budget": MemoryBudget(memory_budget),
                      "poisson": PoissonTable(int(n_bootstrap), int(bootstrap_seed))}
            results = ((ck, _one(lm, ck, tokenized, sites, {**common, **shared, **first.want(ck)})) for ck in todo)
        for ck, per_position in results:
            bar.set_postfix_str(ck.name)
            for label, st in per_position.items():
                _store(plans[label].results, cache, ck, keys[label].get(ck), st)
            bar.update(1)
    finally:
        bar.close()
    return {label: _history_stats(hist, lm, plans[label], sites, views[label], common) for label in plans}
