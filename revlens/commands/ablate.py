"""``revlens ablate``: causal mediation along v_rev against random controls, with an HTML report."""

import argparse
from collections.abc import Sequence
from typing import Any

from revlens.commands._common import add_common, check_out, load_history, publish_out
from revlens.errors import ConfigError
from revlens.history import History

__all__ = ["make_metric", "register", "run"]


def register(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Add the ``ablate`` sub-command (its options are :class:`revlens.causal.AblationConfig`'s fields)."""
    from revlens.causal.config import AblationConfig

    p = subparsers.add_parser(
        "ablate",
        parents=list(parents),
        help="clamp / patch / steer along v_rev vs random controls → effects.csv, summary.csv, html",
        description="Intervene on each fine-tuning checkpoint's forward pass along v_rev (and along "
        "random isotropic / covariance-matched control directions) and measure a behaviour metric; "
        "writes effects.csv, summary.csv, report.html and the saved report (causal/).",
    )
    add_common(p)
    p.add_argument(
        "--metric",
        default=None,
        metavar="NAME",
        help="behaviour metric: a name the history declares (e.g. the lab's harm, harm_rate), or "
        "kl (to the aligned model), logit_diff / logit_rate (--pos/--neg tokens), greedy_rate "
        "(--pos tokens). Default: the history's default metric, else kl",
    )
    p.add_argument(
        "--pos", nargs="+", metavar="TOKEN", help="tokens of logit_diff / logit_rate / greedy_rate"
    )
    p.add_argument(
        "--neg", nargs="+", metavar="TOKEN", help="negative tokens of logit_diff / logit_rate"
    )
    AblationConfig.add_arguments(p)
    p.set_defaults(func=run)
    return p


def make_metric(
    name: str | None,
    history: History,
    *,
    pos: list[str] | None = None,
    neg: list[str] | None = None,
) -> Any:
    """The metric a ``--metric`` name stands for on ``history``: one the history declares
    (``metadata["metrics_spec"]``), or a built-in (:data:`revlens.metrics.METRICS`)."""
    from revlens.metrics import METRICS, metric_from_spec

    specs = history.metadata.get("metrics_spec") or {}
    if name is None:
        name = history.metadata.get("default_metric") or "kl"
    if name in specs:
        return metric_from_spec(specs[name], label=name)
    if name not in METRICS:
        declared = f"; this history declares {', '.join(specs)}" if specs else ""
        raise ConfigError(f"unknown metric {name!r}; built-in: {', '.join(METRICS)}{declared}")
    if name in ("logit_diff", "logit_rate") and (not pos or not neg):
        raise ConfigError(f"--metric {name} needs --pos TOKEN... and --neg TOKEN...")
    if name == "greedy_rate" and not pos:
        raise ConfigError("--metric greedy_rate needs --pos TOKEN...")
    return metric_from_spec({"name": name, "pos": pos, "neg": neg})


def run(args: argparse.Namespace) -> int:
    """Run ``revlens ablate``; returns the exit code."""
    from revlens.causal import ablation_study
    from revlens.causal.config import AblationConfig

    config = AblationConfig.from_args(args)
    out = check_out(args.out)
    history = load_history(args.history)
    metric = make_metric(args.metric, history, pos=args.pos, neg=args.neg)
    report = ablation_study(
        history, args.probes, metric, config=config, progress=not args.no_progress
    )
    with publish_out(out) as tmp:  # every file of this run, swapped in as a whole
        report.effects.to_csv(tmp / "effects.csv", index=False)
        report.summary().to_csv(tmp / "summary.csv", index=False)
        report.save(tmp / "causal")
        report.to_html(tmp / "report.html", title=args.title)
    print(out / "report.html")  # noqa: T201 (the command's result: where the report is)
    return 0
