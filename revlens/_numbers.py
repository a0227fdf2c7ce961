"""Mean ± standard deviation over seeds/runs, the one way revlens summarises repeated measures."""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["format_mean_std", "mean_std", "wilson"]


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


def format_mean_std(
    block: Mapping[str, Any] | None, *, pct: bool = False, digits: int | None = None
) -> str:
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


def wilson(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate ``k / n`` at confidence ``level``.

    Used for every rate revlens reports from counts (harm, refusal, over-refusal): unlike the normal
    approximation it stays inside [0, 1] and is informative at 0 / n and n / n. ``n == 0`` gives
    ``(nan, nan)``.
    """
    from statistics import NormalDist

    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"wilson: level must lie in (0, 1), got {level}")
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi
