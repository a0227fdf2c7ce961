"""Direction-fitting time of every estimator vs d_model and vs prompts, dense vs span (issue 29).

Each cell fits one estimator on one layer of synthetic paired references (aligned: anisotropic
Gaussian; base: aligned + a planted shift + noise) with ``n_bootstrap`` stability refits, once
with ``solver="dense"`` (the d × d path of revlens 0.2) and once with ``solver="auto"`` (the span
path when the rows spanning the fit are fewer than d), side by side in the same process. Reported
per cell: seconds per layer (best of ``--repeats``), the dense / auto ratio, and the largest
difference between the two bases (unit rows: a relative error). Per estimator and solver the
log-log slope of time vs d (at fixed prompts) and vs prompts (at fixed d) is fitted.

A cell is skipped (noted, with its prediction) when the fit plan's cost model
(:func:`revlens.directions.plan.plan_fits`) predicts over 3 × ``--cell-limit`` seconds, or when the
previous (smaller) cell of that solver took over ``--cell-limit``: the dense Ledoit–Wolf path grows
as d³ and would take the whole run.

    python benchmarks/bench_fit.py            # short grid: d 64 → 4096 at 16 prompts, prompts 16 → 1024 at d 512
    python benchmarks/bench_fit.py --full     # d 64 → 4096, prompts 16 → 4096
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, write
from revlens.collect.stats import CheckpointStats, HistoryStats
from revlens.directions import ESTIMATORS
from revlens.directions.plan import _costs, flop_rate

METHODS = ("mean_diff", "pca", "probe", "whitened")
SOLVERS = ("dense", "auto")


def make_stats(n: int, d: int, seed: int = 0, layers: int = 1) -> HistoryStats:
    """``layers`` layers of ``n`` paired prompts in R^d (base = aligned + shift + noise)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 3.0, d, dtype=torch.float64)
    aligned = torch.randn(n, layers, d, generator=g, dtype=torch.float64) * scale
    base = (
        aligned
        + torch.randn(layers, d, generator=g, dtype=torch.float64)
        + 0.7 * scale * torch.randn(n, layers, d, generator=g, dtype=torch.float64)
    )
    cks = {}
    for name, x in (("base", base), ("aligned", aligned)):
        st = CheckpointStats(name, list(range(layers)))
        st.update(x, torch.arange(n), n_bootstrap=20, seed=0, second=False, keep=True)
        cks[name] = st.finalize()
    return HistoryStats(
        layers=list(range(layers)),
        site="resid_post",
        position="last",
        d_model=d,
        checkpoints=cks,
        roles={"base": ("base", None, None), "aligned": ("aligned", None, 0)},
        run_starts={},
        meta={"n_prompts": n},
    )


def cell(method: str, n: int, d: int, args: argparse.Namespace, skip: set[str]) -> dict:
    stats = make_stats(n, d)
    row: dict = {
        "method": method,
        "n_prompts": n,
        "d_model": d,
        "k": args.k,
        "n_bootstrap": args.n_bootstrap,
    }
    bases = {}
    for solver in SOLVERS:
        if (method, solver) in skip:
            row[solver] = None
            continue
        est = ESTIMATORS[method](solver=solver, n_bootstrap=args.n_bootstrap, n_components=args.k)
        span = est._uses_span(stats)
        row[f"path_{solver}"] = "span" if span else "dense"
        first, refit, fixed = _costs(method, span, n, d, args.k)
        predicted = (first + args.n_bootstrap * refit) / flop_rate() + fixed * (
            1 + args.n_bootstrap
        )
        if predicted > 3 * args.cell_limit:
            row[solver], row[f"skipped_{solver}"] = None, f"predicted {predicted:.0f} s"
            continue
        once = best_of(lambda est=est: est.fit(stats), 1)
        # best of --repeats for cells under 2 s (a busy machine's noise), one run beyond
        row[solver] = (
            min(once, best_of(lambda est=est: est.fit(stats), args.repeats - 1))
            if once < 2.0 and args.repeats > 1
            else once
        )
        bases[solver] = est.direction_.basis.double()
        if row[solver] > args.cell_limit:
            skip.add((method, solver))  # type: ignore[arg-type]
    if len(bases) == 2:
        row["max_basis_diff"] = float((bases["dense"] - bases["auto"]).abs().max())
        row["ratio_dense_over_auto"] = row["dense"] / max(row["auto"], 1e-9)
    print(
        f"{method:9s} n={n:5d} d={d:5d}  dense {_fmt(row['dense'])}  auto {_fmt(row['auto'])}"
        + (
            f"  ×{row['ratio_dense_over_auto']:.1f}  Δ={row['max_basis_diff']:.1e}"
            if len(bases) == 2
            else ""
        ),
        flush=True,
    )
    return row


def _fmt(t: float | None) -> str:
    return "  skipped" if t is None else f"{t:8.4f}s"


def slopes(rows: list[dict], axis: str) -> dict:
    """Log-log slope of seconds vs ``axis`` per (method, solver), over the cells measured."""
    out = {}
    for method in METHODS:
        for solver in SOLVERS:
            pts = [(r[axis], r[solver]) for r in rows if r["method"] == method and r.get(solver)]
            if len(pts) >= 2:
                x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
                out[f"{method}/{solver}"] = round(float(np.polyfit(x, y, 1)[0]), 2)
    return out


def analyze_shape(args: argparse.Namespace) -> None:
    """``analyze``'s fitting step with its defaults (4 methods, n_stability 20, the plan) at the
    SmolLM2-135M shape of issue 29 (30 layers, 16 prompts, d 576); the dense Ledoit–Wolf path of
    revlens 0.2 timed on ``--dense-layers`` layers and scaled to 30."""
    from revlens.directions.plan import fit_directions

    stats = make_stats(16, 576, layers=30)
    t = time.perf_counter()
    fit_directions(list(METHODS), stats, n_stability=20, seed=0)
    new = time.perf_counter() - t
    few = stats.select(list(range(args.dense_layers)))
    t = time.perf_counter()
    ESTIMATORS["whitened"](solver="dense", n_bootstrap=20).fit(few)
    dense = (time.perf_counter() - t) * 30 / args.dense_layers
    print(
        f"analyze-shape fit, all methods: {new:.1f} s; dense whitened alone (scaled to 30 layers): {dense:.0f} s"
    )
    write(
        args.name + "_analyze_shape",
        {
            "command": "python benchmarks/bench_fit.py --analyze-shape",
            "shape": {"layers": 30, "prompts": 16, "d_model": 576, "n_stability": 20},
            "fit_all_methods_s": round(new, 2),
            "dense_whitened_scaled_s": round(dense, 1),
            "dense_layers_timed": args.dense_layers,
        },
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="d 64 → 4096 and prompts 16 → 4096")
    p.add_argument("--k", type=int, default=1, help="n_components (rank of the fitted basis)")
    p.add_argument("--n-bootstrap", type=int, default=5, help="stability refits per fit")
    p.add_argument("--repeats", type=int, default=3, help="best of, for cells under 2 s")
    p.add_argument(
        "--cell-limit", type=float, default=10.0, help="skip larger cells of a solver past this (s)"
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--name", default="fit", help="results/<name>.json")
    p.add_argument(
        "--analyze-shape",
        action="store_true",
        help="only the SmolLM2-shaped analyze fit (issue 29)",
    )
    p.add_argument(
        "--dense-layers",
        type=int,
        default=1,
        help="layers of the dense whitened timing (scaled to 30)",
    )
    args = p.parse_args()
    if args.analyze_shape:
        analyze_shape(args)
        return
    dims = [64, 256, 1024, 2048, 4096] if args.full else [64, 256, 1024, 4096]
    prompts = [16, 64, 256, 1024, 4096] if args.full else [16, 64, 256, 1024]
    n_fixed, d_fixed = 16, 512
    start = time.perf_counter()
    by_d: list[dict] = []
    by_n: list[dict] = []

    def result() -> dict:
        return {
            "command": "python benchmarks/bench_fit.py" + (" --full" if args.full else ""),
            "settings": {
                "k": args.k,
                "n_bootstrap": args.n_bootstrap,
                "repeats": args.repeats,
                "layers": 1,
                "d_sweep_prompts": n_fixed,
                "prompt_sweep_d": d_fixed,
                "cell_limit_s": args.cell_limit,
            },
            "vs_d": by_d,
            "vs_prompts": by_n,
            "slope_vs_d": slopes(by_d, "d_model"),
            "slope_vs_prompts": slopes(by_n, "n_prompts"),
            "max_basis_diff": max(
                (r.get("max_basis_diff", 0.0) for r in by_d + by_n), default=math.nan
            ),
            "wall_s": round(time.perf_counter() - start, 1),
        }

    for (
        method
    ) in args.methods:  # results are rewritten after every cell (a cut run keeps its cells)
        skip: set = set()
        for d in dims:
            by_d.append(cell(method, n_fixed, d, args, skip))
            write(args.name, result())
        skip = set()
        for n in prompts:
            by_n.append(cell(method, n, d_fixed, args, skip))
            write(args.name, result())
    final = result()
    print("slope vs d:", final["slope_vs_d"])
    print("slope vs prompts:", final["slope_vs_prompts"])
    print("wrote", write(args.name, final))


if __name__ == "__main__":
    main()
