"""Two direction candidates side by side: ``cos(a_l, b_l)`` per layer beside its nulls.

The question every reader of the paper asks: is the history-defined ``v_rev`` (aligned → base,
toward compliance) the refusal direction ``r`` of Arditi et al. (harmful − harmless on one
checkpoint, toward refusal; :mod:`revlens.directions.refusal`)? If reversion were "losing the
refusal direction", ``cos(v_rev_l, r_l)`` would be clearly **negative** (DESIGN §6).

:func:`compare_directions` reports per shared layer the cosine of the first rows of ``a`` and
``b`` beside

- the **isotropic** null, exact: for ``u`` uniform on the sphere of R^d, ``(cos(u, b) + 1) / 2 ~
  Beta((d − 1)/2, (d − 1)/2)`` (:mod:`revlens.nulls`): the two-sided band
  ``[q_{(1−level)/2}, q_{(1+level)/2}]`` and the two-sided p-value ``P(|cos(u, b)| ≥ |cos|)``;
- optionally the **covariance-matched** null (``stats`` with the aligned checkpoint's second
  moments): ``n_null`` random stand-ins for ``a`` drawn from ``N(0, Σ_l)`` (the aligned model's
  activation covariance at that layer), their cosines with ``b_l``: the empirical band and the
  two-sided p-value ``(1 + #{|cos(u, b)| ≥ |cos|}) / (1 + n)``. Activations are anisotropic, so
  two directions that both live where activations vary share more than the sphere predicts: this
  null is the stricter one.

The result (:class:`DirectionComparison`) draws itself: :meth:`DirectionComparison.figure`.
"""

import math
from dataclasses import dataclass, field
from typing import Any, no_type_check

import numpy as np
import pandas as pd

from revlens._config import as_float, as_int
from revlens._seeds import generator
from revlens.collect.stats import HistoryStats
from revlens.directions import Directions
from revlens.errors import ConfigError
from revlens.nulls import covariance_null_directions, isotropic_pvalue, isotropic_quantile

__all__ = ["COMPARE_COLUMNS", "DirectionComparison", "compare_directions"]

COMPARE_COLUMNS = (
    "layer",
    "cos",
    "iso_lo",
    "iso_hi",
    "iso_p",
    "outside_iso",
    "cov_lo",
    "cov_hi",
    "cov_p",
    "outside_cov",
)
"""Columns of :attr:`DirectionComparison.table` (``cov_*`` are NaN / False without ``stats``)."""


@dataclass(frozen=True)
class DirectionComparison:
    """Per-layer cosines of two direction candidates beside their nulls (module docstring).

    Attributes:
        table: one row per shared layer (:data:`COMPARE_COLUMNS`).
        a, b: the two methods' names.
        d_model: the stream width (the isotropic null's dimension).
        meta: ``level``, ``n_null``, ``seed``.
    """

    table: pd.DataFrame
    a: str
    b: str
    d_model: int
    meta: dict[str, Any] = field(default_factory=dict)

    def figure(self, *, title: str | None = None) -> Any:
        """Plotly figure: ``cos(a_l, b_l)`` per layer with the isotropic (and covariance-matched)
        null band."""
        from revlens.plot.compare import cosine_profile

        return cosine_profile(
            self.table, a=self.a, b=self.b, level=float(self.meta.get("level", 0.99)), title=title
        )

    def __repr__(self) -> str:
        t = self.table
        return (
            f"DirectionComparison({self.a} vs {self.b}: {len(t)} layers, cos in "
            f"[{t['cos'].min():.3f}, {t['cos'].max():.3f}], {int(t['outside_iso'].sum())} outside the isotropic "
            f"{self.meta.get('level')} band)"
        )


def _name(d: Directions, given: str | None) -> str:
    return given if given is not None else d.method


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def compare_directions(
    a: Directions,
    b: Directions,
    *,
    stats: HistoryStats | None = None,
    level: float = 0.99,
    n_null: int = 1000,
    seed: int = 0,
    names: tuple[str, str] | None = None,
) -> DirectionComparison:
    """``cos(a_l, b_l)`` at every layer both have, beside the isotropic null (exact) and, with
    ``stats``, the covariance-matched one (module docstring).

    Args:
        a, b: two :class:`~revlens.directions.Directions` (first rows compared; e.g. ``v_rev`` from
            ``report.directions["mean_diff"]`` and the refusal directions).
        stats: collected statistics with the aligned checkpoint's second moments (e.g. from
            :func:`revlens.collect`), for the covariance-matched null; ``None``: isotropic only.
        level: the nulls' two-sided band (default the central 99 %).
        n_null: random directions per layer of the covariance-matched null.
        seed: its seed (one generator stream per layer).
        names: the two names shown (default: the methods).

    Raises:
        ConfigError: not Directions, no shared layer, another site, a bad level.
        ShapeMismatchError: different widths.
    """
    for what, d in (("a", a), ("b", b)):
        if not isinstance(d, Directions):
            raise ConfigError(
                f"compare_directions: {what} must be a Directions; got {type(d).__name__}"
            )
    level = as_float("level", level)
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    n_null = as_int("n_null", n_null, min=1)
    b.check_d_model(a.d_model, f"directions {a.method}")
    if a.site != b.site:
        raise ConfigError(
            f"compare_directions: {a.method} live at site {a.site!r}, {b.method} at {b.site!r}"
        )
    layers = [layer for layer in a.layers if layer in b.layers]
    if not layers:
        raise ConfigError(
            f"compare_directions: no shared layer ({a.method}: {list(a.layers)}, "
            f"{b.method}: {list(b.layers)})"
        )
    if stats is not None:
        stats.select(layers)  # SiteError naming a layer the statistics lack
    lo_q, hi_q = (1.0 - level) / 2, (1.0 + level) / 2
    iso_lo, iso_hi = isotropic_quantile(a.d_model, lo_q), isotropic_quantile(a.d_model, hi_q)
    cov = stats[stats.aligned_name].covariance if stats is not None else None
    rows = []
    for layer in layers:
        u, v = a[layer].double(), b[layer].double()
        cos = float(u @ v / (u.norm() * v.norm()))
        p_up = float(isotropic_pvalue(cos, a.d_model))
        row = {
            "layer": layer,
            "cos": cos,
            "iso_lo": iso_lo,
            "iso_hi": iso_hi,
            "iso_p": min(1.0, 2 * min(p_up, 1.0 - p_up)),
            "outside_iso": not iso_lo <= cos <= iso_hi,
            "cov_lo": math.nan,
            "cov_hi": math.nan,
            "cov_p": math.nan,
            "outside_cov": False,
        }
        if cov is not None:
            null = covariance_null_directions(
                cov[stats.layer_pos(layer)],
                n_null,
                generator=generator(seed, "compare-cov-null", layer),
            )
            c = (null @ (v / v.norm())).numpy()
            lo, hi = np.quantile(c, [lo_q, hi_q])
            row.update(
                cov_lo=float(lo),
                cov_hi=float(hi),
                outside_cov=not lo <= cos <= hi,
                cov_p=float(
                    (1 + np.count_nonzero(np.abs(c) >= abs(cos) * (1 - 1e-12))) / (1 + c.size)
                ),
            )
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    na, nb = names if names is not None else (_name(a, None), _name(b, None))
    return DirectionComparison(
        table,
        na,
        nb,
        a.d_model,
        {"level": level, "n_null": n_null if cov is not None else 0, "seed": seed},
    )
