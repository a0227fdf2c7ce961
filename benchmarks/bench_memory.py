"""Peak memory of ``revlens.collect`` at 1× and 10× the probe count, side by side.

DESIGN §4: statistics are reduced on the fly, so memory must not grow with the number of probe
prompts (apart from the optional per-prompt activations of the reference checkpoints, kept for
the paired-PCA / probe / whitened directions: ``keep="reference"``, the ``analyze`` default, which
costs ``n_prompts × n_layers × d_model × 4`` bytes per reference checkpoint).

Each configuration runs in a fresh child process (peak RSS is a per-process high-water mark), on
the same tiny GPT-2 history (base, aligned, one run of 2 steps). In the child, the model is booted
and a warm-up collection is run first; then we record

- ``peak_rss_mb``: the process's peak resident set size (``ru_maxrss``) after the measured collect;
- ``collect_rss_delta_mb``: peak RSS sampled every 2 ms *during* collect, minus RSS before it;
- ``tracemalloc_peak_mb``: peak of Python-heap allocations during collect (torch tensors are not
  traced: they live outside the Python allocator);
- wall time.

The target is ``peak_rss`` growth ≤ 5 % from 1× to 10× prompts.

Usage::

    python benchmarks/bench_memory.py            # 256 vs 2560 prompts
    python benchmarks/bench_memory.py --quick    # 64 vs 640 prompts

Writes ``benchmarks/results/memory.json``.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_GROWTH = 0.05


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _write_history(root: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    words = ["<pad>", "<eos>", *[f"w{i}" for i in range(60)]]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<pad>"
    )
    cfg = GPT2Config(
        vocab_size=len(words),
        n_positions=24,
        n_embd=64,
        n_layer=4,
        n_head=4,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    for name in ("base", "aligned", "run/1", "run/2"):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)


def _prompts(n: int) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(4, 12))) for _ in range(n)]


def worker(root: Path, n_prompts: int, keep: str) -> dict:
    """Measure one configuration (runs in a child process)."""
    import torch
    from transformers.utils import logging as hf_logging

    from revlens import History, LensModel, collect

    hf_logging.disable_progress_bar()

    torch.set_num_threads(1)
    hist = History.from_dirs(
        base=root / "base",
        aligned=root / "aligned",
        runs={"run": {1: root / "run/1", 2: root / "run/2"}},
    )
    lm = LensModel.boot(root / "aligned")
    collect(hist, _prompts(32), model=lm, keep=keep, progress=False)  # warm-up: lazy allocations
    prompts = _prompts(n_prompts)
    base = _rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    tracemalloc.start()
    thread.start()
    t0 = time.perf_counter()
    stats = collect(hist, prompts, model=lm, keep=keep, n_bootstrap=100, progress=False)
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert stats.meta["n_prompts"] == n_prompts
    return {
        "n_prompts": n_prompts,
        "keep": keep,
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2),
        "collect_rss_delta_mb": round(peak[0] - base, 2),
        "tracemalloc_peak_mb": round(py_peak / 2**20, 3),
    }


def main() -> None:
    """Run 1× and 10× for each keep mode in child processes and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 vs 640 prompts")
    ap.add_argument("--out", default=str(HERE / "results" / "memory.json"))
    ap.add_argument("--worker", nargs=3, metavar=("ROOT", "N", "KEEP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), int(args.worker[1]), args.worker[2])))
        return
    n1 = 64 if args.quick else 256
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _write_history(Path(tmp))
        for keep in ("none", "reference"):
            for n in (n1, 10 * n1):
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", tmp, str(n), keep],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"keep={keep:9s} prompts={n:5d}  peak RSS {row['peak_rss_mb']:8.1f} MB  "
                    f"collect ΔRSS {row['collect_rss_delta_mb']:6.1f} MB  "
                    f"py heap {row['tracemalloc_peak_mb']:6.2f} MB  {row['wall_s']:6.2f} s"
                )
    growth = {}
    for keep in ("none", "reference"):
        a, b = (r for r in rows if r["keep"] == keep)
        growth[keep] = {
            "peak_rss": round(b["peak_rss_mb"] / a["peak_rss_mb"] - 1, 4),
            "collect_rss_delta_mb": round(b["collect_rss_delta_mb"] - a["collect_rss_delta_mb"], 2),
        }
    ok = all(g["peak_rss"] <= TARGET_GROWTH for g in growth.values())
    result = {
        "benchmark": "collect peak memory, 1x vs 10x prompts",
        "quick": args.quick,
        "model": "GPT-2 4 layers, d_model 64, 4 checkpoints, batch 32, n_bootstrap 100",
        "target_peak_rss_growth": TARGET_GROWTH,
        "met": ok,
        "growth": growth,
        "rows": rows,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for keep, g in growth.items():
        print(
            f"keep={keep}: peak RSS growth 10x prompts = {100 * g['peak_rss']:+.2f} % "
            f"(target <= {100 * TARGET_GROWTH:.0f} %)"
        )
    print(f"{'met' if ok else 'NOT met'}; wrote {out}")


if __name__ == "__main__":
    main()
