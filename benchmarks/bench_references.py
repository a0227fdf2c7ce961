"""Peak memory of ``revlens.collect`` with its defaults at 1× and 10× the prompts (issue 23).

With its defaults ``collect`` keeps per-prompt references of base and aligned (for the paired-PCA,
probe and Ledoit–Wolf directions). They are kept in the model's dtype, in memory within
``memory_budget`` (16 MiB) and in a file beyond it, so peak memory should not grow with the number
of prompts. Each configuration runs in a fresh process (peak RSS is a per-process high-water
mark) on a GPT-2 of 4 layers, d 256 (base, aligned, 2 run steps): boot, a warm-up collect on 32
prompts, then the measured collect. Rows, side by side:

- defaults (``memory_budget`` 16 MiB) at N and 10·N prompts — the target: peak RSS growth ≤ 5 %;
- ``memory_budget=None`` (everything in memory) at the same sizes, to show what the budget buys;
- ``keep="none"`` (means, bootstrap and moments only), the floor.

Also reports the references' bytes and whether they went to disk, and the 7B arithmetic
(d 4096, 33 sites, 10 000 prompts) for ``docs/scale.md``.

Peak RSS is the median over 3 interleaved repeats (a single process varies by tens of MB: the
safetensors files are memory-mapped while weights load); the RSS increase *during* the measured
collect (sampled every 2 ms) is reported beside it.

    python benchmarks/bench_references.py [--quick]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 0.05
CONFIGS = {"defaults": {}, "unbudgeted": {"memory_budget": None}, "keep_none": {"keep": "none"}}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Sampler:
    """Highest resident set size seen every 2 ms while the block runs."""

    def __enter__(self) -> "_Sampler":
        self.peak, self._stop = _current_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _current_mb())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def worker(root: Path, n_prompts: int, config: str) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    import bench_collect as bc

    import revlens

    torch.set_num_threads(1)
    dirs = bc.checkpoint_dirs(root, 4)
    hist = revlens.History.from_dirs(
        base=dirs[0], aligned=dirs[1], runs={"run": {1: dirs[2], 2: dirs[3]}}
    )
    lm = hist.boot()
    kw = {"model": lm, "progress": False, "batch_size": 64, **CONFIGS[config]}
    revlens.collect(hist, bc.prompts(32), **kw)  # warm-up: lazy allocations, allocator pools
    before = _current_mb()
    t0 = time.perf_counter()
    with _Sampler() as sampler:
        stats = revlens.collect(hist, bc.prompts(n_prompts), **kw)
    wall = time.perf_counter() - t0
    refs = [st.refs for st in stats.checkpoints.values() if st.refs is not None]
    return {
        "config": config,
        "n_prompts": n_prompts,
        "wall_s": round(wall, 3),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "collect_delta_mb": round(sampler.peak - before, 1),
        "refs_mb": round(sum(r.nbytes for r in refs) / 2**20, 2),
        "refs_on_disk": sum(r.on_disk for r in refs),
        "refs_dtype": str(refs[0].dtype) if refs else None,
    }


def arithmetic_7b() -> dict:
    n, sites, d = 10_000, 33, 4096
    per = {
        "bfloat16": n * sites * d * 2,
        "float32": n * sites * d * 4,
        "float64 (revlens 0.1)": n * sites * d * 8,
    }
    return {"prompts": n, "sites": sites, "d_model": d, "bytes_per_reference_checkpoint": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 vs 1280 prompts")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), int(args.worker[1]), args.worker[2])))
        return
    sys.path.insert(0, str(HERE))
    import bench_collect as bc

    import _common

    n1, repeats = (128, 1) if args.quick else (256, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bc.build(Path(tmp), 4, 4, 256)
        for rep in range(repeats):  # interleaved, the median of each cell is kept
            for config in CONFIGS:
                for n in (n1, 10 * n1):
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", tmp, str(n), config],
                        check=True,
                        capture_output=True,
                        text=True,
                        env=bc.worker_env(1),
                    )
                    rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "repeat": rep})
                    r = rows[-1]
                    print(
                        f"{config:11s} prompts={n:5d} peak RSS {r['peak_rss_mb']:7.1f} MB, during collect "
                        f"+{r['collect_delta_mb']:6.1f} MB  refs {r['refs_mb']:7.2f} MB ({r['refs_on_disk']} on disk)"
                        f"  {r['wall_s']:6.2f} s",
                        flush=True,
                    )
    growth, delta = {}, {}
    for config in CONFIGS:
        cell = {
            n: [r for r in rows if r["config"] == config and r["n_prompts"] == n]
            for n in (n1, 10 * n1)
        }
        peak = {n: statistics.median(r["peak_rss_mb"] for r in c) for n, c in cell.items()}
        growth[config] = round(peak[10 * n1] / peak[n1] - 1, 4)
        delta[config] = {
            n: statistics.median(r["collect_delta_mb"] for r in c) for n, c in cell.items()
        }
    ok = growth["defaults"] <= TARGET
    seven = arithmetic_7b()
    bf16 = seven["bytes_per_reference_checkpoint"]["bfloat16"] / 1e9
    payload = {
        "model": "GPT-2 4 layers, d 256, 4 checkpoints, batch 64, n_bootstrap 100",
        "quick": args.quick,
        "rows": rows,
        "repeats": repeats,
        "peak_rss_growth_10x": growth,
        "collect_delta_mb": delta,
        "target": TARGET,
        "met": ok,
        "arithmetic_7b": seven,
        "readme": [
            {
                "benchmark": f"peak RSS of `collect` with its defaults, {10 * n1} vs {n1} prompts (fresh processes; "
                'everything in memory / `keep="none"` for comparison)',
                "measured": f"**{100 * growth['defaults']:+.1f} %** ({100 * growth['unbudgeted']:+.1f} % / "
                f"{100 * growth['keep_none']:+.1f} %); at 7B a reference store is {bf16:.1f} GB in bf16, on disk",
                "target": f"≤ +{100 * TARGET:.0f} %",
            }
        ],
    }
    path = _common.write("references", payload)
    print(
        "peak RSS growth at 10x prompts: "
        + ", ".join(f"{k} {100 * v:+.2f} %" for k, v in growth.items())
        + f" (target defaults <= {100 * TARGET:.0f} %: {'met' if ok else 'NOT met'}) -> {path}"
    )


if __name__ == "__main__":
    main()
