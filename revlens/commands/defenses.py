"""``revlens defenses compare``: published defenses and revlens' blocking side by side, each beside
its random control, on one history's aligned checkpoint (:func:`revlens.compare_defenses`)."""

import argparse
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from revlens.errors import ConfigError

__all__ = ["load_object", "register"]

_EXAMPLE = """example (the lab's shipped pair, the pretrain-like track):
  revlens defenses compare PAIR_DIR --recipe revlens.lab.defenses:lab_recipe \\
      --sets revlens.lab.defenses:lab_sets --out cmp/ --seeds 0 1 2 --html cmp/defenses.html

the real track (SmolLM2-135M-Instruct + its shipped safety adapter; docs/defenses.md):
  revlens defenses compare revlens.lab.real_defenses:real_history \
      --recipe revlens.lab.real_defenses:real_recipe --sets revlens.lab.real_defenses:real_eval_sets \
      --defenses update safelora asft safety_freeze procon subspace lisa --out cmp-real/

HISTORY may also be "module:callable" (called without arguments, returning a History).
--recipe / --sets take "module:callable" (called without arguments) or a JSON file: the recipe's
FinetuneRecipe fields ({"data": "train.jsonl", "steps": 100, ...}); the sets' EvalSets fields
({"harmful": [...], "harmless": [...], "probes": [...], "task": "task.jsonl", "alignment": "align.jsonl",
"harm": {"name": "compliance_rate"}}).
Results are resumable: per-run files under OUT/runs/ are reused when nothing they depend on changed;
the whole comparison is saved to OUT/comparison (revlens.load opens it)."""


def load_object(spec: str, what: str, kind: type) -> Any:
    """``module:callable`` (called without arguments) or a JSON file of ``kind``'s fields."""
    if ":" in spec and not Path(spec).exists():
        module, _, name = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{what}={spec!r}: cannot import it ({exc})") from None
        out = obj() if callable(obj) and not isinstance(obj, kind) else obj
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"{what}={spec!r}: neither module:callable nor a JSON file")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{what}={spec!r}: not JSON ({exc.msg})") from None
        if not isinstance(fields, dict):
            raise ConfigError(f"{what}={spec!r}: expected a JSON object of fields")
        try:
            out = kind.from_dict(fields) if hasattr(kind, "from_dict") else kind(**fields)
        except TypeError as exc:
            raise ConfigError(f"{what}={spec!r}: {exc}") from None
    if not isinstance(out, kind):
        raise ConfigError(
            f"{what}={spec!r} gave a {type(out).__name__}, expected a {kind.__name__}"
        )
    return out


def register(
    subparsers: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Add ``revlens defenses compare``."""
    from revlens.defenses.suite import CompareConfig

    p = subparsers.add_parser(
        "defenses",
        parents=list(parents),
        help="published defenses vs reversion blocking",
        description=__doc__.splitlines()[0],
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser(
        "compare",
        parents=list(parents),
        help="run every defense beside its random control",
        description=__doc__.splitlines()[0],
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "history",
        help="a history (history.json, a dir with base/ and aligned/, ...) or module:callable",
    )
    c.add_argument(
        "--recipe", required=True, help="the fine-tuning recipe: module:callable or a JSON file"
    )
    c.add_argument(
        "--sets", required=True, help="the evaluation sets: module:callable or a JSON file"
    )
    c.add_argument(
        "--out", required=True, help="output dir (per-run results, resumable; the comparison)"
    )
    c.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    c.add_argument("--html", default=None, help="also write an offline HTML page here")
    c.add_argument("--device", default=None, help="torch device (default cpu)")
    CompareConfig.add_arguments(c)
    c.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from revlens.defenses import EvalSets, FinetuneRecipe, compare_defenses
    from revlens.defenses.suite import CompareConfig

    config = CompareConfig.from_args(args)
    recipe = load_object(args.recipe, "--recipe", FinetuneRecipe)
    if args.steps is not None:
        recipe = recipe.replace(steps=args.steps)
    sets = load_object(args.sets, "--sets", EvalSets)
    history: Any = args.history
    if ":" in history and not Path(history).exists():
        from revlens.history import History

        history = load_object(history, "history", History)
    out = Path(args.out)
    result = compare_defenses(history, recipe, sets, config=config, out=out, device=args.device)
    result.save(out / "comparison")
    lines = [
        result.printed(),
        f"\nsaved: {out / 'comparison'}  ({result.meta['date']}, {result.meta['machine']})",
    ]
    if args.html:
        lines.append(f"HTML: {result.to_html(args.html)}")
    print("\n".join(lines))  # noqa: T201 (the command's result: the table)
    return 0
