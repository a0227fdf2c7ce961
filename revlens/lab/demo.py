"""``make demo``: the main job on the embedded reversion lab, end to end, in about a minute.

1. fine-tune the shipped aligned lab model on the ``pretrain-like`` track (:data:`revlens.lab.tracks.DEMO_TRACK`,
   where the paper's shape holds; ``--track remap`` for the one where it does not), seeds 0 1 2, plus a
   control run from base, on one torch thread (:func:`revlens.lab.train.lab_threads`);
2. ``revlens.analyze`` the history: v_rev candidates per layer, drift layer × step × run, nulls;
3. write the offline HTML report and print the headline numbers beside the paper's, and the track's note
   (whether the paper's shape holds on it, and why not where it does not; also in the report).

    python -m revlens.lab.demo --out demo-out
"""

import argparse
import json
import logging
import sys
import textwrap
import time
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("revlens.demo")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns a process exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m revlens.lab.demo", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--out", default="demo-out", help="output dir (recreated)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=100)
    from revlens.lab.tracks import DEMO_TRACK, TRACKS, track_note

    ap.add_argument(
        "--track",
        choices=list(TRACKS),
        default=DEMO_TRACK,
        help=f"lab track (default: {DEMO_TRACK})",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import revlens
    from revlens.lab import LabConfig, run_lab
    from revlens.lab.train import lab_threads

    out = Path(args.out)
    t0 = time.perf_counter()
    cfg = LabConfig.for_track(args.track, ft_seeds=tuple(args.seeds), ft_steps=args.steps)
    with lab_threads():
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
    print()
    print(textwrap.fill(track_note(args.track).replace("**", ""), 100))
    print(f"\nlab {t_lab:.1f}s, analyze {t_analyze:.1f}s, total {time.perf_counter() - t0:.1f}s")
    print(f"report: {Path(html or out / 'report.html').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
