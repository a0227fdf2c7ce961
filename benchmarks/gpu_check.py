"""GPU check: collect, an ablation study and the blocker on a small Llama in bf16, against bare HF.

One command (``make gpu-check`` or ``python benchmarks/gpu_check.py``), under 5 minutes on one
GPU. Where a CUDA device exists it builds a random-initialised Llama (tests/families.py's
vocabulary and tokenizer; ``--size small``: 8 layers, d_model 512, 8 heads — ``tiny`` is the
families' 2 layers, d 64) with base, aligned and 4 run steps saved in bf16, then measures, each
with ``torch.cuda.max_memory_allocated`` reset before it:

- **bare HF forwards**: ``AutoModelForCausalLM`` in bf16 on the GPU, per checkpoint
  ``load_state_dict(load_file(...))`` and forwards of every prompt, stopping after the last block;
- **collect**: ``revlens.collect(device="cuda", dtype=torch.bfloat16)`` with its defaults
  (prompts / s, ratio to the bare forwards, peak memory, max |diff| of the layer means);
- **ablation**: ``ablation_study`` with its defaults (auto steps and layers, 16 + 16 controls,
  clamp) on the booted bf16 bridge (intervened rows / s, peak memory);
- **blocker**: 10 fine-tuning steps of the HF model (AdamW, bf16) plain and with a
  ``ReversionBlocker`` (``update``), seconds per step and peak memory.

Without CUDA it prints one line and exits 0 (``--device cpu`` runs the same code on the CPU, in
float32 with ``--dtype float32``: the suite's smoke test). Writes ``results/gpu_check.json``.

``--real`` runs the **real track at full size** instead (``make gpu-check`` runs both): the default
:class:`~revlens.lab.real.history.RealPlan` (seeds 0 1 2, full fine-tuning and LoRA, T = 16,
checkpoints 1 2 4 8 16, the control from base; settings in ``docs/lab.md``, "Real track") built
with ``build_real`` on the GPU (``RealPlan(device="cuda")``, float32: the CPU recipe, moved), then
the replication (what ``revlens replicate --track real --lab DIR`` runs: harm table, refusal
direction, ``analyze``, cos(v_rev, r), mediation) on the same device, each stage with its wall
seconds and peak GPU memory, the table's rows and the stage timings into
``results/gpu_check_real.json``. Without CUDA it prints one line saying it skipped and exits 0.
``--real-smoke`` shrinks both plans (1 seed, full FT, 2 steps, 2 prompts per held-out set) to check
the code path on any device. Never run on a GPU yet (the project machine has none).

    python benchmarks/gpu_check.py [--size small|tiny] [--device cuda|cpu] [--dtype bfloat16|float32]
    python benchmarks/gpu_check.py --real [--real-smoke] [--device cuda|cpu] [--work DIR]
"""

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(device, out: dict):
    """Wall seconds and peak device memory (MiB) of the block, into ``out``."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    yield out
    _sync(device)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    if device.type == "cuda":
        out["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def build(root: Path, size: str, dtype):
    """base, aligned, one run of 4 steps (save_pretrained, in ``dtype``) + prompts."""
    import torch
    import transformers as tf

    sys.path.insert(0, str(HERE.parent / "tests"))
    import families

    tok = families.tokenizer()
    if size == "tiny":
        cfg = families.config("llama")
    else:
        cfg = tf.LlamaConfig(
            vocab_size=len(families.VOCAB),
            bos_token_id=families.BOS,
            eos_token_id=families.EOS,
            pad_token_id=families.PAD,
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
    torch.manual_seed(0)
    base = tf.LlamaForCausalLM(cfg).eval()
    dirs = {"base": base, "aligned": families.perturbed(base, 0.02, 1)}
    for s in (1, 2, 5, 10):
        dirs[f"step-{s}"] = families.perturbed(dirs["aligned"], 0.002 * s, 10 + s)
    paths = {}
    for name, model in dirs.items():
        paths[name] = families.save(
            model.to(dtype), tok, root / name, tokenizer=name in ("base", "aligned")
        )
    g = torch.Generator().manual_seed(0)
    words = [w for w in families.VOCAB if w.startswith("w")]
    prompts = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (int(n),), generator=g))
        for n in torch.randint(8, 48, (512,), generator=g)
    ]
    return paths, prompts


def bare_hf(paths: dict, prompts: list, device, dtype, batch: int) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out: dict = {}
    with measured(device, out):
        model = AutoModelForCausalLM.from_pretrained(paths["base"], dtype=dtype).to(device).eval()
        tok = AutoTokenizer.from_pretrained(paths["base"])
        enc = tok(prompts, padding=True, return_tensors="pt")
        last = enc["attention_mask"].sum(1) - 1
        layers = model.model.layers

        class Stop(Exception):
            pass

        store = {}

        def hook(i):
            def fn(module, args, output):
                store[i] = output[0] if isinstance(output, tuple) else output
                if i == len(layers):
                    raise Stop

            return fn

        handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(layers, 1)]
        means = {}
        with torch.no_grad():
            for name, path in paths.items():
                model.load_state_dict(
                    load_file(str(path / "model.safetensors"), device=str(device)), strict=False
                )
                total = 0
                for i in range(0, len(prompts), batch):
                    ids = enc["input_ids"][i : i + batch].to(device)
                    with contextlib.suppress(Stop):
                        model(ids)
                    rows = torch.arange(len(ids), device=device)
                    total = total + store[len(layers)][
                        rows, last[i : i + batch].to(device)
                    ].double().sum(0)
                means[name] = (total / len(prompts)).cpu()
        for h in handles:
            h.remove()
    out["prompts_per_s"] = round(len(paths) * len(prompts) / out["seconds"], 1)
    out["means"] = means
    return out


def run(args) -> dict:
    import torch

    import revlens
    from revlens.causal import ablation_study, logit_diff

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    res: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "size": args.size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths, prompts = build(Path(tmp), args.size, dtype)
        hist = revlens.History.from_dirs(
            base=paths["base"],
            aligned=paths["aligned"],
            runs={"run": {s: paths[f"step-{s}"] for s in (1, 2, 5, 10)}},
        )
        res["bare_hf"] = bare_hf(paths, prompts, device, dtype, args.batch)
        hf_means = res["bare_hf"].pop("means")
        lm = hist.boot(device=device, dtype=dtype)
        res["collect"] = {}
        with measured(device, res["collect"]):
            stats = revlens.collect(hist, prompts, model=lm, batch_size=args.batch, progress=False)
        c = res["collect"]
        c["prompts_per_s"] = round(len(hist) * len(prompts) / c["seconds"], 1)
        c["ratio_to_bare_hf"] = round(c["seconds"] / res["bare_hf"]["seconds"], 3)
        last = stats.layers.index(lm.n_layers)
        c["max_abs_diff_last_layer_mean"] = max(
            float((stats.mean(ck.name)[last] - hf_means[Path(ck.local_path()).name]).abs().max())
            for ck in hist
        )
        res["ablation"] = {}
        metric = logit_diff(["w1", "w2"], ["w3"])
        with measured(device, res["ablation"]):
            rep = ablation_study(
                hist,
                prompts[:128],
                metric,
                model=lm,
                stats=None,
                progress=False,
                batch_size=min(args.batch, 32),
            )
        a = res["ablation"]
        a["intervened_rows_per_s"] = round(rep.config["plan"]["n_interventions"] / a["seconds"], 1)
        a["planned_eta_s"] = rep.config["plan"]["eta_s"]
        a["layers"], a["steps"] = rep.config["layers"], rep.config["steps"]
        res["blocker"] = blocker_steps(hist, stats, prompts, device, dtype)
    return res


def blocker_steps(hist, stats, prompts, device, dtype, n_steps: int = 10) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from revlens.block import ReversionBlocker
    from revlens.directions import resolve_directions

    path = hist.aligned.local_path()
    tok = hist.tokenizer()
    directions = resolve_directions("mean_diff", stats)
    enc = tok(prompts[:64], padding=True, return_tensors="pt")
    out = {}
    for name in ("plain", "update"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        blocker = None
        if name == "update":
            layers = list(
                directions.layers[1:3] if len(directions.layers) > 2 else directions.layers
            )
            reference = stats.mean(stats.aligned_name)[
                [stats.layer_pos(x) for x in layers]
            ]  # means
            blocker = ReversionBlocker(
                directions, prompts[:64], reference, layers=layers, tokenizer=tok
            )
            blocker.attach(model, opt)
        row: dict = {}
        try:
            with measured(device, row):
                for i in range(n_steps):
                    ids = enc["input_ids"][(i * 8) % 64 : (i * 8) % 64 + 8].to(device)
                    loss = model(ids, labels=ids).loss
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            if blocker is not None:
                blocker.detach()
        row["s_per_step"] = round(row["seconds"] / n_steps, 4)
        out[name] = row
    out["update_over_plain"] = round(out["update"]["s_per_step"] / out["plain"]["s_per_step"], 2)
    return out


def real_plans(device: str, smoke: bool):
    """The real track's plans: the documented defaults on ``device``, or (``smoke``) tiny ones."""
    from revlens.lab.real.history import RealPlan
    from revlens.lab.real.replicate import ReplicatePlan

    if not smoke:
        return ReplicatePlan(lab=RealPlan(device=device))
    lab = RealPlan(
        seeds=(0,),
        steps=2,  # analyze needs two steps per run
        checkpoints=(1, 2),
        modes=("full",),
        control=False,
        eval_limit=2,
        device=device,
    )
    from revlens.lab.real_defenses import RealDefensePlan

    tiny = RealDefensePlan(
        steps=1, n_harmful=2, n_harmless=2, n_probes=2, n_task=2, n_alignment=2, max_new_tokens=4
    )
    return ReplicatePlan(
        lab=lab, n_probe=4, n_null=20, controls=1, ablation_prompts=2, blocking_plan=tiny
    )


def run_real(args) -> dict:
    """Build the real track on ``args.device`` and replicate it there, stage by stage."""
    from dataclasses import asdict

    import torch

    from revlens.lab.real.history import build_real
    from revlens.lab.real.replicate import replicate_real

    device = torch.device(args.device)
    plan = real_plans(args.device, args.real_smoke)
    res: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": "float32",
        "smoke": bool(args.real_smoke),
        "plan": asdict(plan),
    }
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        lab_dir, rep_dir = Path(tmp, "lab"), Path(tmp, "rep")
        res["lab"] = {}
        with measured(device, res["lab"]):
            meta = build_real(lab_dir, plan.lab, force=True, progress=not args.quiet)
        res["lab"]["timings_s"] = meta["timings_s"]
        res["lab"]["losses"] = meta["losses"]
        res["lab"]["disk_gib"] = round(
            sum(f.stat().st_size for f in lab_dir.rglob("*") if f.is_file()) / 2**30, 2
        )
        res["replicate"] = {}
        with measured(device, res["replicate"]):
            rep = replicate_real(rep_dir, plan, lab_dir=lab_dir, progress=not args.quiet)
        res["replicate"]["timings_s"] = {k: round(v, 1) for k, v in rep.meta["timings"].items()}
        res["rows"] = [{k: str(v) for k, v in r.items()} for r in rep.rows]
        res["harm"] = json.loads(rep.harm.to_json(orient="records"))
        res["replication_md"] = rep.to_markdown()
    return res


def main_real(args) -> int:
    """``--real``: the real track at full size where CUDA exists; a one-line skip without it."""
    import os

    import torch

    if args.device is None:
        if not torch.cuda.is_available():
            print(
                "gpu_check --real: no CUDA device here; skipped the real track at full size "
                "(on the CPU it is `revlens replicate --track real`, about an hour)"
            )
            return 0
        args.device = "cuda"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    t0 = time.perf_counter()
    res = run_real(args)
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    sys.path.insert(0, str(HERE))
    import _common

    name = "gpu_check_real" + ("_smoke" if args.real_smoke else "")
    if args.out is None:
        path = _common.write(name, res)
    else:
        path = Path(args.out)
        path.write_text(
            json.dumps({"benchmark": name, "machine": _common.machine(), **res}, indent=1)
        )
    lab, rep = res["lab"], res["replicate"]
    print(f"gpu_check --real on {res['device']} (float32), {res['total_seconds']} s")
    print(f"  build_real   {lab['seconds']:9.1f} s   peak {lab.get('peak_mib', '-')} MiB")
    print(f"  replicate    {rep['seconds']:9.1f} s   peak {rep.get('peak_mib', '-')} MiB")
    for r in res["rows"]:
        print(f"  {r['row']}: {r['holds']} | {r['measured']}")
    print(f"  -> {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("small", "tiny"), default="small")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/gpu_check.json)"
    )
    ap.add_argument("--real", action="store_true", help="the real track at full size instead")
    ap.add_argument("--real-smoke", action="store_true", help="with --real: tiny plans")
    ap.add_argument("--work", default=None, help="with --real: where the history is built")
    ap.add_argument("--quiet", action="store_true", help="with --real: no progress bars")
    args = ap.parse_args()
    if args.real or args.real_smoke:
        return main_real(args)
    import torch

    if args.device is None:
        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA device here; skipped (pass --device cpu to run it on the CPU)"
            )
            return 0
        args.device = "cuda"
    t0 = time.perf_counter()
    res = run(args)
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    sys.path.insert(0, str(HERE))
    import _common

    if args.out is None:
        path = _common.write("gpu_check", res)
    else:
        path = Path(args.out)
        path.write_text(
            json.dumps({"benchmark": "gpu_check", "machine": _common.machine(), **res}, indent=1)
        )
    hf, c, a, b = res["bare_hf"], res["collect"], res["ablation"], res["blocker"]
    print(
        f"gpu_check on {res['device']} ({res['dtype']}, {res['size']} Llama), {res['total_seconds']} s"
    )
    print(
        f"  bare HF forwards  {hf['prompts_per_s']:10.1f} prompts/s   peak {hf.get('peak_mib', '-')} MiB"
    )
    print(
        f"  collect           {c['prompts_per_s']:10.1f} prompts/s   peak {c.get('peak_mib', '-')} MiB   "
        f"{c['ratio_to_bare_hf']:.2f}x the bare forwards, max |diff| {c['max_abs_diff_last_layer_mean']:.2e}"
    )
    print(
        f"  ablation (auto)   {a['intervened_rows_per_s']:10.1f} rows/s      peak {a.get('peak_mib', '-')} MiB   "
        f"layers {a['layers']} steps {a['steps']} ({a['seconds']} s, planned {a['planned_eta_s']})"
    )
    print(
        f"  blocker update    {b['update']['s_per_step']:.4f} s/step vs plain {b['plain']['s_per_step']:.4f} "
        f"({b['update_over_plain']}x)   peak {b['update'].get('peak_mib', '-')} vs {b['plain'].get('peak_mib', '-')} MiB"
    )
    print(f"  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
