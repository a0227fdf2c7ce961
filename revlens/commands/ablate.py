"""``revlens ablate``: causal mediation along v_rev against random controls, with an HTML report."""

import argparse
from typing import Any

from revlens.commands._common import add_common, check_out, load_history, make_out, parse_layers
from revlens.errors import ConfigError

__all__ = ["METRICS", "make_metric", "register", "run"]

METRICS = ("harm", "harm_rate", "task_loss", "task_acc", "kl", "logit_diff", "greedy_rate")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``ablate`` sub-command."""
    p = subparsers.add_parser(
        "ablate",
        help="clamp / patch / steer along v_rev vs random controls → effects.csv, summary.csv, html",
        description="Intervene on each fine-tuning checkpoint's forward pass along v_rev (and along "
        "random isotropic / covariance-matched control directions) and measure a behaviour metric; "
        "writes effects.csv, summary.csv, report.html and the saved report (causal/).",
    )
    add_common(p)
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="behaviour metric: the lab's harm (log-odds), harm_rate, task_loss, task_acc; "
                   "kl (to the aligned model), logit_diff (--pos/--neg tokens), greedy_rate (--pos "
                   "tokens). Default: harm for a lab history, else kl")  # fmt: skip
    p.add_argument("--pos", nargs="+", metavar="TOKEN", help="tokens of logit_diff / greedy_rate")
    p.add_argument("--neg", nargs="+", metavar="TOKEN", help="negative tokens of logit_diff")
    p.add_argument("--directions", default="mean_diff", help="direction method (default mean_diff)")
    p.add_argument(
        "--layers", nargs="+", metavar="L", help="layer indices (0 = embeddings) or 'all'"
    )
    p.add_argument("--steps", nargs="+", metavar="STEP",
                   help="fine-tuning steps per run: integers, 'last', or 'all' (default)")  # fmt: skip
    p.add_argument("--runs", nargs="+", metavar="RUN", help="runs (default: every non-control run)")
    p.add_argument("--kinds", nargs="+", default=["clamp", "patch"], choices=["clamp", "patch", "steer"],
                   help="interventions (default: clamp patch)")  # fmt: skip
    p.add_argument("--controls", type=int, default=16,
                   help="random control directions per layer and control kind (default 16)")  # fmt: skip
    p.add_argument("--control-kinds", nargs="+", default=["iso", "cov"], choices=["iso", "cov"],
                   help="control direction kinds (default: iso cov)")  # fmt: skip
    p.add_argument("--alphas", nargs="+", type=float, metavar="A",
                   help="steering strengths (needed with --kinds steer)")  # fmt: skip
    p.add_argument("--positions", choices=["all", "last"], default="all",
                   help="intervene at every position (default) or the last token")  # fmt: skip
    p.set_defaults(func=run)
    return p


def make_metric(name: str, history: Any, *, pos: list[str] | None = None,
                neg: list[str] | None = None) -> Any:  # fmt: skip
    """The metric callable a ``--metric`` name stands for on ``history``."""
    if name in ("harm", "harm_rate", "task_loss", "task_acc"):
        from revlens.lab import metrics as lab

        make = {"harm": lab.harm_logodds_metric, "harm_rate": lab.harm_rate_metric,
                "task_loss": lab.task_loss_metric, "task_acc": lab.task_accuracy_metric}[name]  # fmt: skip
        tok = history.tokenizer
        metric = make(tok() if callable(tok) else tok)
        metric.name = f"lab_{name}"  # recorded in the report's config
        return metric
    from revlens import causal

    if name == "kl":
        return causal.kl_to()
    if name == "logit_diff":
        if not pos or not neg:
            raise ConfigError("--metric logit_diff needs --pos TOKEN... and --neg TOKEN...")
        return causal.logit_diff(pos, neg)
    if name == "greedy_rate":
        if not pos:
            raise ConfigError("--metric greedy_rate needs --pos TOKEN...")
        return causal.greedy_rate(pos)
    raise ConfigError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")


def _steps(values: list[str] | None) -> Any:
    if not values or values == ["all"]:
        return None
    if values == ["last"]:
        return "last"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ConfigError(f"--steps expects integers, 'last' or 'all', got {values}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``revlens ablate``; returns the exit code."""
    from revlens.causal import ablation_study

    if "steer" in args.kinds and not args.alphas:
        raise ConfigError("--kinds steer needs --alphas A [A ...]")
    history = load_history(args.history)
    name = args.metric or ("harm" if history.lab_dir is not None else "kl")
    metric = make_metric(name, history, pos=args.pos, neg=args.neg)
    out = check_out(args.out)
    report = ablation_study(
        history, args.probes, metric, directions=args.directions, layers=parse_layers(args.layers),
        steps=_steps(args.steps), runs=args.runs, kinds=args.kinds, controls=args.controls,
        control_kinds=args.control_kinds, alphas=args.alphas, seed=args.seed,
        batch_size=args.batch_size, positions=args.positions, progress=not args.no_progress,
    )  # fmt: skip
    make_out(out)
    report.effects.to_csv(out / "effects.csv", index=False)
    report.summary.to_csv(out / "summary.csv", index=False)
    report.save(out / "causal")
    html = report.to_html(out / "report.html", title=args.title)
    print(html)  # noqa: T201 (the command's result: where the report is)
    return 0
