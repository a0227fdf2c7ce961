"""The monitor's overhead on a lab fine-tune, wall and CPU, side by side (issue 29: ≤ 10 % at 96 probes).

On the shipped lab pair (``assets/lab/pair0``: 4-layer GPT-2, d 128), the lab's benign fine-tuning
(``pretrain-like`` track, batch 32, AdamW, ``steps`` steps) with a :class:`ReversionMonitor` at
``every=10`` (defaults: a rotating subset of at most 64 prompts per check) over the same fine-tune
without, for the 96-prompt held-out harmful split and the 192-prompt alignment split. Rounds are
interleaved (plain, then each monitored variant, repeated; one torch thread) and the median per
variant kept, so load from other jobs hits each alike. Besides the end-to-end ratio (wall and CPU
time, ``time.process_time``), the time spent inside ``monitor.step`` is measured directly
(instrumented): the monitor's own cost over the plain run's time, which other jobs' load inflates
far less than a difference of two end-to-end times.

    python benchmarks/bench_monitor.py [--quick]
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


def run(quick: bool) -> dict:
    from revlens.lab import LabConfig, asset_dir, build_tokenizer, finetune, load_pair
    from revlens.lab.blocked import lab_directions, lab_probes
    from revlens.monitor import ReversionMonitor, ReversionWarning

    torch.set_num_threads(1)
    base, aligned = load_pair(asset_dir() / "pair0")[:2]
    tok = build_tokenizer()
    v = lab_directions(base, aligned, [1, 2, 3, 4], probes=lab_probes())
    config = LabConfig.for_track("pretrain-like")
    rounds, steps = (2, 30) if quick else (5, 100)
    monitors = {
        f"{split} ({n} probes)": ReversionMonitor(
            v, lab_probes(split), aligned, tokenizer=tok, every=10
        )
        for split, n in (("heldout", 96), ("train", 192))
    }
    inside: dict[str, list[float]] = {k: [] for k in monitors}
    for name, m in monitors.items():  # time spent inside each check
        orig = m.step

        def timed(model, step, _orig=orig, _name=name):
            t0 = time.perf_counter()
            try:
                return _orig(model, step)
            finally:
                inside[_name][-1] += time.perf_counter() - t0

        m.step = timed
    wall: dict[str, list[float]] = {"plain": [], **{k: [] for k in monitors}}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReversionWarning)
        finetune(aligned, config, seed=0, steps=5, checkpoint_steps=[], progress=False)  # warm-up
        for _ in range(rounds):
            for name in wall:
                cbs = [] if name == "plain" else [monitors[name]]
                for m in cbs:
                    m.reset()
                    inside[name].append(0.0)
                w0, c0 = time.perf_counter(), time.process_time()
                finetune(
                    aligned,
                    config,
                    seed=0,
                    steps=steps,
                    checkpoint_steps=[],
                    callbacks=cbs,
                    progress=False,
                )
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(x) for k, x in wall.items()}
    med_cpu = {k: statistics.median(x) for k, x in cpu.items()}
    return {
        "every": 10,
        "steps": steps,
        "rounds": rounds,
        "plain_s": med["plain"],
        "plain_cpu_s": med_cpu["plain"],
        **{
            name: {
                "n_probes": len(m.inputs_.tokens),
                "probes_per_check": m.subset_size_,
                "monitored_s": med[name],
                "overhead_wall": med[name] / med["plain"] - 1,
                "overhead_cpu": med_cpu[name] / med_cpu["plain"] - 1,
                "inside_checks_s": statistics.median(inside[name]),
                "overhead_inside": statistics.median(inside[name]) / med["plain"],
            }
            for name, m in monitors.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, 30 steps")
    args = ap.parse_args()
    res = run(args.quick)
    for name in ("heldout (96 probes)", "train (192 probes)"):
        r = res[name]
        print(
            f"{name:22s} {r['probes_per_check']} per check: overhead wall {100 * r['overhead_wall']:+.1f} %, "
            f"CPU {100 * r['overhead_cpu']:+.1f} %, inside the checks {100 * r['overhead_inside']:.1f} % "
            f"({r['inside_checks_s']:.2f} s of {res['plain_s']:.1f} s)"
        )
    h, t = res["heldout (96 probes)"], res["train (192 probes)"]
    res["readme"] = [
        {
            "benchmark": "monitor overhead at `every=10`, defaults (≤ 64 rotating prompts per check), lab fine-tune "
            "(`pretrain-like`, 100 steps), 96 / 192 probes: end-to-end wall and CPU, and the time inside "
            "the checks (`bench_monitor.py`)",
            "measured": f"**{100 * h['overhead_wall']:+.0f} % / {100 * t['overhead_wall']:+.0f} %** wall, "
            f"{100 * h['overhead_cpu']:+.0f} % / {100 * t['overhead_cpu']:+.0f} % CPU; inside the checks "
            f"{100 * h['overhead_inside']:.1f} % / {100 * t['overhead_inside']:.1f} %",
            "target": "≤ 10 %",
        }
    ]
    print(_common.write("monitor", res))


if __name__ == "__main__":
    main()
