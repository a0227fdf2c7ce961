"""Training-time cost of monitoring and blocking on the lab model (issue 10).

Side by side in one run, on the shipped lab pair (``assets/lab/pair0``: 4-layer GPT-2, d 128),
with the lab's benign fine-tuning step (batch 32, SGD momentum) and the lab's held-out harmful
probe set:

- **monitor**: wall time of ``steps`` lab fine-tuning steps with a :class:`ReversionMonitor` at
  ``every=10`` over the same without (target: overhead <= 10 %), with the 192-prompt alignment
  split and the 96-prompt held-out split (the cost is one probe-set forward per check);
- **blocker**: seconds per training step with a :class:`ReversionBlocker` over a plain step, for
  each method and a few settings (target for the default ``update``: <= 2x).

Rounds are interleaved (plain, then each variant, repeated) and the median per variant is kept, so
load from other processes hits every variant alike. One torch thread.

A second part (``--part scale``, issue 16; ``results/blocking.json``) measures the **cost model** of
update blocking (``docs/scale.md``, "Blocking cost") on a Llama of ~21 M parameters (hidden 256,
24 layers, MLP 688, vocabulary 4000; 80 MB float32), full fine-tuning (AdamW) and LoRA (PEFT r=16
on q/k/v/o, AdamW on the adapters), training batches of 8 × 64 tokens, 64 probe prompts of 24
tokens (defaults: probe batches of 32, ``refresh_every=2``), blocking 2 / 4 / 8 / 24 layers spread
evenly up to the last; and 4 layers with 8 × 256-token training batches (added after the first run:
the ratios scale with the probe tokens per refresh over the training tokens per step). Each
configuration runs in its own child process, which measures the peak resident memory above the
process's baseline after imports (model, optimizer state, gradients, activations; one unblocked
process per kind and shape, one blocked process per row), and the time of the unblocked and the
blocked step in interleaved rounds in the blocked row's process (detached / attached), so the time
ratios are side by side in one process. Goal: LoRA blocking of 4 layers ≤ 1.5× the unblocked step's
memory and ≤ 2× its time.

    python benchmarks/bench_training.py [--quick] [--part lab|scale|all]
"""

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _common
from revlens.block import ReversionBlocker
from revlens.lab import LabConfig, asset_dir, build_tokenizer, finetune, load_pair
from revlens.lab.blocked import lab_directions, lab_probes
from revlens.lab.language import sample_task
from revlens.lab.train import _gen, encode_examples, make_optimizer
from revlens.monitor import ReversionMonitor, ReversionWarning

LAYERS = [1, 2, 3, 4]


def setup():
    base, aligned = load_pair(asset_dir() / "pair0")[:2]
    tok = build_tokenizer()
    probes = (
        lab_probes()
    )  # what `revlens lab --block` reads: the 192 harmful alignment-split prompts
    v = lab_directions(base, aligned, LAYERS, probes=probes)
    return aligned, tok, probes, v


class Stepper:
    """One model + optimizer doing lab fine-tuning steps, optionally with a blocker attached."""

    def __init__(self, aligned, config, blocker=None):
        self.model = copy.deepcopy(aligned).train()
        self.opt = make_optimizer(self.model, config)
        self.g = _gen(0, 17)
        self.config = config
        if blocker is not None:
            blocker.attach(self.model, self.opt)

    def step(self):
        ids, mask, labels = encode_examples(
            sample_task(self.config.ft_batch, self.g), answer_only=True, n_ctx=self.config.n_ctx
        )
        loss = self.model(ids, attention_mask=mask, labels=labels).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def time_steps(stepper, n):
    t0 = time.perf_counter()
    for _ in range(n):
        stepper.step()
    return (time.perf_counter() - t0) / n


def bench_blocker(aligned, tok, probes, v, config, rounds, n):
    variants = {
        "update (defaults: refresh_every=2, probe batches of 32)": {},
        "update exact (refresh_every=1, all probes)": {
            "refresh_every": 1,
            "probe_batch_size": None,
        },
        "update exact, vmap": {
            "refresh_every": 1,
            "probe_batch_size": None,
            "grad_batching": "vmap",
        },
        "update refresh_every=5, probe batches of 64": {"refresh_every": 5, "probe_batch_size": 64},
        "gradient (defaults)": {"method": "gradient"},
        "penalty (strength=1, every step)": {"method": "penalty", "strength": 1.0},
        "hook": {"method": "hook"},
    }
    steppers = {"plain": Stepper(aligned, config)}
    for name, kw in variants.items():
        steppers[name] = Stepper(
            aligned, config, ReversionBlocker(v, probes, aligned, tokenizer=tok, **kw)
        )
    times = {name: [] for name in steppers}
    for s in steppers.values():  # warm-up
        s.step()
    for _ in range(rounds):
        for name, s in steppers.items():
            times[name].append(time_steps(s, n))
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        name: {"s_per_step": med[name], "ratio_to_plain": med[name] / med["plain"]} for name in med
    }


def bench_monitor(aligned, tok, v, config, rounds, steps):
    """Monitor overhead at every=10 with the two lab probe sets (192 alignment-split, 96 held-out),
    with the defaults (a rotating subset of at most 64 prompts per check) and reading every prompt
    at every check (``probe_batch_size=None``, revlens 0.1)."""
    monitors = {
        f"{split}_{mode}": ReversionMonitor(
            v,
            lab_probes(split),
            aligned,
            tokenizer=tok,
            every=10,
            probe_batch_size="auto" if mode == "default" else None,
        )
        for split in ("train", "heldout")
        for mode in ("default", "all")
    }
    times = {"plain": [], **{name: [] for name in monitors}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReversionWarning)
        for _ in range(rounds):
            for name in times:
                cbs = [] if name == "plain" else [monitors[name]]
                for m in cbs:
                    m.reset()
                t0 = time.perf_counter()
                finetune(
                    aligned,
                    config,
                    seed=0,
                    steps=steps,
                    checkpoint_steps=[],
                    callbacks=cbs,
                    progress=False,
                )
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "every": 10,
        "steps": steps,
        "plain_s": med["plain"],
        **{
            name: {
                "n_probes": len(m.inputs_.tokens),
                "probes_per_check": m.subset_size_,
                "monitored_s": med[name],
                "overhead": med[name] / med["plain"] - 1.0,
            }
            for name, m in monitors.items()
        },
    }


# ------------------------------------------------------------------ part 2: the cost model at scale
SCALE = dict(
    hidden_size=256,
    num_hidden_layers=24,
    intermediate_size=688,
    vocab_size=4000,
    num_attention_heads=4,
    num_key_value_heads=4,
)
TRAIN_BATCH, TRAIN_LEN, N_PROBES, PROBE_LEN = 8, 64, 64, 24
# (kind, blocked layers[, blocker settings[, training sequence length]]); the last rows were added after
# the first run: the ratios scale with probe tokens per refresh over training tokens per step
SCALE_ROWS = [
    ("full", 2),
    ("full", 8),
    ("full", 24),
    ("lora", 2),
    ("lora", 4),
    ("lora", 8),
    ("lora", 24),
    ("lora", 4, {"refresh_every": 1, "probe_batch_size": None}),
    ("lora", 4, {"probe_batch_size": 8}),
    ("lora", 4, {}, 256),
    ("full", 4, {}, 256),
]


def _scale_model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **SCALE,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).train()
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            ),
        )
    return model


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb(reset: bool = False) -> float:
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def scale_worker(
    kind: str, depth: int, settings: dict, rounds: int, n: int, train_len: int
) -> dict:
    """One configuration in a child process. ``depth=0``: unblocked steps only (the memory
    baseline of a kind and shape); else every step blocked from the start (the process's peak is the
    blocked peak), then the step time detached / attached in interleaved rounds."""
    from revlens.directions import Directions
    from revlens.probes import Probes

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    layers = [round(24 * (i + 1) / depth) for i in range(depth)]
    probes = Probes(
        [
            torch.randint(2, SCALE["vocab_size"], (PROBE_LEN,), generator=g).tolist()
            for _ in range(N_PROBES)
        ]
    )
    v = Directions.from_tensor(
        torch.randn(max(depth, 1), SCALE["hidden_size"], generator=g), layers or [1]
    )
    batches = [
        torch.randint(2, SCALE["vocab_size"], (TRAIN_BATCH, train_len), generator=g)
        for _ in range(8)
    ]
    base = _rss_mb()
    model = _scale_model(kind)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    count = [0]

    def timed(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            ids = batches[count[0] % len(batches)]
            count[0] += 1
            opt.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / k

    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    out = {
        "kind": kind,
        "blocked_layers": layers,
        "settings": settings,
        "train_len": train_len,
        "model_mb": round(model_mb, 1),
    }
    if not depth:
        timed(4)
        return {**out, "peak_mb": round(_hwm_mb() - base, 1)}
    blocker = ReversionBlocker(v, probes, model, **settings).attach(
        model, opt
    )  # reference: the start weights
    timed(4)
    out["peak_mb"] = round(_hwm_mb() - base, 1)
    cost = blocker.cost_
    times: dict[str, list[float]] = {"plain": [], "blocked": []}
    for _ in range(rounds):
        blocker.detach()
        times["plain"].append(timed(n))
        blocker.attach(model, opt)
        times["blocked"].append(timed(n))
    blocker.detach()
    med = {k: statistics.median(t) for k, t in times.items()}
    return {
        **out,
        "trained_mb": round(cost["trained_bytes"] / 2**20, 2),
        "rows": cost["rows"],
        "stored_gradients_mb": round(cost["stored_bytes"] / 2**20, 2),
        "plain_s": round(med["plain"], 4),
        "blocked_s": round(med["blocked"], 4),
        "time_ratio": round(med["blocked"] / med["plain"], 3),
    }


def _child(spec: list) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_scale(quick: bool) -> dict:
    rows = SCALE_ROWS[:1] + SCALE_ROWS[3:5] if quick else SCALE_ROWS
    rounds, n = (2, 2) if quick else (3, 2)
    plain = {
        (kind, length): _child([kind, 0, {}, 0, 0, length])
        for kind in ("full", "lora")
        for length in {r[3] if len(r) > 3 else TRAIN_LEN for r in rows if r[0] == kind}
    }
    out = []
    for row in rows:
        kind, depth = row[0], row[1]
        settings, length = (row[2] if len(row) > 2 else {}), (row[3] if len(row) > 3 else TRAIN_LEN)
        r = _child([kind, depth, settings, rounds, n, length])
        base = plain[(kind, length)]["peak_mb"]
        r.update(plain_peak_mb=base, memory_ratio=round(r["peak_mb"] / base, 3))
        out.append(r)
        print(
            f"{kind:4s} {depth:2d} layers, train len {length} {settings or ''}: memory x{r['memory_ratio']:.2f} "
            f"({base:.0f} -> {r['peak_mb']:.0f} MB, gradients {r['stored_gradients_mb']:.0f} MB)"
            f"  time x{r['time_ratio']:.2f} ({r['plain_s'] * 1e3:.0f} -> {r['blocked_s'] * 1e3:.0f} ms)",
            flush=True,
        )
    return {"rows": out, "unblocked": list(plain.values()), "rounds": rounds, "steps_per_round": n}


def scale_readme(rows: list[dict]) -> list[dict]:
    """README rows: the depth sweep for LoRA and full fine-tuning, and the goal row."""

    def pick(kind, depth, settings=None, length=TRAIN_LEN):
        return next(
            (
                r
                for r in rows
                if r["kind"] == kind
                and len(r["blocked_layers"]) == depth
                and r["settings"] == (settings or {})
                and r["train_len"] == length
            ),
            None,
        )

    out = []
    for kind in ("lora", "full"):
        got = [(d, pick(kind, d)) for d in (2, 4, 8, 24)]
        got = [(d, r) for d, r in got if r is not None]
        if got:
            what = "LoRA r=16 (q/k/v/o)" if kind == "lora" else "full fine-tuning (AdamW)"
            out.append(
                {
                    "benchmark": f"update blocking, {what}: step memory / time vs unblocked at "
                    f"{' / '.join(str(d) for d, _ in got)} blocked layers (21 M Llama, 24 layers)",
                    "measured": ", ".join(
                        f"{d}: {r['memory_ratio']:.2f}× / {r['time_ratio']:.2f}×" for d, r in got
                    ),
                    "target": "LoRA, 4 layers: ≤ 1.5× / ≤ 2×" if kind == "lora" else "reported",
                }
            )
    for length in (TRAIN_LEN, 256):
        goal = pick("lora", 4, length=length)
        if goal is None:
            continue
        met = goal["memory_ratio"] <= 1.5 and goal["time_ratio"] <= 2.0
        note = (
            "the setting fixed first"
            if length == TRAIN_LEN
            else "a common SFT length, added after the first run"
        )
        out.append(
            {
                "benchmark": f"goal: LoRA update-blocking of 4 layers (defaults), memory / time vs the unblocked "
                f"step, training batches {TRAIN_BATCH} × {length} tokens ({note})",
                "measured": f"**{goal['memory_ratio']:.2f}× / {goal['time_ratio']:.2f}×**"
                f"{'' if met else ' (not met)'}",
                "target": "≤ 1.5× / ≤ 2×",
            }
        )
    return out


def run_scale(quick: bool) -> None:
    res = bench_scale(quick)
    payload = {
        "quick": quick,
        "model": "Llama hidden 256, 24 layers, MLP 688, vocab 4000 (~21 M parameters)",
        "train_batch": [TRAIN_BATCH, TRAIN_LEN],
        "probes": [N_PROBES, PROBE_LEN],
        **res,
        "targets": {"lora_4_layers_memory_ratio": 1.5, "lora_4_layers_time_ratio": 2.0},
    }
    payload["readme"] = scale_readme(res["rows"])
    print(_common.write("blocking", payload))


def run_lab(quick: bool) -> None:
    torch.set_num_threads(1)
    aligned, tok, probes, v = setup()
    config = LabConfig()
    rounds, n, steps = (3, 3, 30) if quick else (7, 5, 100)
    blocker = bench_blocker(aligned, tok, probes, v, config, rounds, n)
    monitor = bench_monitor(aligned, tok, v, config, rounds, steps)
    payload = {
        "quick": quick,
        "model": "assets/lab/pair0 aligned (4 layers, d 128)",
        "train_batch": config.ft_batch,
        "optimizer": config.ft_optimizer,
        "n_probes": len(probes),
        "blocked_layers": LAYERS,
        "rounds": rounds,
        "steps_per_round": n,
        "blocker": blocker,
        "monitor": monitor,
        "targets": {"monitor_overhead": 0.10, "blocker_update_ratio": 2.0},
    }
    upd = blocker["update (defaults: refresh_every=2, probe batches of 32)"]["ratio_to_plain"]
    others = ", ".join(
        f"{k.split(' ')[0]} {blocker[k]['ratio_to_plain']:.2f}×"
        for k in (
            "update exact (refresh_every=1, all probes)",
            "hook",
            "gradient (defaults)",
            "penalty (strength=1, every step)",
        )
    )
    m = monitor
    payload["readme"] = [
        {
            "benchmark": "blocker `update` (defaults) step time / plain step (others: exact every step, hook, "
            "gradient, penalty)",
            "measured": f"{upd:.2f}× ({others})",
            "target": "≤ 2×",
        },
        {
            "benchmark": "monitor overhead at `every=10`, defaults: ≤ 64 rotating prompts per check "
            f"({m['train_default']['n_probes']} / {m['heldout_default']['n_probes']} probes; every "
            "prompt every check in brackets)",
            "measured": f"**{100 * m['train_default']['overhead']:.0f} % / {100 * m['heldout_default']['overhead']:.0f} %** "
            f"({100 * m['train_all']['overhead']:.0f} % / {100 * m['heldout_all']['overhead']:.0f} %)",
            "target": "≤ 10 %",
        },
    ]
    out = _common.write("training", payload)
    for name, r in blocker.items():
        print(f"{name:58s} {r['s_per_step'] * 1e3:8.1f} ms/step  x{r['ratio_to_plain']:.2f}")
    for name in ("train_default", "heldout_default", "train_all", "heldout_all"):
        r = monitor[name]
        print(
            f"monitor every=10, {r['n_probes']} probes, {r['probes_per_check']} per check: "
            f"overhead {r['overhead'] * 100:+.1f}%"
        )
    print(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (CI smoke)")
    parser.add_argument("--part", choices=["lab", "scale", "all"], default="all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        warnings.simplefilter("ignore")
        print(json.dumps(scale_worker(*json.loads(args.child))))
        return
    if args.part in ("lab", "all"):
        run_lab(args.quick)
    if args.part in ("scale", "all"):
        run_scale(args.quick)


if __name__ == "__main__":
    main()
