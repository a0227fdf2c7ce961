"""Mean ± standard deviation over seeds/runs, the one way revlens summarises repeated measures."""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["format_mean_std", "mean_std"]


def mean_std(values: Iterable[Any]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of the finite values (sample std, ``ddof=1``; NaN with one value)."""
    v = np.asarray(list(values), dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else math.nan,
        "n": int(v.size),
    }


def format_mean_std(block: Mapping[str, Any] | None, *, pct: bool = False, digits: int | None = None) -> str:
    """``"0.412 ± 0.031"`` (``pct``: ``"41.2% ± 3.1%"``); ``"n/a"`` without a value."""
    if not block or block.get("n", 1) == 0:
        return "n/a"
    mean, std = block.get("mean", math.nan), block.get("std", math.nan)
    if mean is None or math.isnan(float(mean)):
        return "n/a"
    d = (1 if pct else 3) if digits is None else digits
    scale, unit = (100.0, "%") if pct else (1.0, "")
    out = f"{float(mean) * scale:.{d}f}{unit}"
    if std is not None and not math.isnan(float(std)):
        out += f" ± {float(std) * scale:.{d}f}{unit}"
    return out
