"""``revlens.collect`` against bare Hugging Face forwards, like for like, in fresh processes (issue 23).

Both sides read the same ``save_pretrained`` checkpoint files from disk, run the same prompts
(right-padded batches of 64) and **stop at the same last layer** (the output of the last block:
revlens' early stop after its deepest site; the baseline raises from a forward hook on that block,
so neither computes the final norm or the unembedding). The baseline is the leanest plain code:
one ``GPT2Model`` from ``from_pretrained`` (its boot), then per checkpoint
``load_state_dict(safetensors.torch.load_file(...))`` and float64 last-token means per layer.
revlens runs ``collect`` with its **defaults** (Poisson bootstrap 100, second moments and
per-prompt references on base and aligned), and once more with means only.

Every measurement is a fresh ``python`` process (imports, boot, everything), run for C = C_small
and C = C_large checkpoints, sides interleaved and repeated; the median of each cell is kept.
Two rows:

- **marginal cost per checkpoint**: the slope ``(T(C_large) − T(C_small)) / (C_large − C_small)``
  of whole-process wall time over C (target revlens / HF ≤ 1.05);
- **end-to-end** for C_large = 12 checkpoints including interpreter start, imports and boot
  (target ≤ 1.3).

Import and boot times are measured inside the processes (revlens: ``import revlens`` is lazy,
the bridge's imports happen at boot; HF: ``import transformers`` + ``GPT2Model``).

    python benchmarks/bench_collect.py [--quick] [--threads N] [--profile]

``--profile`` runs one revlens process under pyinstrument (``pip install pyinstrument``) and
writes ``results/collect-profile.txt``.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()  # before any heavy import: a worker's clock starts here
HERE = Path(__file__).resolve().parent
TARGET_MARGINAL, TARGET_END_TO_END = 1.05, 1.30


# ---------------------------------------------------------------------- the history (parent only)
def build(root: Path, n_ckpt: int, n_layer: int, d: int) -> None:
    """base, aligned and ``n_ckpt - 2`` run steps as save_pretrained dirs, + prompts.json."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(HERE.parent / "tests"))
    import tiny

    cfg = GPT2Config(
        vocab_size=len(tiny.WORDS),
        n_positions=32,
        n_embd=d,
        n_layer=n_layer,
        n_head=4,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    base = GPT2LMHeadModel(cfg).eval()
    tiny.save(base, root / "base")
    aligned = tiny.perturbed(base, 0.01, 1)
    tiny.save(aligned, root / "aligned")
    for s in range(1, n_ckpt - 1):
        tiny.save(tiny.perturbed(aligned, 0.001 * s, s), root / "run" / f"step-{s}")


def prompts(n: int) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(f"w{rng.randrange(30)}" for _ in range(rng.randint(4, 20))) for _ in range(n)]


def checkpoint_dirs(root: Path, n_ckpt: int) -> list[Path]:
    return [
        root / "base",
        root / "aligned",
        *(root / "run" / f"step-{s}" for s in range(1, n_ckpt - 1)),
    ]


# ---------------------------------------------------------------------- workers (fresh processes)
def worker_hf(root: Path, n_ckpt: int, n_prompts: int, batch: int) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GPT2Model

    t_import = time.perf_counter()

    dirs = checkpoint_dirs(root, n_ckpt)
    model = GPT2Model.from_pretrained(dirs[0]).eval()
    tok = AutoTokenizer.from_pretrained(dirs[0])
    t_boot = time.perf_counter()
    texts = prompts(n_prompts)
    enc = tok(texts, padding=True, return_tensors="pt")
    last = enc["attention_mask"].sum(1) - 1
    n_layer = len(model.h)
    store: dict[int, torch.Tensor] = {}

    class Stop(Exception):
        pass

    def grab(i):
        def hook(module, args, output):
            store[i] = output[0] if isinstance(output, tuple) else output
            if i == n_layer:
                raise Stop

        return hook

    model.h[0].register_forward_pre_hook(lambda m, args: store.__setitem__(0, args[0]))
    for i, block in enumerate(model.h, 1):
        block.register_forward_hook(grab(i))
    means = {}
    for d in dirs:
        sd = {
            k.removeprefix("transformer."): v
            for k, v in load_file(str(d / "model.safetensors")).items()
        }
        model.load_state_dict(sd, strict=False)
        total = torch.zeros(n_layer + 1, model.config.n_embd, dtype=torch.float64)
        with torch.no_grad():
            for i in range(0, n_prompts, batch):
                ids, rows = enc["input_ids"][i : i + batch], torch.arange(min(batch, n_prompts - i))
                with contextlib.suppress(Stop):
                    model(ids)
                total += (
                    torch.stack(
                        [store[j][rows, last[i : i + batch]] for j in range(n_layer + 1)], 1
                    )
                    .double()
                    .sum(0)
                )
        means[d.name] = total / n_prompts
    return {
        "t_import": t_import - T_START,
        "t_boot": t_boot - t_import,
        "t_loop": time.perf_counter() - t_boot,
        "means": {k: v.tolist() for k, v in means.items()},
    }


def worker_revlens(root: Path, n_ckpt: int, n_prompts: int, batch: int, means_only: bool) -> dict:
    import revlens

    t_import = time.perf_counter()

    dirs = checkpoint_dirs(root, n_ckpt)
    hist = revlens.History.from_dirs(
        base=dirs[0], aligned=dirs[1], runs={"run": {s: d for s, d in enumerate(dirs[2:], 1)}}
    )
    lm = hist.boot()
    t_boot = time.perf_counter()
    kw = {"n_bootstrap": 0, "moments": "none", "keep": "none"} if means_only else {}
    stats = revlens.collect(
        hist, prompts(n_prompts), model=lm, batch_size=batch, progress=False, **kw
    )
    names = {ck.name: Path(ck.local_path()).name for ck in hist}
    return {
        "t_import": t_import - T_START,
        "t_boot": t_boot - t_import,
        "t_loop": time.perf_counter() - t_boot,
        "means": {names[n]: stats.mean(n).tolist() for n in stats.checkpoints},
    }


def worker_env(threads: int) -> dict:
    """Environment of a fresh benchmark process: ``threads`` torch threads, quiet, offline."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TQDM_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }


def run_worker(
    side: str, root: Path, n_ckpt: int, n_prompts: int, batch: int, threads: int
) -> dict:
    env = worker_env(threads)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        side,
        str(root),
        str(n_ckpt),
        str(n_prompts),
        str(batch),
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {**row, "wall": wall}


# ---------------------------------------------------------------------- parent
def summarise(cells: dict, small: int, large: int) -> dict:
    med = {
        k: {
            f: statistics.median(r[f] for r in rows)
            for f in ("wall", "t_import", "t_boot", "t_loop")
        }
        for k, rows in cells.items()
    }
    out = {}
    for side in ("hf", "revlens", "revlens_means_only"):
        a, b = med[(side, small)], med[(side, large)]
        out[side] = {
            "marginal_s_per_ckpt": (b["wall"] - a["wall"]) / (large - small),
            "end_to_end_s": b["wall"],
            "import_s": b["t_import"],
            "boot_s": b["t_boot"],
            "loop_s": b["t_loop"],
            "fixed_s": b["wall"] - b["t_loop"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="smaller: 128 prompts, C = 3 and 6, one repeat"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument(
        "--profile", action="store_true", help="also profile one revlens process (pyinstrument)"
    )
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        side, root, n_ckpt, n_prompts, batch = args.worker
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        fn = {
            "hf": lambda *a: worker_hf(*a),
            "revlens": lambda *a: worker_revlens(*a, False),
            "revlens_means_only": lambda *a: worker_revlens(*a, True),
            "profile": worker_profile,
        }[side]
        print(json.dumps(fn(Path(root), int(n_ckpt), int(n_prompts), int(batch))))
        return
    sys.path.insert(0, str(HERE))
    import _common

    n_layer, d, batch = 4, 256, 64
    small, large, n_prompts, repeats = (3, 6, 128, 1) if args.quick else (4, 12, 512, 3)
    sides = ("hf", "revlens", "revlens_means_only")
    cells: dict = {(s, c): [] for s in sides for c in (small, large)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, large, n_layer, d)
        for r in range(repeats):  # interleaved: every side sees the same machine load
            for c in (small, large):
                for side in sides:
                    cells[(side, c)].append(
                        run_worker(side, root, c, n_prompts, batch, args.threads)
                    )
                    print(
                        f"  repeat {r} C={c:2d} {side:18s} {cells[(side, c)][-1]['wall']:6.1f} s",
                        flush=True,
                    )
        ref, ours = cells[("hf", large)][0]["means"], cells[("revlens", large)][0]["means"]
        import torch

        max_diff = max(
            float((torch.tensor(ours[k]) - torch.tensor(ref[k])).abs().max()) for k in ref
        )
        profile = profile_revlens(root, large, n_prompts, batch) if args.profile else None
    res = summarise(cells, small, large)
    hf, rv, rm = res["hf"], res["revlens"], res["revlens_means_only"]
    marginal = rv["marginal_s_per_ckpt"] / hf["marginal_s_per_ckpt"]
    e2e = rv["end_to_end_s"] / hf["end_to_end_s"]
    payload = {
        "model": f"GPT-2 {n_layer} layers, d {d}",
        "prompts": n_prompts,
        "batch_size": batch,
        "checkpoints": [small, large],
        "repeats": repeats,
        "threads": args.threads,
        "quick": args.quick,
        "sides": res,
        "ratio_marginal": marginal,
        "ratio_end_to_end": e2e,
        "ratio_marginal_means_only": rm["marginal_s_per_ckpt"] / hf["marginal_s_per_ckpt"],
        "ratio_end_to_end_means_only": rm["end_to_end_s"] / hf["end_to_end_s"],
        "targets": {"marginal": TARGET_MARGINAL, "end_to_end": TARGET_END_TO_END},
        "meets": {"marginal": marginal <= TARGET_MARGINAL, "end_to_end": e2e <= TARGET_END_TO_END},
        "max_abs_diff_of_means": max_diff,
        "profile": profile,
        "readme": [
            {
                "benchmark": f"`collect` marginal cost per checkpoint vs bare HF forwards (slope over C = {small}→{large}, "
                f"fresh processes, same files, both stop after the last block; defaults / means only)",
                "measured": f"**{marginal:.2f}×** / {payload_ratio(rm, hf):.2f}× "
                f"({rv['marginal_s_per_ckpt']:.2f} s vs {hf['marginal_s_per_ckpt']:.2f} s)",
                "target": f"≤ {TARGET_MARGINAL}×",
            },
            {
                "benchmark": f"`collect` end to end, {large} checkpoints incl. interpreter, imports and boot "
                f"(import + boot: revlens {rv['import_s'] + rv['boot_s']:.1f} s, "
                f"HF {hf['import_s'] + hf['boot_s']:.1f} s)",
                "measured": f"**{e2e:.2f}×** ({rv['end_to_end_s']:.1f} s vs {hf['end_to_end_s']:.1f} s)",
                "target": f"≤ {TARGET_END_TO_END}×",
            },
        ],
    }
    path = _common.write("collect", payload)
    for side, r in res.items():
        print(
            f"{side:18s} marginal {r['marginal_s_per_ckpt']:.3f} s/ckpt  end-to-end {r['end_to_end_s']:.1f} s  "
            f"(import {r['import_s']:.1f} s, boot {r['boot_s']:.1f} s)"
        )
    print(
        f"marginal ratio {marginal:.3f} (target <= {TARGET_MARGINAL}), end-to-end ratio {e2e:.3f} "
        f"(target <= {TARGET_END_TO_END}); max |diff| of means {max_diff:.1e} -> {path}"
    )


def payload_ratio(a: dict, b: dict) -> float:
    return a["marginal_s_per_ckpt"] / b["marginal_s_per_ckpt"]


def worker_profile(root: Path, n_ckpt: int, n_prompts: int, batch: int) -> dict:
    """One revlens collect under pyinstrument (the marginal path: everything after boot)."""
    from pyinstrument import Profiler

    import revlens

    dirs = checkpoint_dirs(root, n_ckpt)
    hist = revlens.History.from_dirs(
        base=dirs[0], aligned=dirs[1], runs={"run": dict(enumerate(dirs[2:], 1))}
    )
    lm = hist.boot()
    prof = Profiler(interval=0.002)
    prof.start()
    revlens.collect(hist, prompts(n_prompts), model=lm, batch_size=batch, progress=False)
    prof.stop()
    target = HERE / "results" / "collect-profile.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(prof.output_text(unicode=False, color=False))
    return {"profile": str(target)}


def profile_revlens(root: Path, n_ckpt: int, n_prompts: int, batch: int) -> str | None:
    try:
        return run_worker("profile", root, n_ckpt, n_prompts, batch, 1)["profile"]
    except subprocess.CalledProcessError as exc:
        print(
            f"profile skipped (pip install pyinstrument?): {exc.stderr.strip().splitlines()[-1:]}"
        )
        return None


if __name__ == "__main__":
    main()
