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

    python benchmarks/bench_training.py [--quick]
"""

import argparse
import copy
import statistics
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
    probes = lab_probes()  # what `revlens lab --block` reads: the 192 harmful alignment-split prompts
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
        f"{split}_{mode}": ReversionMonitor(v, lab_probes(split), aligned, tokenizer=tok, every=10,
                                            probe_batch_size="auto" if mode == "default" else None)
        for split in ("train", "heldout") for mode in ("default", "all")
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
                finetune(aligned, config, seed=0, steps=steps, checkpoint_steps=[], callbacks=cbs, progress=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (CI smoke)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    aligned, tok, probes, v = setup()
    config = LabConfig()
    rounds, n, steps = (3, 3, 30) if args.quick else (7, 5, 100)
    blocker = bench_blocker(aligned, tok, probes, v, config, rounds, n)
    monitor = bench_monitor(aligned, tok, v, config, rounds, steps)
    payload = {
        "quick": args.quick,
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
    others = ", ".join(f"{k.split(' ')[0]} {blocker[k]['ratio_to_plain']:.2f}×" for k in
                       ("update exact (refresh_every=1, all probes)", "hook", "gradient (defaults)",
                        "penalty (strength=1, every step)"))
    m = monitor
    payload["readme"] = [
        {"benchmark": "blocker `update` (defaults) step time / plain step (others: exact every step, hook, "
                      "gradient, penalty)", "measured": f"{upd:.2f}× ({others})", "target": "≤ 2×"},
        {"benchmark": "monitor overhead at `every=10`, defaults: ≤ 64 rotating prompts per check "
                      f"({m['train_default']['n_probes']} / {m['heldout_default']['n_probes']} probes; every "
                      "prompt every check in brackets)",
         "measured": f"**{100 * m['train_default']['overhead']:.0f} % / {100 * m['heldout_default']['overhead']:.0f} %** "
                     f"({100 * m['train_all']['overhead']:.0f} % / {100 * m['heldout_all']['overhead']:.0f} %)",
         "target": "≤ 10 %"},
    ]
    out = _common.write("training", payload)
    for name, r in blocker.items():
        print(f"{name:58s} {r['s_per_step'] * 1e3:8.1f} ms/step  x{r['ratio_to_plain']:.2f}")
    for name in ("train_default", "heldout_default", "train_all", "heldout_all"):
        r = monitor[name]
        print(f"monitor every=10, {r['n_probes']} probes, {r['probes_per_check']} per check: "
              f"overhead {r['overhead'] * 100:+.1f}%")
    print(out)


if __name__ == "__main__":
    main()
