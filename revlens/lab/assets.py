"""Regenerate the shipped base/aligned pairs: ``python -m revlens.lab.assets --pretrain-seeds 0 1``.

Each pair goes to ``<out>/pair<seed>/{base,aligned}`` (save_pretrained + tokenizer) with
``pair.json`` (seed, alignment steps, metrics, wall and CPU seconds, the config used).
"""

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from revlens.lab.config import LabConfig
from revlens.lab.language import build_tokenizer
from revlens.lab.metrics import evaluate
from revlens.lab.runner import asset_dir, save_pair
from revlens.lab.train import align, pretrain

__all__ = ["build_assets"]

log = logging.getLogger(__name__)


def build_assets(
    out: Path | None = None,
    config: LabConfig | None = None,
    *,
    pretrain_seeds: Sequence[int] = (0, 1),
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Pre-train and align one pair per seed into ``out`` (default: the shipped ``assets/lab``)."""
    out = asset_dir() if out is None else Path(out)
    config = config or LabConfig()
    tok = build_tokenizer()
    infos = []
    for seed in pretrain_seeds:
        t0, c0 = time.perf_counter(), time.process_time()
        base = pretrain(config, seed=seed, progress=progress)
        t1 = time.perf_counter()
        aligned, n = align(base, config, seed=seed, progress=progress)
        t2, c2 = time.perf_counter(), time.process_time()
        info = {
            "pretrain_seed": seed,
            "align_steps": n,
            "pretrain_s": round(t1 - t0, 2),
            "align_s": round(t2 - t1, 2),
            "pair_train_s": round(t2 - t0, 2),
            "pair_train_cpu_s": round(c2 - c0, 2),
            "metrics": {"base": evaluate(base, tok), "aligned": evaluate(aligned, tok)},
            "config": config.to_dict(),
        }
        save_pair(out / f"pair{seed}", base, aligned, info)
        log.info("pair%d: %s", seed, info)
        infos.append(info)
    return infos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m revlens.lab.assets", description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="default: assets/lab beside the package")
    p.add_argument("--pretrain-seeds", nargs="+", type=int, default=[0, 1])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for info in build_assets(args.out, pretrain_seeds=args.pretrain_seeds):
        m = info["metrics"]
        msg = (
            f"pair{info['pretrain_seed']}: base harm {m['base']['harm_rate']:.3f}, aligned harm "
            f"{m['aligned']['harm_rate']:.3f} after {info['align_steps']} alignment steps; "
            f"trained in {info['pair_train_s']:.1f}s wall ({info['pair_train_cpu_s']:.1f}s CPU)"
        )
        print(msg)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
