"""Collection over C checkpoints vs bare Hugging Face forward passes (issue 3/8).

Both sides load every checkpoint's weights from disk and run every probe prompt through the
model; the baseline reduces ``output_hidden_states`` to per-layer last-token means, revlens runs
``collect`` (one booted bridge, weights swapped in, float64 statistics + Poisson bootstrap).
The ratio revlens / baseline is measured side by side in one run (interleaved repeats, best of
each). Target: <= 1.10.

    python benchmarks/bench_collect.py [--quick]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import _common
import revlens
import tiny


def build(root: Path, n_ckpt: int) -> revlens.History:
    cfg = GPT2Config(vocab_size=len(tiny.WORDS), n_positions=24, n_embd=128, n_layer=4, n_head=4,
                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(cfg).eval()
    tiny.save(base, root / "base")
    aligned = tiny.perturbed(base, 0.01, 1)
    tiny.save(aligned, root / "aligned")
    steps = {}
    for s in range(1, n_ckpt - 1):
        steps[s] = tiny.save(tiny.perturbed(aligned, 0.001 * s, s), root / f"step-{s}", tokenizer=False)
    return revlens.History.from_dirs(base=root / "base", aligned=root / "aligned", runs={"r": steps})


def prompts(n: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 20, (1,), generator=g))
        out.append(" ".join(f"w{int(i)}" for i in torch.randint(0, 30, (length,), generator=g)))
    return out


def baseline(history: revlens.History, texts: list[str], batch_size: int) -> dict[str, torch.Tensor]:
    tok = tiny.tiny_tokenizer()
    enc = tok(texts, padding=True, return_tensors="pt")
    last = enc["attention_mask"].sum(1) - 1
    out = {}
    for ck in history:
        model = GPT2LMHeadModel.from_pretrained(ck.local_path()).eval()
        total = None
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                ids = enc["input_ids"][i:i + batch_size]
                hs = model(ids, output_hidden_states=True).hidden_states
                rows = torch.arange(len(ids))
                red = torch.stack([h[rows, last[i:i + batch_size]] for h in hs], 1).double().sum(0)
                total = red if total is None else total + red
        out[ck.name] = total / len(texts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_ckpt, n_prompts, repeats = (6, 256, 2) if args.quick else (12, 1024, 3)
    batch_size = 64
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        history = build(Path(tmp), n_ckpt)
        texts = prompts(n_prompts)
        lm = history.boot()
        ours_kwargs = {"model": lm, "batch_size": batch_size, "progress": False}
        revlens.collect(history, texts, **ours_kwargs)  # warm-up (imports, allocator)
        baseline(history, texts[:batch_size], batch_size)
        t_ours, t_base, t_ours_noboot = [], [], []
        for _ in range(repeats):  # interleaved, so both see the same machine load
            t_base.append(_common.best_of(lambda: baseline(history, texts, batch_size), 1))
            t_ours.append(_common.best_of(lambda: revlens.collect(history, texts, **ours_kwargs), 1))
            t_ours_noboot.append(_common.best_of(
                lambda: revlens.collect(history, texts, **ours_kwargs, n_bootstrap=0, moments="none", keep="none"), 1))
        stats = revlens.collect(history, texts, **ours_kwargs)
        ref = baseline(history, texts, batch_size)
        max_err = max(float((stats.mean(n)[:4] - ref[n][:4]).abs().max()) for n in ref)
    ratio = min(t_ours) / min(t_base)
    payload = {
        "checkpoints": n_ckpt, "prompts": n_prompts, "batch_size": batch_size, "model": "GPT-2 4L d128",
        "seconds_baseline_hf": min(t_base), "seconds_revlens": min(t_ours),
        "seconds_revlens_means_only": min(t_ours_noboot),
        "ratio_revlens_over_hf": ratio, "ratio_means_only_over_hf": min(t_ours_noboot) / min(t_base),
        "target_ratio_max": 1.10, "meets_target": ratio <= 1.10, "max_abs_diff_vs_hf": max_err,
    }
    path = _common.write("collect", payload)
    print(f"revlens {min(t_ours):.2f}s vs HF {min(t_base):.2f}s: ratio {ratio:.2f} (target <= 1.10); "
          f"means only {payload['ratio_means_only_over_hf']:.2f}; max |diff| {max_err:.1e} -> {path}")


if __name__ == "__main__":
    main()
