"""``make demo``: the main job on the embedded reversion lab, end to end, in about a minute.

1. fine-tune the shipped aligned lab model (seeds 0 1 2, plus a control run from base);
2. ``revlens.analyze`` the history: v_rev candidates per layer, drift layer × step × run, nulls;
3. write the offline HTML report and print the headline numbers beside the paper's.

    python -m revlens.lab.demo --out demo-out
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("revlens.demo")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns a process exit code."""
    ap = argparse.ArgumentParser(prog="python -m revlens.lab.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo-out", help="output dir (recreated)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import revlens
    from revlens.lab import LabConfig, run_lab

    out = Path(args.out)
    t0 = time.perf_counter()
    cfg = LabConfig(ft_seeds=tuple(args.seeds), ft_steps=args.steps)
    lab = run_lab(out / "lab", cfg, force=True)
    t_lab = time.perf_counter() - t0
    print(lab.summary().to_string(index=False))

    t1 = time.perf_counter()
    report = revlens.analyze(out / "lab", n_stability=10, progress=False)
    t_analyze = time.perf_counter() - t1
    report.save(out / "report")
    html = report.to_html(out / "report.html")
    summary = report.headline()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print()
    print(report)
    print(f"\nlab {t_lab:.1f}s, analyze {t_analyze:.1f}s, total {time.perf_counter() - t0:.1f}s")
    print(f"report: {Path(html or out / 'report.html').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
