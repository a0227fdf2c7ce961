"""``revlens replicate``: the paper's table on a lab track, with every control, over seeds and pairs.

``revlens replicate --track NAME [--pairs 0 1] [--seeds 0 1 2] [--full] --out DIR`` runs, for each
shipped pair, the track's lab (fine-tunes from aligned, a control from base), an SGD-momentum first
step, a rank-k clamp study (k chosen on held-out prompts), blocking (each method beside its
random-direction control), ``analyze`` and weight space (:mod:`revlens.lab.replicate_pair`), then
writes ``DIR/<track>/replication.md`` and ``replication.json``: one row per claim of Poppi & Lukas
(arXiv 2606.28525) with the paper's value, the lab's (mean ± std over seeds *and* pairs,
:mod:`revlens.lab.replicate_table`) and whether the *shape* holds, then rows the paper lacks.
Several tracks (``--track a b`` or ``--full``) also write ``DIR/summary.md``.

Default: the ``pretrain-like`` track (the setting the paper's hypothesis speaks to), pair 0, seeds
0 1 2, the default :class:`~revlens.lab.replicate_pair.Plan`; ``--full``: every track × both pairs
with :data:`~revlens.lab.replicate_pair.FULL_PLAN` (every blocking method, rank-k and weight-space
blocking, all direction candidates). Settings are fixed in docs/lab.md ("Replication"), not tuned.
"""

import argparse
import dataclasses
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, no_type_check

import pandas as pd

from revlens._io import write_json, write_text
from revlens._types import PathLike
from revlens.lab.replicate_pair import DEFAULT_PLAN, FULL_PLAN, Plan, run_pair
from revlens.lab.replicate_table import (
    blocking_rows,
    candidate_rows,
    drift_rows,
    harm_row,
    pool,
    pool_count,
    rank_rows,
    records_frame,
)

__all__ = [
    "DEFAULT_TRACK",
    "Replication",
    "register",
    "replicate",
    "replicate_tracks",
    "summary_markdown",
]

DEFAULT_TRACK = "pretrain-like"
SHIPPED_PAIRS = (0, 1)


@dataclass
class Replication:
    """One track's replication table, what produced it, and the per-run records behind it."""

    track: str
    rows: list[dict[str, Any]]
    config: dict[str, Any]
    records: pd.DataFrame = field(default_factory=lambda: records_frame([]))
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings_s: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """The table as a DataFrame (claim, paper, revlens_lab, shape_holds, note)."""
        return pd.DataFrame(self.rows)

    @property
    def holds(self) -> tuple[int, int]:
        """(rows whose shape holds, rows with a verdict)."""
        judged = [r["shape_holds"] for r in self.rows if r["shape_holds"] is not None]
        return sum(bool(h) for h in judged), len(judged)

    def command(self) -> str:
        cfg = self.config
        full = " --full" if cfg.get("full") else ""
        return (
            f"revlens replicate --track {self.track} --pairs {' '.join(map(str, cfg['pairs']))} "
            f"--seeds {' '.join(map(str, cfg['seeds']))}{full}"
        )

    def to_markdown(self) -> str:
        """``replication.md``: command, date, machine, wall time, the table, notes."""
        cfg = self.config
        wall, compute = (
            self.timings_s.get("total", math.nan),
            self.timings_s.get("compute", math.nan),
        )
        head = (
            f"Track `{self.track}` · command: `{self.command()}` · date {cfg['date']} · {cfg['machine']} · "
            f"wall time {compute:.0f} s (sum over pairs; this call {wall:.0f} s, finished pairs are read back) · "
            f"mean ± std over {len(cfg['seeds'])} seeds × {len(cfg['pairs'])} pair(s)"
        )
        lines = ["| claim | paper | revlens lab | shape holds | note |", "|---|---|---|---|---|"]
        for r in self.rows:
            holds = {True: "yes", False: "**no**", None: "—"}[r["shape_holds"]]
            lines.append(
                f"| {r['claim']} | {r['paper']} | {r['revlens_lab']} | {holds} | {r['note']} |"
            )
        h, n = self.holds
        notes = (
            f"Shape holds on {h} of {n} judged rows. 'Shape holds' asks only for the paper's qualitative claim "
            "(above the null; blocked below unblocked and below its random control; little task cost), not its "
            "magnitude; each row's rule is in its note and in docs/lab.md. Harm is the lab's rate over the 96 "
            "held-out harmful prompts. Per-pair timings: "
            + "; ".join(
                f"{p}: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items())
                for p, t in self.timings_s.get("pairs", {}).items()
            )
        )
        return "\n".join([head, "", *lines, "", notes, ""])

    def to_dict(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "rows": self.rows,
            "config": self.config,
            "meta": self.meta,
            "timings_s": self.timings_s,
            "records": self.records.to_dict("records"),
        }

    def save(self, out: PathLike) -> None:
        """Write ``replication.json`` and ``replication.md`` into ``out`` (atomically)."""
        from revlens.lab.subspaces import _json_safe

        d = Path(out)
        write_json(d / "replication.json", _json_safe(self.to_dict()))
        write_text(d / "replication.md", self.to_markdown())


def _merged_weights(reports: dict[str, Any]) -> Any:
    """One WeightReport of every pair's runs (run names prefixed ``pair<k>:``), so its headline
    pools over seeds and pairs."""
    from revlens.weights import WeightReport

    frames: dict[str, list[pd.DataFrame]] = {"table": [], "layers": [], "model": [], "spectrum": []}
    for pair, w in reports.items():
        for name in frames:
            df = getattr(w, name).copy()
            if "run" in df.columns:
                df["run"] = pair + ":" + df["run"].astype(str)
            frames[name].append(df.assign(pair=pair))
    first = next(iter(reports.values()))
    return WeightReport(
        **{k: pd.concat(v, ignore_index=True) for k, v in frames.items()},
        config=first.config,
        provenance=first.provenance,
    )


def _rows(
    records: pd.DataFrame,
    meta: dict[str, Any],
    plan: Plan,
    weights: dict[str, Any],
    tables: list[pd.DataFrame],
) -> list[dict[str, Any]]:
    from revlens.lab.weights import weight_rows

    rows = (
        drift_rows(records, meta) + harm_row(records) + blocking_rows(records, plan.block_methods)
    )
    rows += rank_rows(records, meta)
    if weights:
        rows += weight_rows(
            _merged_weights(weights), pd.concat(tables, ignore_index=True) if tables else None
        )
    return rows + candidate_rows(records, meta)


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores (shared; load {load:.1f} at the start)"
    )


def replicate(
    out: PathLike,
    *,
    track: str = DEFAULT_TRACK,
    pairs: Sequence[int] = (0,),
    seeds: Sequence[int] = (0, 1, 2),
    plan: Plan = DEFAULT_PLAN,
    full: bool = False,
    progress: bool = True,
) -> Replication:
    """Replicate the paper's table on one track into ``out/<track>/`` (see the module docstring)."""
    import revlens

    t0 = time.perf_counter()
    machine = _machine()
    track_dir = Path(out) / track
    results = {
        f"pair{p}": run_pair(track_dir, track, p, seeds, plan, progress=progress) for p in pairs
    }
    records = records_frame([r for res in results.values() for r in res["records"]])
    meta = {p: res["meta"] for p, res in results.items()}
    weights = {p: res["weights"] for p, res in results.items() if res.get("weights") is not None}
    tables = [
        res["weight_table"].assign(pair=p)
        for p, res in results.items()
        if res.get("weight_table") is not None
    ]
    rows = _rows(records, meta, plan, weights, tables)
    config = {
        "track": track,
        "pairs": list(pairs),
        "seeds": list(seeds),
        "full": full,
        "plan": plan.to_dict(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine,
        "revlens_version": revlens.__version__,
    }
    pair_times = {p: res["timings_s"] for p, res in results.items()}
    timings = {
        "total": round(time.perf_counter() - t0, 1),
        "pairs": pair_times,
        "compute": round(sum(t.get("total", 0.0) for t in pair_times.values()), 1),
    }
    rep = Replication(track, rows, config, records, meta, timings)
    rep.save(track_dir)
    return rep


def replicate_tracks(out: PathLike, tracks: Sequence[str], **kw: Any) -> dict[str, Replication]:
    """:func:`replicate` for each track, then ``out/summary.md`` (:func:`summary_markdown`)."""
    reps = {}
    for t in tracks:
        reps[t] = replicate(out, track=t, **kw)
        write_text(Path(out) / "summary.md", summary_markdown(reps))
    return reps


def summary_markdown(reps: dict[str, Replication]) -> str:
    """The cross-track summary: one row per track with its headline numbers and rows holding."""
    from revlens._numbers import format_mean_std as f

    lines = [
        "| track | cos after step 1 (AdamW / SGD-m) | cos at step 20 | above iso p99 | above cov "
        "p99 | harm aligned → T "
        "| harm at T: update-blocked / random-direction | held-out k: mediation (random p95) | "
        "rows holding | wall time (sum over pairs) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, r in reps.items():
        rc = r.records
        iso, cov = pool_count(rc, "runs", "above_iso"), pool_count(rc, "runs", "above_cov")
        h, n = r.holds
        lines.append(
            f"| `{t}` | {f(pool(rc, 'runs', 'cos_first'))} / {f(pool(rc, 'sgd', 'cos_first'))} | "
            f"{f(pool(rc, 'runs', 'cos_step20'))} | {iso['count']} / {iso['total']} | "
            f"{cov['count']} / {cov['total']} | "
            f"{f(pool(rc, 'aligned', 'harm'), pct=True)} → {f(pool(rc, 'runs', 'harm_T'), pct=True)} | "
            f"{f(pool(rc, 'update', 'harm_T'), pct=True)} / {f(pool(rc, 'update-random', 'harm_T'), pct=True)} | "
            f"{f(pool(rc, 'clamp', 'mediation'))} ({f(pool(rc, 'clamp', 'ctrl_p95'))}) | {h} / {n} | "
            f"{r.timings_s.get('compute', math.nan):.0f} s |"
        )
    first = next(iter(reps.values()))
    head = (
        f"Cross-track summary · pairs {first.config['pairs']} · seeds {first.config['seeds']} · "
        f"{'--full plan' if first.config['full'] else 'default plan'} · {first.config['date']} · "
        f"{first.config['machine']}"
    )
    return "\n".join(
        [
            head,
            "",
            *lines,
            "",
            "mean ± std over seeds × pairs; per-track tables in <track>/replication.md",
            "",
        ]
    )


# ---------------------------------------------------------------------- command line
def register(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Add the ``replicate`` sub-command (a ``revlens.commands`` entry point)."""
    from revlens.lab.cli import add_workers_argument
    from revlens.lab.tracks import TRACKS

    p = subparsers.add_parser(
        "replicate",
        parents=list(parents),
        help="the paper's table on lab tracks, with controls",
        description=(__doc__ or "").splitlines()[0],
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output dir (<track>/replication.md, summary.md)"
    )
    p.add_argument(
        "--track",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"lab track(s): {', '.join(TRACKS)}, or real alone (default: {DEFAULT_TRACK}; --full: all)",
    )
    p.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=None,
        help="shipped pre-training pairs (default 0; --full: 0 1)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    p.add_argument(
        "--full",
        action="store_true",
        help="every track and pair, every blocking method and control",
    )
    p.add_argument(
        "--lab",
        default=None,
        help="--track real: reuse a built real-track dir (revlens lab --track real): its plan "
        "(steps, checkpoints, ...) is used; --seeds must be its seeds",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_workers_argument(p)
    p.set_defaults(func=_run)


@no_type_check
def check_args(args: argparse.Namespace) -> tuple[list[str], list[int], list[int], Plan]:
    """Validated (tracks, pairs, seeds, plan) of ``revlens replicate`` — raises a RevlensError
    naming the bad value before any training."""
    from revlens._io import check_writable_dir
    from revlens.errors import ConfigError
    from revlens.lab.runner import asset_dir
    from revlens.lab.tracks import TRACKS

    tracks = list(args.track) if args.track else (list(TRACKS) if args.full else [DEFAULT_TRACK])
    bad = [t for t in tracks if t not in TRACKS]
    if bad:
        raise ConfigError(f"--track: unknown track(s) {bad}; tracks: {', '.join(TRACKS)}")
    if len(set(tracks)) != len(tracks):
        raise ConfigError(f"--track names a track twice: {tracks}")
    pairs = (
        list(args.pairs) if args.pairs is not None else (list(SHIPPED_PAIRS) if args.full else [0])
    )
    missing = [p for p in pairs if not (asset_dir() / f"pair{p}" / "pair.json").is_file()]
    if missing or len(set(pairs)) != len(pairs):
        raise ConfigError(
            f"--pairs: no shipped pair {missing or pairs} (shipped: {list(SHIPPED_PAIRS)}; each once)"
        )
    seeds = list(args.seeds)
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct non-negative integers, got {seeds}")
    plan = FULL_PLAN if args.full else DEFAULT_PLAN
    workers = getattr(args, "workers", None)
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers must be an integer >= 1, got {workers}")
        plan = dataclasses.replace(plan, workers=workers)
    check_writable_dir(args.out, "--out")
    return tracks, pairs, seeds, plan


def _run(args: argparse.Namespace) -> int:
    if args.track == ["real"]:  # SmolLM2-135M on real data (revlens/lab/real)
        from revlens.lab.real.cli import run_replicate_real

        return run_replicate_real(args)
    tracks, pairs, seeds, plan = check_args(args)
    reps = replicate_tracks(
        args.out,
        tracks,
        pairs=pairs,
        seeds=seeds,
        plan=plan,
        full=args.full,
        progress=not args.quiet,
    )
    for t, rep in reps.items():
        print(rep.to_markdown())  # noqa: T201
        print(Path(args.out, t, "replication.md").resolve())  # noqa: T201
    if len(reps) > 1:
        print(summary_markdown(reps))  # noqa: T201
        print(Path(args.out, "summary.md").resolve())  # noqa: T201
    return 0
