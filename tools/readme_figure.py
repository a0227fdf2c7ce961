"""Draw the README / home-page figure from a real lab run: ``docs/assets/reversion.svg``.

    python tools/readme_figure.py [--out docs/assets/reversion.svg] [--work DIR] [--small]

Fine-tunes the shipped lab (pair 0, the ``pretrain-like`` track by default — the README's
headline table; seeds 0 1 2 and a control from base, T = 100; ``--small``: 2 seeds, T = 20), runs
``revlens.analyze`` and plots cos(drift, v_rev) at the best layer
(``mean_diff``) against the fine-tuning step, per run and for the control, with the exact isotropic
null's p99. The SVG is written by hand (no plotting dependency) and states its command and date.
"""

import argparse
import datetime as dt
import html
import tempfile
from pathlib import Path

import revlens
from revlens.lab import LabConfig, run_lab

W, H, L, R, T, B = 640, 316, 56, 150, 30, 60  # size and margins
COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]


def _curves(
    work: Path, small: bool, track: str
) -> tuple[dict[str, list[tuple[int, float]]], int, float]:
    if small:
        config = LabConfig.for_track(
            track, ft_seeds=(0, 1), ft_steps=20, checkpoint_steps=(1, 2, 5, 10, 15, 20)
        )
    else:
        config = LabConfig.for_track(track)
    result = run_lab(work / "lab", config, progress=False)
    report = revlens.analyze(result.lab_dirs["pair0"], progress=False)
    best = int(report.headline("mean_diff")["best_layer"])
    d = report.drift
    d = d[(d["method"] == "mean_diff") & (d["layer"] == best)]
    curves = {}
    for run, rows in d.groupby("run", sort=True):
        kind = rows["kind"].iloc[0]
        rows = rows.sort_values("step")
        label = f"control ({run})" if kind == "control" else str(run)
        curves[label] = [(int(s), float(c)) for s, c in zip(rows["step"], rows["cos"])]
    return curves, best, float(d["null_iso_p99"].iloc[0])


def svg(
    curves: dict[str, list[tuple[int, float]]], best: int, p99: float, caption: str, track: str
) -> str:
    """A line chart of the curves (step on x, cos on y) with the null's p99 as a dashed line."""
    xmax = max(s for c in curves.values() for s, _ in c)
    lo = min(-0.2, min(v for c in curves.values() for _, v in c))
    hi = max(0.8, max(v for c in curves.values() for _, v in c))
    px = lambda s: L + (W - L - R) * s / xmax  # noqa: E731
    py = lambda v: T + (H - T - B) * (hi - v) / (hi - lo)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="18" font-size="13">cos(drift, v_rev) at layer {best} (mean_diff), '
           f'reversion lab, track {track}, pair 0</text>']  # fmt: skip
    for v in [x / 10 for x in range(int(lo * 10), int(hi * 10) + 1, 2)]:
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    for s in sorted({s for c in curves.values() for s, _ in c} | {0}):
        if s % 20 == 0:
            out.append(f'<text x="{px(s):.1f}" y="{H - B + 16}" text-anchor="middle">{s}</text>')
    out.append(
        f'<text x="{(L + W - R) / 2:.0f}" y="{H - B + 34}" text-anchor="middle">fine-tuning step</text>'
    )
    out.append(f'<line x1="{L}" x2="{W - R}" y1="{py(p99):.1f}" y2="{py(p99):.1f}" stroke="#d62728" '
               'stroke-dasharray="5,4"/>')  # fmt: skip
    out.append(
        f'<text x="{W - R + 6}" y="{py(p99) + 4:.1f}" fill="#d62728">isotropic p99 {p99:.3f}</text>'
    )
    for i, (label, pts) in enumerate(curves.items()):
        control = label.startswith("control")
        colour = "#7f7f7f" if control else COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in pts)
        dash = ' stroke-dasharray="2,3"' if control else ""
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>'
        )
        y = T + 30 + 16 * i
        out.append(
            f'<line x1="{W - R + 6}" x2="{W - R + 24}" y1="{y}" y2="{y}" stroke="{colour}" '
            f'stroke-width="2"{dash}/><text x="{W - R + 28}" y="{y + 4}">{html.escape(label)}</text>'
        )
    out.append(f'<text x="{L}" y="{H - 6}" font-size="9" fill="#555">{html.escape(caption)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "docs" / "assets" / "reversion.svg",
    )
    ap.add_argument(
        "--work", type=Path, default=None, help="where the lab is written (default: a temp dir)"
    )
    ap.add_argument("--small", action="store_true", help="2 seeds, T = 20 (a quick look)")
    ap.add_argument(
        "--track", default="pretrain-like", help="lab track (default: pretrain-like, the README's)"
    )
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="revlens-figure-"))
    curves, best, p99 = _curves(work, args.small, args.track)
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    flags = f"{' --small' if args.small else ''} --track {args.track}"
    caption = f"python tools/readme_figure.py{flags} · {today} · revlens {revlens.__version__}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg(curves, best, p99, caption, args.track), encoding="utf-8")
    print(f"wrote {args.out} (best layer {best}; {len(curves)} curves)")


if __name__ == "__main__":
    main()
