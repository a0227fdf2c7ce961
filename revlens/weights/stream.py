"""``weight_reversion``: a history read from its weights, one module at a time (no forward pass).

Definitions (DESIGN §5), per parameter (module weight) ``W`` in its oriented frame
(:mod:`revlens.weights.catalog`):

- ``V = W_aligned − W_base`` — what alignment moved (the mean of the bases when a history has
  several), the same ``V`` for every run;
- ``ΔW_t = W_t − W_start`` — what fine-tuning moved up to step ``t``, from the run's own start:
  ``aligned`` for ordinary (and blocked) runs, the base it started from for **control** runs.
  For a control, ``cos(ΔW_t, −V)`` asks whether the same fine-tune, started where alignment never
  happened, also moves along ``−V`` (from base, *further away* from aligned): if weight-space
  reversion is a pull back toward the pre-alignment model, a control has nothing to undo and
  shows ``≈ 0``; a control that matched the runs would say the motion along ``−V`` belongs to the
  task, not to the history. For a LoRA checkpoint ``ΔW_t = scale · B · A`` exactly (the adapter
  is relative to its start);
- ``cos = cos(ΔW_t, −V)`` on the flattened weights; ``revert = −⟨ΔW_t, V⟩ / ‖V‖²`` (1 = the
  whole of alignment undone along ``V``, in weight units; it can exceed 1 or be negative);
- ``frac_<side>`` = share of ``‖ΔW_t‖²`` in ``V``'s top-k left / right / both singular subspaces,
  beside exact and random-subspace nulls (:mod:`revlens.weights.nulls`).

**Streaming.** Modules are the outer loop: for each parameter the bases and aligned tensors are
read (``V``, its top-K SVD and the random frames are made), then that parameter of every
checkpoint, one at a time. Memory: the start tensors, ``V`` and one checkpoint's tensor of one
module (plus ``V``'s top-K vectors), whatever the number of checkpoints; every checkpoint file
stays open (headers parsed once) and each tensor is read once, parameters in file order (every file
is read front to back), into reused buffers. The kernel reads the coming tensors asynchronously
(``posix_fadvise(WILLNEED)``, 256 MB ahead), so the disk and the arithmetic overlap with no thread;
``prefetch > 0`` also reads that many tensors ahead in a background thread
(:mod:`revlens.weights.prefetch`; slower on the project's VM, measured).
"""

import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, no_type_check

import pandas as pd
import torch
from tqdm.auto import tqdm
from typing_extensions import Never

from revlens._seeds import generator
from revlens.errors import ConfigError, HistoryError, NonFiniteError
from revlens.history import HistoryInput
from revlens.modes import SvdMethod
from revlens.weights.algebra import (
    Basis,
    Energies,
    make_basis,
    measure_dense,
    measure_lowrank,
    v_energy,
)
from revlens.weights.catalog import Catalog, Param, build_catalog
from revlens.weights.config import WeightsConfig
from revlens.weights.prefetch import Prefetch
from revlens.weights.readers import AdapterReader, BufferPool, Dense, LowRank, Readers, Replacement
from revlens.weights.report import WeightReport
from revlens.weights.rows import SIDES, Accumulator, add_nulls, base_row, k_rows, module_dims

__all__ = ["weight_reversion"]

log = logging.getLogger(__name__)


def _runs(history: Any, cfg: WeightsConfig) -> list[Any]:
    runs = list(history.runs.values())
    if cfg.runs is not None:
        unknown = [r for r in cfg.runs if r not in history.runs]
        if unknown:
            raise HistoryError(f"runs {unknown} are not in the history; runs: {list(history.runs)}")
        runs = [history.runs[r] for r in cfg.runs]
    if not runs:
        raise HistoryError("the history has no fine-tuning run: there is no ΔW to read")
    return runs


def _open(history: Any, runs: list[Any], catalog: Catalog, pool: BufferPool) -> Readers:
    readers = Readers()
    try:
        for ck in [*history.base, history.aligned, *(c for r in runs for c in r.steps.values())]:
            reader = readers.open(ck, catalog)
            reader.check_finite = False  # checked on the sums instead (_finite)
            reader.pool = pool
            if isinstance(reader, AdapterReader) and ck.role != "run":
                raise ConfigError(
                    f"the {ck.role} checkpoint {ck.name} is a LoRA adapter; V = W_aligned − W_base "
                    "needs full base and aligned weights (merge the adapter and save it)"
                )
    except BaseException:
        readers.close()
        raise
    return readers


class _Counter:
    """Counts the bytes read; with a pool, hands each read buffer back once it was converted."""

    def __init__(self, pool: BufferPool | None = None) -> None:
        self.bytes = 0
        self.pool = pool

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        self.bytes += t.numel() * t.element_size()
        return t

    def convert(self, t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        out = t.to(device=device, dtype=dtype)
        if (
            self.pool is not None
        ):  # no copy made (same dtype and device): the buffer is the caller's now
            self.pool.release(t, reuse=out.data_ptr() != t.data_ptr())
        return out


def _finite(value: float, checkpoint: str, p: Param) -> None:
    if not math.isfinite(value):
        raise NonFiniteError(f"checkpoint {checkpoint}: parameter {p.name!r} holds NaN or inf")


def _starts(
    p: Param, history: Any, nxt: Any, to: Any, count: _Counter
) -> tuple[dict, torch.Tensor]:
    starts = {ck.name: to(count(nxt())) for ck in history.base}
    w_base = sum(starts.values()) / len(starts) if len(starts) > 1 else next(iter(starts.values()))
    starts[history.aligned.name] = to(count(nxt()))
    for name, t in starts.items():
        _finite(float(t.sum()), name, p)
    return starts, starts[history.aligned.name] - w_base


def _energies(
    p: Param,
    payload: Any,
    start: torch.Tensor,
    basis: Basis,
    idx: torch.Tensor,
    to: Any,
    count: _Counter,
) -> Energies:
    """``payload``: a full checkpoint's tensor, or an adapter's update (``None``: unchanged)."""
    if isinstance(payload, torch.Tensor):
        return measure_dense(to(count(payload)) - start, basis, idx)
    if payload is None:
        return (
            measure_dense(torch.zeros_like(start), basis, idx)
            if not p.is_matrix
            else _zero(basis, idx)
        )
    if isinstance(payload, LowRank):
        return measure_lowrank(
            to(count(payload.b)), to(count(payload.a)), payload.scale, basis, idx
        )
    if isinstance(payload, Replacement):
        return measure_dense(to(count(payload.value)) - start, basis, idx)
    assert isinstance(payload, Dense)
    return measure_dense(to(count(payload.delta)).reshape(start.shape), basis, idx)


def _zero(basis: Basis, idx: torch.Tensor) -> Energies:
    """An untouched matrix of an adapter: ``ΔW = 0`` (no m × n zero tensor is made)."""
    z = torch.zeros(len(idx), dtype=torch.float64)
    d = 0 if basis.ql is None else basis.ql.shape[0]
    zr = torch.zeros(d, len(idx), dtype=torch.float64) if d else None
    return Energies(0.0, 0.0, z, z, z, zr, zr, zr) if basis.u is not None else Energies(0.0, 0.0)


def _module_rows(
    p: Param, en: Energies, basis: Basis, ks: list[int], head: dict[str, Any]
) -> list[dict[str, Any]]:
    row = {**head, **base_row(en.dot, en.dw2, basis.v_norm2, p.numel)}
    if not ks or en.left is None:
        return [{**row, "k": 0}]
    m, n = p.shape
    idx = torch.tensor([k - 1 for k in ks])
    energies = {s: getattr(en, s).double().cpu().numpy() for s in SIDES}
    rand = {
        s: (
            None
            if getattr(en, f"rand_{s}") is None
            else getattr(en, f"rand_{s}").double().cpu().numpy()
        )
        for s in SIDES
    }
    chance = {
        "left": [k / m for k in ks],
        "right": [k / n for k in ks],
        "both": [k * k / (m * n) for k in ks],
    }
    return [
        {**row, **r}
        for r in k_rows(
            ks, energies, rand, en.dw2, module_dims(ks, m, n), chance, v_energy(basis, idx)
        )
    ]


def _spectrum(p: Param, basis: Basis) -> list[dict[str, Any]]:
    if basis.sigma is None:
        return []
    s = basis.sigma.double().cpu().numpy()
    e = s * s / basis.v_norm2
    return [
        {
            "layer": p.layer,
            "module": p.name,
            "module_type": p.module_type,
            "group": p.group,
            "i": i + 1,
            "sigma": float(s[i]),
            "energy": float(e[i]),
            "cum_energy": float(e[: i + 1].sum()),
        }
        for i in range(len(s))
    ]


READAHEAD_BYTES = 256 << 20


def _jobs(
    params: list[Param], history: Any, runs: list[Any], readers: Readers
) -> Iterator[tuple[Any, Param]]:
    """Every read, in the order :func:`_module` consumes them: per parameter the bases, aligned, then
    each run's checkpoints. The kernel is asked to read the coming tensors in the background
    (``FullReader.advise``), at most ``READAHEAD_BYTES`` ahead (a bounded window: advised pages the
    cache dropped before use would be read twice)."""
    names = [
        *(ck.name for ck in history.base),
        history.aligned.name,
        *(ck.name for run in runs for ck in run.steps.values()),
    ]
    jobs = [(readers.by_name[name], p) for p in params for name in names]
    advised: list[int] = [0] * len(jobs)
    ahead, j = 0, 0
    for i, job in enumerate(jobs):
        while j < len(jobs) and (ahead < READAHEAD_BYTES or j <= i):
            reader, p = jobs[j]
            advised[j] = reader.advise(p) if hasattr(reader, "advise") else 0
            ahead += advised[j]
            j += 1
        yield job
        ahead -= advised[i]


def _module(
    p: Param,
    history: Any,
    runs: list[Any],
    nxt: Any,
    cfg: WeightsConfig,
    acc: Accumulator,
    to: Any,
    count: _Counter,
) -> tuple[list[dict], list[dict]]:
    starts, v = _starts(p, history, nxt, to, count)
    gen = generator(cfg.seed, "weights-null", p.name) if cfg.n_random else None
    basis = make_basis(v, max(cfg.ks), n_random=cfg.n_random, generator=gen, svd=cfg.svd)
    ks = [k for k in cfg.ks if k <= basis.rank]
    idx = torch.tensor([k - 1 for k in ks], dtype=torch.long, device=v.device)
    dims = module_dims(ks, *p.shape) if ks else {}
    rows = []
    for run in runs:
        start = starts[run.start]
        for step, ck in run.steps.items():
            en = _energies(p, nxt(), start, basis, idx, to, count)
            _finite(en.dot + en.dw2, ck.name, p)
            head = {
                "run": run.name,
                "kind": run.kind,
                "step": step,
                "layer": p.layer,
                "module": p.name,
                "module_type": p.module_type,
                "group": p.group,
                "shape": "×".join(map(str, p.shape)),
            }
            rows += _module_rows(p, en, basis, ks, head)
            for level in (p.layer, "model"):
                acc.add((run.name, step, level), en, basis.v_norm2, p.numel, ks, dims)
    return rows, _spectrum(p, basis)


def _provenance(
    history: Any, runs: list[Any], readers: Readers, cfg: WeightsConfig
) -> dict[str, Any]:
    cks = {}
    for ck in [*history.base, history.aligned, *(c for r in runs for c in r.steps.values())]:
        path = ck.local_path() if not hasattr(ck.source, "repo_id") else None
        entry = {
            "role": ck.role,
            "run": ck.run,
            "step": ck.step,
            "kind": readers.by_name[ck.name].kind,
            "source": str(path) if path is not None else repr(ck.source),
        }
        if cfg.fingerprints:
            entry["fingerprint"] = ck.fingerprint()
        cks[ck.name] = entry
    from revlens._version import __version__

    return {
        "revlens_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "architecture": str(history.architecture_dir()),
        "checkpoints": cks,
        "harm_metric": history.metadata.get("harm_metric"),
    }


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def weight_reversion(
    history: HistoryInput,
    *,
    config: WeightsConfig | None = None,
    progress: bool = True,
    ks: int | Sequence[int] | None = None,
    n_random: int | None = None,
    params: str | None = None,
    layers: str | int | Sequence[int] | None = None,
    runs: str | Sequence[str] | None = None,
    dtype: Literal["float64", "float32"] | None = None,
    device: str | None = None,
    svd: SvdMethod | None = None,
    seed: int | None = None,
    prefetch: int | None = None,
    fingerprints: bool | None = None,
    **unknown: Never,
) -> WeightReport:
    """Weight-space reversion of every checkpoint of a history, against its nulls (module docstring).

    Args:
        history: a :class:`~revlens.History` or anything ``History.load`` accepts (a lab dir, a
            ``history.json``...). Base and aligned must be full checkpoints; run checkpoints may be
            full checkpoints or PEFT LoRA adapters (relative to the run's start).
        config: a :class:`WeightsConfig`; its fields given as keywords (``ks``, ``n_random``,
            ``params``, ``layers``, ``runs``, ``dtype``, ``device``, ``svd``, ``seed``,
            ``prefetch``, ``fingerprints``, described there; ``None``: the config's) override it,
            validated before any weight is read (another keyword: a ``ConfigError`` naming it).
        progress: a progress bar over modules (with ETA).

    Returns:
        :class:`WeightReport`.

    Raises:
        ConfigError: a bad setting, no parameter selected, an adapter as base/aligned, DoRA.
        HistoryError: no run, or an unknown run name.
        CheckpointError, ShapeMismatchError, NonFiniteError: unreadable or mismatched checkpoints
            (raised while opening every checkpoint, before any arithmetic).
    """
    from revlens.history import History

    given = {"ks": ks, "n_random": n_random, "params": params, "layers": layers, "runs": runs}
    given |= {"dtype": dtype, "device": device, "svd": svd, "seed": seed, "prefetch": prefetch}
    given |= {"fingerprints": fingerprints}
    settings = {k: v for k, v in given.items() if v is not None}
    settings.update(unknown)  # refused by WeightsConfig.build, naming them
    cfg = WeightsConfig.build(config, "weight_reversion", **settings)
    hist = History.load(history)
    runs = _runs(hist, cfg)
    catalog = build_catalog(hist.architecture_dir())
    params = catalog.select(cfg.params, cfg.layers)
    if not params:
        raise ConfigError(
            f"no parameter matches params={cfg.params!r} and layers={cfg.layers}; "
            f"parameters: {list(catalog.params)[:6]} ..."
        )
    dtype = getattr(torch, cfg.dtype)
    device = torch.device(cfg.device)
    pool = BufferPool()
    readers = _open(hist, runs, catalog, pool)
    params.sort(
        key=readers.by_name[hist.aligned.name].position
    )  # file order: each file read front to back
    acc, count = Accumulator(cfg.ks), _Counter(pool)
    rows: list[dict] = []
    spectrum: list[dict] = []
    t0 = time.perf_counter()
    ahead = Prefetch(_jobs(params, hist, runs, readers), depth=cfg.prefetch)
    try:
        with torch.no_grad():
            for p in tqdm(
                params, desc="weight-space reversion", unit="module", disable=not progress
            ):
                r, s = _module(
                    p,
                    hist,
                    runs,
                    ahead.__next__,
                    cfg,
                    acc,
                    lambda t: count.convert(t, device, dtype),
                    count,
                )
                rows += r
                spectrum += s
        provenance = _provenance(hist, runs, readers, cfg)
    finally:
        ahead.close()
        readers.close()
    seconds = time.perf_counter() - t0
    provenance |= {
        "seconds": round(seconds, 3),
        "bytes_read": count.bytes,
        "gb_per_s": round(count.bytes / seconds / 1e9, 4) if seconds > 0 else float("nan"),
    }
    kinds = {r.name: r.kind for r in runs}
    agg = add_nulls(pd.DataFrame(acc.rows(kinds)))
    return WeightReport(
        table=add_nulls(pd.DataFrame(rows)),
        layers=agg[agg["layer"] >= -1].reset_index(drop=True),
        model=agg[agg["layer"] == -2].drop(columns="layer").reset_index(drop=True),
        spectrum=pd.DataFrame(
            spectrum,
            columns=[
                "layer",
                "module",
                "module_type",
                "group",
                "i",
                "sigma",
                "energy",
                "cum_energy",
            ],
        ),
        config={**cfg.to_dict(), "n_params": len(params), "base_combination": "mean of bases"},
        provenance=provenance,
        metrics=hist.metrics,
    )
