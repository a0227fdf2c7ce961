"""Where a LoRA-blocked step's extra time goes (issue 29): the goal setting, side by side, with a breakdown.

The goal of ``docs/scale.md`` ("Blocking cost"): LoRA update-blocking of 4 layers ≤ 2× the
unblocked step, on the 21 M-parameter Llama of ``bench_training.py --part scale`` (hidden 256,
24 layers, PEFT LoRA r=16 on q/k/v/o, AdamW), training batches of 8 × 64 tokens, 64 probe
prompts of 24 tokens, blocking layers 6 / 12 / 18 / 24 with the blocker's defaults
(``refresh_every=2``, probe batches of 32). One process, one torch thread, the variants in
interleaved rounds (plain, then each blocked variant, repeated; the median per variant), so load
from other jobs hits every variant alike. Wall and CPU time (``time.process_time``) per step.

Variants: the defaults (per-row backwards, ``grad_batching="loop"``), the same with one batched
backward over every row (``"vmap"``), and — reported, not defaults — ``refresh_every=3`` and probe
batches of 16 (what it would take to fit 2× at this training-batch size).

The **breakdown** times the blocked-default steps' parts (instrumented calls, one extra pass of
``--steps`` steps): the probe forward of a refresh (``ProbeObjective.s_terms``), the per-row
gradients (``ProbeObjective.grads``), the projection algebra (everything else of the blocker),
and the plain step's own forward + backward + optimizer step. The **arithmetic model** beside it:
a refresh runs a forward over ``32 × 24 = 768`` probe tokens (the training step: ``8 × 64 = 512``)
and one backward per blocked layer ``l`` through layers ``1..l`` only (``6 + 12 + 18 + 24 = 60``
layer-backwards = 2.5 full-depth backwards), every ``refresh_every = 2`` steps.

    python benchmarks/bench_blocking.py [--quick]
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _common

HIDDEN, LAYERS_TOTAL, VOCAB = 256, 24, 4000
TRAIN_BATCH, TRAIN_LEN, N_PROBES, PROBE_LEN, DEPTH = 8, 64, 64, 24, 4
VARIANTS = {
    "blocked, defaults (loop)": {},
    "blocked, vmap (one batched backward)": {"grad_batching": "vmap"},
    "blocked, refresh_every=3 (not default)": {"refresh_every": 3},
    "blocked, probe batches of 16 (not default)": {"probe_batch_size": 16},
}


def _model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS_TOTAL,
        intermediate_size=688,
        vocab_size=VOCAB,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return get_peft_model(
        LlamaForCausalLM(cfg).train(),
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
    )


class _Clock:
    """Accumulated wall time of named parts (instrumented calls)."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    def wrap(self, obj, name: str, part: str) -> None:
        fn = getattr(obj, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.s[part] = self.s.get(part, 0.0) + time.perf_counter() - t0

        setattr(obj, name, timed)


def run(quick: bool) -> dict:
    from revlens.block import ReversionBlocker
    from revlens.directions import Directions
    from revlens.probes import Probes

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    layers = [round(LAYERS_TOTAL * (i + 1) / DEPTH) for i in range(DEPTH)]
    probes = Probes(
        [torch.randint(2, VOCAB, (PROBE_LEN,), generator=g).tolist() for _ in range(N_PROBES)]
    )
    v = Directions.from_tensor(torch.randn(DEPTH, HIDDEN, generator=g), layers)
    batches = [torch.randint(2, VOCAB, (TRAIN_BATCH, TRAIN_LEN), generator=g) for _ in range(8)]
    model = _model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    count = [0]

    def steps(k: int) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(k):
            ids = batches[count[0] % len(batches)]
            count[0] += 1
            opt.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
        return (time.perf_counter() - w0) / k, (time.process_time() - c0) / k

    blockers = {name: ReversionBlocker(v, probes, model, **kw) for name, kw in VARIANTS.items()}
    rounds, n = (2, 6) if quick else (5, 6)  # n: a multiple of 2 and 3 (whole refresh cycles)
    wall: dict[str, list[float]] = {"plain": [], **{k: [] for k in blockers}}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    steps(2)  # warm-up
    for b in blockers.values():
        b.attach(model, opt)
        steps(2)
        b.detach()
    for _ in range(rounds):
        for name in wall:
            b = blockers.get(name)
            if b is not None:
                b.attach(model, opt)
            w, c = steps(n)
            if b is not None:
                b.detach()
            wall[name].append(w)
            cpu[name].append(c)
    med = {k: statistics.median(x) for k, x in wall.items()}
    med_cpu = {k: statistics.median(x) for k, x in cpu.items()}

    # breakdown of the default blocked step: instrumented parts over one pass of n steps
    b = ReversionBlocker(v, probes, model).attach(model, opt)
    clock = _Clock()
    clock.wrap(b.objective_, "s_terms", "probe forward (per refresh)")
    clock.wrap(b.objective_, "grads", "per-row backwards (per refresh)")
    clock.wrap(b, "before_step", "blocker before_step (all)")
    clock.wrap(b, "after_step", "blocker after_step (all)")
    total, _ = steps(n)
    b.detach()
    parts = {k: v / n for k, v in clock.s.items()}  # seconds per step
    blocker_s = parts.pop("blocker before_step (all)") + parts.pop("blocker after_step (all)")
    algebra = (
        blocker_s - parts["probe forward (per refresh)"] - parts["per-row backwards (per refresh)"]
    )
    breakdown = {
        "training step (forward, backward, AdamW)": total - blocker_s,
        **parts,
        "projection algebra and bookkeeping": algebra,
        "total": total,
    }
    return {
        "wall_s": med,
        "cpu_s": med_cpu,
        "ratio": {k: med[k] / med["plain"] for k in med},
        "cpu_ratio": {k: med_cpu[k] / med_cpu["plain"] for k in med_cpu},
        "breakdown_s_per_step": breakdown,
        "rounds": rounds,
        "steps_per_round": n,
        "blocked_layers": layers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    res = run(args.quick)
    for k in res["wall_s"]:
        print(
            f"{k:45s} {res['wall_s'][k] * 1e3:7.0f} ms/step wall  x{res['ratio'][k]:.2f}   "
            f"cpu x{res['cpu_ratio'][k]:.2f}"
        )
    print("breakdown of the default blocked step (s per step):")
    for k, s in res["breakdown_s_per_step"].items():
        print(f"  {k:45s} {s * 1e3:7.0f} ms")
    bd = res["breakdown_s_per_step"]
    plain_part = bd["training step (forward, backward, AdamW)"]
    r = res["ratio"]
    res["readme"] = [
        {
            "benchmark": "goal: LoRA update-blocking of 4 layers (defaults), step time / unblocked, 8 × 64 training tokens, "
            "side by side (`bench_blocking.py`; breakdown per step: probe forward / per-row backwards / "
            "algebra, in units of the plain step)",
            "measured": f"**{r['blocked, defaults (loop)']:.2f}×** wall, {res['cpu_ratio']['blocked, defaults (loop)']:.2f}× "
            f"CPU (vmap {r['blocked, vmap (one batched backward)']:.2f}×; refresh_every=3 "
            f"{r['blocked, refresh_every=3 (not default)']:.2f}×, probe batches of 16 "
            f"{r['blocked, probe batches of 16 (not default)']:.2f}×); parts "
            f"{bd['probe forward (per refresh)'] / plain_part:.2f} / "
            f"{bd['per-row backwards (per refresh)'] / plain_part:.2f} / "
            f"{bd['projection algebra and bookkeeping'] / plain_part:.2f}",
            "target": "≤ 2×",
        }
    ]
    print(_common.write("blocking_goal", res))


if __name__ == "__main__":
    main()
