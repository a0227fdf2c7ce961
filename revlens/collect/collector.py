"""Stream the residual stream of every checkpoint through one booted model.

One forward per checkpoint per batch, hooks only at the requested sites (removed in
``finally``), each activation reduced to per-prompt vectors by the position rule inside the hook
and folded into running sums on the activations' device. The forward stops right after the last
requested site, so the unembedding is never computed.

Per-prompt references of the reference checkpoints (``keep="reference"``: base and aligned) are
kept in the model's dtype at ``keep_layers`` in a :class:`~revlens.collect.store.ReferenceStore`:
in memory while ``memory_budget`` allows, else in an unlinked file in ``spill_dir``, read back a
layer at a time — memory does not grow with the number of prompts. Before the work starts, one
line says what will be computed (checkpoints, forward passes, references); the progress bar then
shows the ETA.
"""

import logging
import sys
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, no_type_check

import torch
from tqdm.auto import tqdm

from revlens._config import as_int, as_layers
from revlens._types import Device, ModuleLike, PathLike
from revlens.collect.cache import StatsCache
from revlens.collect.checkpoint import CheckpointStats, PoissonTable
from revlens.collect.plan import _Plan
from revlens.collect.stats import HistoryStats
from revlens.collect.store import DEFAULT_MEMORY_BUDGET, MemoryBudget, check_spill_dir
from revlens.errors import ConfigError, ProbeError, RevlensError
from revlens.history import Checkpoint, History, HistoryInput, as_history, as_model
from revlens.model import LensModel, ModelInput
from revlens.modes import SITE_KINDS, WHICH, SiteKind, Which, check_mode
from revlens.probes import PositionRule, Probes, ProbesInput, TokenizedProbes
from revlens.probes.chat import ChatTemplate, template_from_dir
from revlens.sites import LayerSpec, Site, access

__all__ = [
    "accumulate",
    "as_probes",
    "collect",
    "collect_checkpoint",
    "history_template",
    "resolve_probes",
]

log = logging.getLogger(__name__)


@no_type_check  # validates its own argument (typed errors), also under the test type-checker
def as_probes(probes: ProbesInput | None, history: History) -> Probes:
    """The one conversion of a probes argument where it enters the API: ``probes`` (Probes, list of
    str, JSONL path) as Probes; ``None``: the history's default probe file (``metadata["probes"]``,
    e.g. a lab's held-out prompts).

    Chat probes without a template of their own get the history's (its aligned checkpoint's
    tokenizer, else a base's): one template renders the prompts for every checkpoint, also for
    base checkpoints that have none. Without one, the booted tokenizer's is used.

    Raises:
        ProbeError: no probes and no default set, or an object that is not a probe set (named)."""
    if isinstance(probes, Probes):
        pr = probes
    elif probes is None:
        default = history.metadata.get("probes")
        if not default:
            raise ProbeError(
                "no probes given: pass a Probes, a list of prompts or a JSONL file "
                "(this history declares no default probe set)"
            )
        pr = Probes.from_jsonl(default)
    elif isinstance(probes, (str, Path)) and str(probes).endswith(".jsonl"):
        pr = Probes.from_jsonl(probes)
    elif isinstance(probes, (list, tuple)):
        pr = Probes(list(probes))
    else:
        raise ProbeError(
            f"cannot make a probe set from {type(probes).__name__}; expected Probes, a list or a .jsonl path"
        )
    if pr.is_chat and pr.template is None:
        template = history_template(history)
        if template is not None:
            pr = pr.with_template(template)
    return pr


def history_template(history: History) -> ChatTemplate | None:
    """The chat template of a history: its aligned checkpoint's tokenizer files, else a base's,
    else the history's tokenizer dir (``None`` if none has one)."""
    dirs = [
        history.aligned.local_path(),
        *(b.local_path() for b in history.base),
        history.architecture,
    ]
    for d in dirs:
        if d is not None and Path(d).is_dir():
            found = template_from_dir(d)
            if found is not None:
                return found
    return None


def collect_checkpoint(
    lm: LensModel,
    checkpoint: Checkpoint | None,
    tokenized: TokenizedProbes,
    sites: Sequence[Site],
    *,
    n_bootstrap: int = 100,
    bootstrap_seed: int = 0,
    batch_size: int = 32,
    second: bool = False,
    keep: bool = False,
    name: str | None = None,
    keep_layers: Sequence[int] | None = None,
    memory_budget: MemoryBudget | int | None = DEFAULT_MEMORY_BUDGET,
    spill_dir: PathLike | None = None,
    poisson: PoissonTable | None = None,
) -> Any:
    """Statistics of one checkpoint (``None``: the weights loaded now) at ``sites``.

    With ``keep``, per-prompt references are kept at ``keep_layers`` (default: every site) in
    the model's dtype, in memory within ``memory_budget`` bytes (a :class:`MemoryBudget` shared
    by several calls, an int, or ``None``: unlimited), else in a file in ``spill_dir``.
    Several positions (``tokenized.multi``, e.g. ``("post_instruction", k)``): one
    :class:`CheckpointStats` per position (a dict label -> stats), all read in the same forward.
    """
    if checkpoint is not None:
        lm.load(checkpoint)
    label = name or (checkpoint.name if checkpoint is not None else lm.loaded or "model")
    return accumulate(
        lm,
        tokenized,
        sites,
        label=label,
        d_model=lm.d_model,
        dtype=lm.dtype,
        n_bootstrap=n_bootstrap,
        bootstrap_seed=bootstrap_seed,
        batch_size=batch_size,
        second=second,
        keep=keep,
        keep_layers=keep_layers,
        memory_budget=memory_budget,
        spill_dir=spill_dir,
        poisson=poisson,
    )


def accumulate(
    model: ModuleLike,
    tokenized: TokenizedProbes,
    sites: Sequence[Site],
    *,
    label: str,
    d_model: int,
    dtype: torch.dtype,
    n_bootstrap: int = 100,
    bootstrap_seed: int = 0,
    batch_size: int = 32,
    second: bool = False,
    keep: bool = False,
    keep_layers: Sequence[int] | None = None,
    memory_budget: MemoryBudget | int | None = DEFAULT_MEMORY_BUDGET,
    spill_dir: PathLike | None = None,
    poisson: PoissonTable | None = None,
    mask: bool = False,
) -> Any:
    """The one statistics loop: the weights ``model`` holds now (a :class:`LensModel`, a bridge or a
    plain Hugging Face model, read through :func:`revlens.sites.access`) streamed over ``tokenized``
    at ``sites`` into a :class:`CheckpointStats` per position (a dict label -> stats when several
    positions are read). ``mask``: pass the padding's attention mask to the forward (right-padded
    prompts under a causal mask do not need it). :func:`collect_checkpoint` and
    :func:`revlens.collect.collect_models` both run it."""
    multi = tokenized.multi
    stacked = tokenized.stacked() if multi else None
    out = {pos: CheckpointStats(label, [s.layer for s in sites]) for pos in tokenized.positions}
    if keep:
        budget = (
            memory_budget
            if isinstance(memory_budget, MemoryBudget) or memory_budget is None
            else MemoryBudget(memory_budget)
        )
        for st in out.values():
            st.start_refs(
                len(tokenized),
                d_model,
                dtype,
                layers=keep_layers,
                budget=budget,
                spill_dir=spill_dir,
            )
    table = poisson if poisson is not None else PoissonTable(n_bootstrap, bootstrap_seed)
    acc = access(model)
    with torch.no_grad():
        for batch in tokenized.batches(batch_size):
            weights = (
                batch.weights
                if stacked is None
                else stacked[batch.indices, :, : batch.tokens.shape[1]]
            )
            pad = None
            if mask:
                pad = (
                    torch.arange(batch.tokens.shape[1])[None] <= batch.last_index[:, None]
                ).long()
            x = torch.stack(
                acc.read(batch.tokens, weights, sites, mask=pad, check_finite=label), dim=1
            )
            for j, st in enumerate(out.values()):
                st.update(
                    x if stacked is None else x[:, :, j],
                    batch.indices,
                    n_bootstrap=n_bootstrap,
                    seed=bootstrap_seed,
                    second=second,
                    keep=keep,
                    weights=table,
                )
    done = {pos: st.finalize() for pos, st in out.items()}
    return done if multi else next(iter(done.values()))


def _by_position(stats: Any, tokenized: TokenizedProbes) -> dict[str, CheckpointStats]:
    """:func:`collect_checkpoint`'s result on the position axis (one position: an axis of length 1)."""
    return stats if isinstance(stats, dict) else {next(iter(tokenized.positions)): stats}


_WORKER: dict[str, LensModel] = {}


def _worker_collect(
    arch: str,
    tokenizer: Any,
    checkpoint: Checkpoint,
    tokenized: TokenizedProbes,
    layers: list[int],
    site: SiteKind,
    kwargs: dict[str, Any],
    device: Any = None,
    dtype: torch.dtype = torch.float32,
) -> CheckpointStats | dict[str, CheckpointStats]:
    """Run in an executor's worker: boot the architecture once per process, then swap weights."""
    key = f"{arch}|{device}|{dtype}"
    lm = _WORKER.get(key)
    if lm is None:
        lm = _WORKER[key] = LensModel.boot(
            Path(arch), tokenizer=tokenizer, device=device, dtype=dtype
        )
    sites = access(lm).sites(layers, site)
    return collect_checkpoint(lm, checkpoint, tokenized, sites, **kwargs)


def _check_args(
    moments: Any,
    keep: Any,
    n_bootstrap: Any,
    bootstrap_seed: Any,
    batch_size: Any,
    site: Any,
    cache_dir: Any,
    memory_budget: Any,
    keep_layers: Any,
    spill_dir: Any = None,
) -> None:
    check_mode("moments", moments, WHICH)
    check_mode("keep", keep, WHICH)
    check_mode("site", site, SITE_KINDS)
    as_int("n_bootstrap", n_bootstrap, min=0)
    as_int("bootstrap_seed", bootstrap_seed)
    as_int("batch_size", batch_size, min=1)
    if cache_dir is not None:
        StatsCache.check_dir(cache_dir)
    if spill_dir is not None:
        check_spill_dir(spill_dir)
    if memory_budget is not None:
        as_int("memory_budget", memory_budget, min=0)
    if keep_layers is not None:
        as_layers(keep_layers, "keep_layers")


def _keep_layers(keep_layers: Any, sites: list[Site]) -> list[int] | None:
    if keep_layers is None:
        return None
    wanted = as_layers(keep_layers, "keep_layers")
    if wanted == "all":
        return None
    collected = [s.layer for s in sites]
    missing = [layer for layer in wanted if layer not in collected]
    if missing:
        raise ConfigError(f"keep_layers {missing} are not among the collected layers {collected}")
    return [layer for layer in collected if layer in wanted]


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def collect(
    history: HistoryInput,
    probes: ProbesInput | None = None,
    *,
    model: ModelInput | None = None,
    layers: LayerSpec = "all",
    site: SiteKind = "resid_post",
    position: PositionRule | None = None,
    batch_size: int = 32,
    cache_dir: PathLike | None = None,
    moments: Which = "reference",
    keep: Which = "reference",
    n_bootstrap: int = 100,
    bootstrap_seed: int = 0,
    device: Device | None = None,
    dtype: torch.dtype | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    keep_layers: Sequence[int] | None = None,
    memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
    spill_dir: PathLike | None = None,
) -> HistoryStats | dict[str, HistoryStats]:
    """Residual-stream statistics at every requested layer of every checkpoint.

    Positions are an axis: a rule that reads one position (``"last"``, ``"mean"``, a mask) gives one
    :class:`HistoryStats`; a rule that reads several (``("post_instruction", k)``) gives one
    :class:`HistoryStats` per position label (``"-k" .. "-1"``), every position read in the **same**
    forward pass per checkpoint and batch (DESIGN §4), each cached under its own key. Both go through
    the same plan, announcement, memory budget and executor.

    Args:
        history: a :class:`History` (or anything ``History.load`` accepts, e.g. a lab dir).
        probes: a :class:`Probes`, a list of prompts, a JSONL path; ``None``: the history's default
            probe set (``History.metadata["probes"]``).
        model: a booted :class:`LensModel` / ``TransformerBridge`` to reuse (default: boot one).
            Weights are swapped by content: a model holding another history's checkpoint of the
            same name is reloaded.
        layers: ``"all"`` or layer indices (see :mod:`revlens.sites`).
        site: a site kind (:data:`revlens.modes.SITE_KINDS`; default ``"resid_post"``).
        position: override the probes' position rule (``"last"``, ``"mean"``, a mask, or
            ``("post_instruction", k)`` for several positions at once).
        batch_size: prompts per forward.
        cache_dir: where per-checkpoint statistics are cached by content (resumable; the key holds
            the weights, architecture, probes, sites, every setting and the statistics format).
        moments: which checkpoints get second moments: the references (base, aligned, run
            starts), all, or none.
        keep: which checkpoints keep per-prompt references (``"reference"``: base + aligned),
            for the paired-PCA / probe directions and Ledoit–Wolf whitening (module docstring).
        keep_layers, memory_budget, spill_dir: the references' layers (default: all collected),
            bytes held in memory in all, over all positions (default 16 MiB, ``None``: unlimited)
            and where the rest goes (default: ``cache_dir``, else ``TMPDIR``).
        n_bootstrap, bootstrap_seed: Poisson-bootstrap replicates (0: no intervals) and their seed.
        device, dtype: where and in what precision the model runs (default: the given model's, else
            float32 on the CPU); statistics are float64, and the dtype is part of the cache key.
        executor: a ``concurrent.futures.Executor`` to fan checkpoints out (each worker boots once
            and ships back statistics only, held here within ``memory_budget``;
            :mod:`revlens.collect.executors`).
        progress: show a tqdm bar over checkpoints.

    Returns:
        :class:`HistoryStats`, or a dict position label -> :class:`HistoryStats` for a rule that
        reads several positions.

    Example: ``collect(History.load("out/lab"), layers=[1, 2])``.
    """
    by_position, multi = _collect(
        history,
        probes,
        model=model,
        layers=layers,
        site=site,
        position=position,
        batch_size=batch_size,
        cache_dir=cache_dir,
        moments=moments,
        keep=keep,
        n_bootstrap=n_bootstrap,
        bootstrap_seed=bootstrap_seed,
        device=device,
        dtype=dtype,
        executor=executor,
        progress=progress,
        keep_layers=keep_layers,
        memory_budget=memory_budget,
        spill_dir=spill_dir,
    )
    return by_position if multi else next(iter(by_position.values()))


@no_type_check  # checks its own arguments first (_check_args), like collect
def _collect(
    history: Any,
    probes: Any,
    *,
    model: Any,
    layers: LayerSpec,
    site: SiteKind,
    position: PositionRule | None,
    batch_size: int,
    cache_dir: Any,
    moments: Which,
    keep: Which,
    n_bootstrap: int,
    bootstrap_seed: int,
    device: Any,
    dtype: torch.dtype | None,
    executor: Executor | None,
    progress: bool,
    keep_layers: Sequence[int] | None,
    memory_budget: int | None,
    spill_dir: Any,
) -> tuple[dict[str, HistoryStats], bool]:
    """:func:`collect` on the position axis: (label -> :class:`HistoryStats`, whether the rule reads
    several positions)."""
    _check_args(
        moments,
        keep,
        n_bootstrap,
        bootstrap_seed,
        batch_size,
        site,
        cache_dir,
        memory_budget,
        keep_layers,
        spill_dir,
    )
    hist = as_history(history)
    pr = (
        as_probes(probes, hist)
        if position is None
        else as_probes(probes, hist).with_position(position)
    )
    cache = StatsCache(cache_dir) if cache_dir is not None else None
    lm = as_model(model, hist, device=device, dtype=dtype)
    sites = access(lm).sites(layers, site)
    kept = _keep_layers(keep_layers, sites)
    tokenized = pr.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    views = {label: tokenized.view(label) for label in tokenized.positions}
    plan = _Plan(
        hist,
        lm,
        sites,
        views,
        cache,
        moments=moments,
        keep=keep,
        n_bootstrap=int(n_bootstrap),
        bootstrap_seed=int(bootstrap_seed),
        keep_layers=kept,
    )
    common = _common(
        n_bootstrap,
        bootstrap_seed,
        batch_size,
        kept,
        spill_dir if spill_dir is not None else cache_dir,
    )
    _announce(
        plan.todo
        and plan.describe(len(hist), sites, tokenized, int(batch_size), lm.d_model, lm.dtype),
        progress,
    )
    bar = tqdm(
        total=len(hist),
        initial=len(hist) - len(plan.todo),
        desc="collect",
        unit="ckpt",
        disable=not progress,
    )
    try:
        if executor is not None and plan.todo:
            _fan_out(
                executor,
                hist,
                plan,
                tokenized,
                sites,
                {**common, "memory_budget": memory_budget},
                cache,
                bar,
                device,
                lm.dtype,
            )
        else:
            _serial(lm, plan, tokenized, sites, common, memory_budget, cache, bar)
    finally:
        bar.close()
    return {
        label: _history_stats(hist, lm, plan.results[label], sites, view, common)
        for label, view in views.items()
    }, tokenized.multi


def _common(
    n_bootstrap: Any, bootstrap_seed: Any, batch_size: Any, kept: list[int] | None, spill: Any
) -> dict[str, Any]:
    """The settings every checkpoint's collection shares."""
    return {
        "n_bootstrap": int(n_bootstrap),
        "bootstrap_seed": int(bootstrap_seed),
        "batch_size": int(batch_size),
        "keep_layers": kept,
        "spill_dir": None if spill is None else str(spill),
    }


def _announce(line: Any, progress: bool) -> None:
    if not line:
        return
    if progress:
        tqdm.write(line, file=sys.stderr)
    else:
        log.info("%s", line)


def _serial(
    lm: LensModel,
    plan: _Plan,
    tokenized: TokenizedProbes,
    sites: list[Site],
    common: dict[str, Any],
    memory_budget: int | None,
    cache: StatsCache | None,
    bar: Any,
) -> None:
    """Every checkpoint to compute, one after the other on the booted model (one budget, one
    table of Poisson weights for all checkpoints and positions)."""
    shared = {
        "memory_budget": MemoryBudget(memory_budget),
        "poisson": PoissonTable(common["n_bootstrap"], common["bootstrap_seed"]),
    }
    for ck, keys in plan.todo:
        bar.set_postfix_str(ck.name)
        st = _one(lm, ck, tokenized, sites, {**common, **shared, **plan.want(ck)})
        plan.store(cache, ck, keys, _by_position(st, tokenized))
        bar.update(1)


def _one(
    lm: LensModel,
    ck: Checkpoint,
    tokenized: TokenizedProbes,
    sites: list[Site],
    kwargs: dict[str, Any],
) -> Any:
    try:
        return collect_checkpoint(lm, ck, tokenized, sites, **kwargs)
    except RevlensError:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        raise RevlensError(
            f"while collecting checkpoint {ck.name}: {type(exc).__name__}: {exc}"
        ) from exc


def _fan_out(
    executor: Executor,
    hist: History,
    plan: _Plan,
    tokenized: TokenizedProbes,
    sites: list[Site],
    common: dict[str, Any],
    cache: StatsCache | None,
    bar: Any,
    device: Any,
    dtype: torch.dtype,
) -> None:
    arch = str(hist.architecture_dir())
    # a worker spills to its own temporary dir and ships its references back in memory; here they
    # are held within the same budget as a serial collect (one budget over every position)
    budget, spill = MemoryBudget(common["memory_budget"]), common["spill_dir"]
    kwargs = {**common, "spill_dir": None}
    futures = [
        (
            ck,
            keys,
            executor.submit(
                _worker_collect,
                arch,
                hist.tokenizer(),
                ck,
                tokenized,
                [s.layer for s in sites],
                sites[0].kind,
                {**kwargs, **plan.want(ck)},
                device,
                dtype,
            ),
        )
        for ck, keys in plan.todo
    ]
    for ck, keys, fut in futures:
        bar.set_postfix_str(ck.name)
        per_position = _by_position(fut.result(), tokenized)
        for st in per_position.values():
            if st.refs is not None:
                st.refs = st.refs.within(budget, spill)
        plan.store(cache, ck, keys, per_position)
        bar.update(1)


def _history_stats(
    hist: History,
    lm: LensModel,
    results: dict[str, CheckpointStats],
    sites: list[Site],
    tokenized: TokenizedProbes,
    common: dict[str, Any],
) -> HistoryStats:
    roles = {ck.name: (ck.role, ck.run, ck.step) for ck in hist}
    ordered = {ck.name: results[ck.name] for ck in hist}
    return HistoryStats(
        layers=[s.layer for s in sites],
        site=sites[0].kind,
        position=tokenized.position,
        d_model=lm.d_model,
        checkpoints=ordered,
        roles=roles,
        run_starts={r.name: r.start for r in hist.runs.values()},
        controls=[r.name for r in hist.runs.values() if r.control],
        kinds=hist.run_kinds(),
        meta={
            "n_prompts": len(tokenized),
            "n_bootstrap": common["n_bootstrap"],
            "bootstrap_seed": common["bootstrap_seed"],
            "probe_fingerprint": tokenized.fingerprint(),
            "prompts": tokenized.texts,
            "model": lm.source,
            "architecture": lm.config_fingerprint,
            "chat_template": tokenized.template,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "datasets": tokenized.datasets,
            "labels": None
            if tokenized.labels is None
            else [None if x is None else str(x) for x in tokenized.labels],
        },
    )


@no_type_check  # validates its own argument (typed errors)
def resolve_probes(history: History, probes: ProbesInput | None) -> Probes:
    """:func:`as_probes` with the arguments the other way round (its older name)."""
    return as_probes(probes, history)
