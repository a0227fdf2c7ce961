"""Peak memory of booting, swapping and collecting, as a multiple of the model's own size.

Two parts, each configuration in a fresh child process (peak RSS is a per-process high-water mark):

1. **Model rows** (issue 16): a Llama of ~68 M parameters (hidden 512, 8 layers, vocabulary
   32 000; 264 MB in float32) saved with ``save_pretrained``. Each row reports the peak resident
   set size above the process's baseline after imports (``ru_maxrss`` − RSS before the row's
   work), divided by the size of the model's parameters in the dtype it runs in:

   - ``boot``: ``LensModel.boot`` streamed (``low_memory=True``, the default) and with
     ``from_pretrained`` (``low_memory=False``), then one forward (``from_pretrained`` maps the
     file: its pages count once they are read);
   - ``boot+swap``: ``History.boot()`` and one full checkpoint swapped in (both boots);
   - ``collect``: ``History.boot()`` + ``collect`` over 2 and 5 checkpoints (base, aligned, 3 run
     steps), unsharded and sharded (every checkpoint in ~40 MB shards); 32 prompts of 16 tokens in
     batches of 8, means only (``moments="none"``); a last row with ``analyze``'s statistics
     (second moments and kept activations of the reference checkpoints: ``layers × d²`` float64
     each, reported as ``statistics_mb``);
   - ``bf16 from fp32 files``: the same in bfloat16 (ratio to the bf16 model), streamed and with
     ``from_pretrained``;
   - ``LoRA history``: aligned + 3 PEFT adapters (r=16 on q/k/v/o) applied in place.

   Goal (issue 16): ``History.boot`` + swap + ``collect`` ≤ 1.25× the model, flat in shards and
   checkpoints. (The blocker rows of issue 16 belong to ``bench_training.py``.)
2. **Prompt rows**: ``collect`` peak RSS at 1× and 10× the probe count on a tiny GPT-2 (DESIGN
   §4: statistics are reduced on the fly); target ≤ 5 % growth.

Usage::

    python benchmarks/bench_memory.py            # both parts (~68 M-parameter model)
    python benchmarks/bench_memory.py --quick    # a ~5 M-parameter model, 64 vs 640 prompts

Writes ``benchmarks/results/memory.json``.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
TARGET_GROWTH = 0.05
TARGET_RATIO = 1.25
SIZES = {
    "full": dict(hidden_size=512, num_hidden_layers=8, intermediate_size=2048, vocab_size=32000),
    "quick": dict(hidden_size=256, num_hidden_layers=4, intermediate_size=768, vocab_size=8000),
}
N_PROMPTS, PROMPT_LEN, BATCH = 32, 16, 8


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    """Peak resident set size since the last :func:`_reset_peak` (VmHWM; ru_maxrss where absent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _peak_mb()


# ------------------------------------------------------------------------------------------ setup
def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", *[f"w{i}" for i in range(vocab - 2)]]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<pad>"
    )


def write_model_history(root: Path, size: str) -> None:
    """base, aligned, 3 run steps (unsharded and in ~40 MB shards) and 3 LoRA adapters on aligned."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cfg = LlamaConfig(
        **SIZES[size],
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    tok = _tokenizer(cfg.vocab_size)
    g = torch.Generator().manual_seed(1)
    shard = "40MB" if size == "full" else "4MB"
    for name in ("base", "aligned", "step-1", "step-2", "step-3"):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        model.save_pretrained(root / "plain" / name)
        model.save_pretrained(root / "sharded" / name, max_shard_size=shard)
        if name in ("base", "aligned"):
            tok.save_pretrained(root / "plain" / name)
            tok.save_pretrained(root / "sharded" / name)
        if name == "aligned":
            aligned = LlamaForCausalLM.from_pretrained(str(root / "plain" / "aligned"))
    for step in (1, 2, 3):
        peft_model = get_peft_model(
            aligned,
            LoraConfig(
                r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
            ),
        )
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
        peft_model.save_pretrained(root / "lora" / f"checkpoint-{step}")
        aligned = peft_model.unload()


def _history(root: Path, layout: str, steps: int):
    from revlens import History

    d = root / ("sharded" if layout == "sharded" else "plain")
    runs = {"run": {s: d / f"step-{s}" for s in range(1, steps + 1)}} if steps else None
    if layout == "lora":
        runs = {"lora": {s: root / "lora" / f"checkpoint-{s}" for s in range(1, steps + 1)}}
    return History.from_dirs(base=d / "base", aligned=d / "aligned", runs=runs)


def _prompts(n: int, vocab: int = 60, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(vocab)}" for _ in range(PROMPT_LEN)) for _ in range(n)]


def model_worker(root: Path, row: str) -> dict:
    """Measure one model row (runs in a child process)."""
    import torch
    from transformers.utils import logging as hf_logging

    import revlens
    from revlens import LensModel, collect

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    name, _, rest = row.partition(":")
    opts = dict(kv.split("=") for kv in rest.split(",") if kv)
    dtype = getattr(torch, opts.get("dtype", "float32"))
    low = opts.get("low_memory", "1") == "1"
    layout, steps = opts.get("layout", "plain"), int(opts.get("steps", 0))
    hist = _history(root, layout, steps)
    probes = _prompts(N_PROMPTS)
    revlens.Probes(probes)  # import everything the row needs before the baseline
    import transformer_lens.model_bridge  # noqa: F401

    base = _rss_mb()
    exact = _reset_peak()
    t0 = time.perf_counter()
    if name == "boot":
        lm = LensModel.boot(hist.aligned.local_path(), dtype=dtype, low_memory=low)
        with (
            torch.no_grad()
        ):  # one forward: every weight is read (from_pretrained maps the file lazily)
            lm.bridge(torch.tensor([[2, 3, 4, 5]]))
    else:
        lm = hist.boot(dtype=dtype, low_memory=low)
        if name == "swap":
            lm.load(hist["run/step-1"])
        elif name == "collect":
            moments = opts.get("moments", "none")
            stats = collect(
                hist,
                probes,
                model=lm,
                n_bootstrap=0,
                batch_size=BATCH,
                moments=moments,
                keep=moments,
                progress=False,
            )
            stats_mb = (
                sum(
                    t.numel() * t.element_size()
                    for st in stats.checkpoints.values()
                    for t in st.tensors().values()
                )
                / 2**20
            )
    wall = time.perf_counter() - t0
    model_mb = lm.swapper.targets.nbytes() / 2**20
    peak = (_hwm_mb() if exact else _peak_mb()) - base
    out = {
        "row": row,
        "model_mb": round(model_mb, 1),
        "peak_above_baseline_mb": round(peak, 1),
        "ratio": round(peak / model_mb, 3),
        "checkpoints": len(hist),
        "wall_s": round(wall, 2),
        "peak": "VmHWM after reset" if exact else "ru_maxrss (upper bound)",
    }
    if name == "collect":
        out["statistics_mb"] = round(stats_mb, 1)
    return out


MODEL_ROWS = [
    ("boot (streamed)", "boot:low_memory=1"),
    ("boot (from_pretrained)", "boot:low_memory=0"),
    ("boot + swap (streamed)", "swap:steps=1"),
    ("boot + swap (from_pretrained)", "swap:steps=1,low_memory=0"),
    ("boot + collect, 2 checkpoints", "collect:steps=0"),
    ("boot + collect, 5 checkpoints", "collect:steps=3"),
    ("boot + collect, 5 checkpoints, sharded", "collect:steps=3,layout=sharded"),
    ("bf16 from fp32 files: boot + collect, 5 (streamed)", "collect:steps=3,dtype=bfloat16"),
    (
        "bf16 from fp32 files: boot + collect, 5 (from_pretrained)",
        "collect:steps=3,dtype=bfloat16,low_memory=0",
    ),
    ("LoRA history: boot + collect, aligned + 3 adapters", "collect:steps=3,layout=lora"),
    (
        "boot + collect, 5, second moments + kept activations (analyze)",
        "collect:steps=3,moments=reference",
    ),
]
# History.boot + swap + collect: the 1.25x goal (weights and forwards; analyze's second moments,
# O(layers x d^2) float64 per reference checkpoint, are statistics and reported beside it)
GOAL_ROWS = ("swap:", "collect:")


# ------------------------------------------------------------------------------------ prompt rows
def _write_tiny_history(root: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = _tokenizer(62)
    cfg = GPT2Config(
        vocab_size=62,
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


def prompt_worker(root: Path, n_prompts: int, keep: str) -> dict:
    """Measure one prompt-count configuration (runs in a child process)."""
    import random

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
    rng = random.Random(0)
    prompts = [
        " ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(4, 12)))
        for _ in range(n_prompts)
    ]
    collect(hist, prompts[:32], model=lm, keep=keep, progress=False)  # warm-up: lazy allocations
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
        "peak_rss_mb": round(_peak_mb(), 2),
        "collect_rss_delta_mb": round(peak[0] - base, 2),
        "tracemalloc_peak_mb": round(py_peak / 2**20, 3),
    }


# ------------------------------------------------------------------------------------------ main
def _child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_model_rows(size: str) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_model_history(Path(tmp), size)
        for label, spec in MODEL_ROWS:
            row = {"label": label, **_child("--model-worker", tmp, spec)}
            rows.append(row)
            print(
                f"{label:58s} peak {row['peak_above_baseline_mb']:7.1f} MB / model {row['model_mb']:6.1f} MB "
                f"= {row['ratio']:5.2f}x  ({row['wall_s']:.1f} s)",
                flush=True,
            )
    goal = [
        r
        for r in rows
        if r["row"].startswith(GOAL_ROWS)
        and "low_memory=0" not in r["row"]
        and "moments=" not in r["row"]
    ]
    return {
        "model": f"Llama {SIZES[size]}",
        "target_ratio": TARGET_RATIO,
        "rows": rows,
        "met": all(r["ratio"] <= TARGET_RATIO for r in goal),
        "worst_goal_row": max(goal, key=lambda r: r["ratio"])["label"],
    }


def run_prompt_rows(quick: bool) -> dict:
    n1 = 64 if quick else 256
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _write_tiny_history(Path(tmp))
        for keep in ("none", "reference"):
            for n in (n1, 10 * n1):
                row = _child("--prompt-worker", tmp, str(n), keep)
                rows.append(row)
                print(
                    f"keep={keep:9s} prompts={n:5d}  peak RSS {row['peak_rss_mb']:8.1f} MB  "
                    f"collect ΔRSS {row['collect_rss_delta_mb']:6.1f} MB  {row['wall_s']:6.2f} s",
                    flush=True,
                )
    growth = {}
    for keep in ("none", "reference"):
        a, b = (r for r in rows if r["keep"] == keep)
        growth[keep] = {
            "peak_rss": round(b["peak_rss_mb"] / a["peak_rss_mb"] - 1, 4),
            "collect_rss_delta_mb": round(b["collect_rss_delta_mb"] - a["collect_rss_delta_mb"], 2),
        }
    return {
        "model": "GPT-2 4 layers, d_model 64, 4 checkpoints, batch 32, n_bootstrap 100",
        "target_peak_rss_growth": TARGET_GROWTH,
        "growth": growth,
        "rows": rows,
        "met": all(g["peak_rss"] <= TARGET_GROWTH for g in growth.values()),
    }


def _readme_rows(result: dict) -> list[dict]:
    """The rows ``run_all.py`` puts in the README table."""
    rows = []
    if "model_rows" in result:
        m = result["model_rows"]
        cells = "; ".join(f"{r['label']}: {r['ratio']:.2f}×" for r in m["rows"])
        rows.append(
            {
                "benchmark": f"peak RSS above the import baseline / the model's size ({m['model']}; fresh "
                "processes)",
                "measured": cells,
                "target": f"≤ {m['target_ratio']}× for boot + swap + collect ({'met' if m['met'] else 'not met: ' + m['worst_goal_row']})",
            }
        )
    if "prompt_rows" in result:
        g = result["prompt_rows"]["growth"]
        rows.append(
            {
                "benchmark": "peak RSS of `collect`, 10× vs 1× the prompts (by `keep`)",
                "measured": ", ".join(f"{k}: {100 * v['peak_rss']:+.1f} %" for k, v in g.items()),
                "target": f"≤ +{100 * TARGET_GROWTH:.0f} %",
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="a ~5 M-parameter model; 64 vs 640 prompts"
    )
    ap.add_argument("--part", choices=("all", "model", "prompts"), default="all")
    ap.add_argument("--model-worker", nargs=2, metavar=("ROOT", "ROW"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--prompt-worker", nargs=3, metavar=("ROOT", "N", "KEEP"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.model_worker:
        print(json.dumps(model_worker(Path(args.model_worker[0]), args.model_worker[1])))
        return
    if args.prompt_worker:
        print(
            json.dumps(
                prompt_worker(
                    Path(args.prompt_worker[0]), int(args.prompt_worker[1]), args.prompt_worker[2]
                )
            )
        )
        return
    from _common import write

    result: dict = {"quick": args.quick}
    if args.part in ("all", "model"):
        result["model_rows"] = run_model_rows("quick" if args.quick else "full")
        m = result["model_rows"]
        print(
            f"History.boot + swap + collect <= {TARGET_RATIO}x the model: {'met' if m['met'] else 'NOT met'} "
            f"(worst: {m['worst_goal_row']})"
        )
    if args.part in ("all", "prompts"):
        result["prompt_rows"] = run_prompt_rows(args.quick)
        for keep, g in result["prompt_rows"]["growth"].items():
            print(
                f"keep={keep}: peak RSS growth 10x prompts = {100 * g['peak_rss']:+.2f} % "
                f"(target <= {100 * TARGET_GROWTH:.0f} %)"
            )
    result["readme"] = _readme_rows(result)
    out = write("memory", result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
