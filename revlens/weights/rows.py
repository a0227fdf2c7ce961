"""Turn :class:`~revlens.weights.algebra.Energies` into table rows with their nulls, and add
modules up into layer- and model-level rows (exactly: sums of inner products and energies)."""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from revlens.weights.algebra import Energies
from revlens.weights.nulls import cos_quantile, energy_quantile, subspace_dim

__all__ = ["SIDES", "Accumulator", "add_nulls", "base_row", "k_rows", "module_dims"]

SIDES = ("left", "right", "both")
Q = 0.99


def _div(a: float | int, b: float | int) -> float:
    return a / b if b > 0 else math.nan


def base_row(dot: float, dw2: float, v2: float, numel: int) -> dict[str, Any]:
    """The k-independent columns: cos(ΔW, −V), the reverted fraction, norms (nulls: :func:`add_nulls`)."""
    cos = _div(-dot, math.sqrt(dw2 * v2)) if dw2 > 0 and v2 > 0 else math.nan
    return {
        "cos": cos,
        "revert": _div(-dot, v2),
        "dot": dot,
        "dw_norm": math.sqrt(dw2),
        "v_norm": math.sqrt(v2),
        "numel": numel,
    }


def _rand_stats(obs: np.ndarray, draws: np.ndarray | None, dw2: float) -> tuple[np.ndarray, ...]:
    """Mean, p99 and one-sided p-value ``(1 + #{draw >= obs}) / (1 + n)`` per k (``draws [n, k]``)."""
    if draws is None or draws.size == 0 or dw2 <= 0:
        nan = np.full(obs.shape, math.nan)
        return nan, nan, nan
    fr = draws / dw2
    p = (1 + (fr >= obs[None] * (1 - 1e-12)).sum(0)) / (1 + fr.shape[0])
    return fr.mean(0), np.quantile(fr, Q, axis=0), p


def k_rows(
    ks: list[int],
    energies: dict[str, np.ndarray],
    rand: dict[str, np.ndarray | None],
    dw2: float,
    dims: dict[str, list[int]],
    chance: dict[str, list[float]],
    v_energy: list[float] | None = None,
) -> list[dict[str, Any]]:
    """One dict per k: the fraction of ``‖ΔW‖²`` in each top-k subspace (``frac_<side>``), chance
    (``k/m``, ``k/n``, ``k²/mn``), the random-subspace null (``rand_<side>_mean``, ``rand_<side>_p99``,
    ``p_rand_<side>``) and the dimension of the exact null's subspace (``dim_<side>``; the exact
    quantiles and p-values are added for the whole table at once by :func:`add_nulls`)."""
    cols: dict[str, Any] = {"k": ks, "v_energy": v_energy or [math.nan] * len(ks)}
    for side in SIDES:
        frac = (
            np.asarray(energies[side], dtype=np.float64) / dw2
            if dw2 > 0
            else np.full(len(ks), math.nan)
        )
        mean, p99, p = _rand_stats(frac, rand.get(side), dw2)
        cols |= {
            f"frac_{side}": frac,
            f"chance_{side}": chance[side],
            f"dim_{side}": dims[side],
            f"rand_{side}_mean": mean,
            f"rand_{side}_p99": p99,
            f"p_rand_{side}": p,
        }
    return [
        {c: (v[i] if not isinstance(v[i], np.generic) else v[i].item()) for c, v in cols.items()}
        for i in range(len(ks))
    ]


def add_nulls(df: pd.DataFrame) -> pd.DataFrame:
    """Add the exact isotropic nulls to a weights table, vectorised: ``null_iso_p99`` / ``p_iso``
    (cos over ``numel``), ``revert_null_p99`` and, per side, ``iso_<side>_p99`` / ``p_iso_<side>``
    (``Beta(dim/2, (numel_k − dim)/2)``, :mod:`revlens.weights.nulls`; ``numel_k``: the size of the
    matrices measured at that k, ``numel`` where absent)."""
    if df.empty:
        return df
    out = df.copy()
    numel = out["numel"].to_numpy(dtype=np.int64)
    q = {n: cos_quantile(int(n), Q) for n in np.unique(numel)}
    out["null_iso_p99"] = [q[n] for n in numel]
    half = (numel - 1) / 2.0
    cos = out["cos"].to_numpy(dtype=float)
    out["p_iso"] = np.where(
        np.isnan(cos), np.nan, sps.beta.sf((np.clip(cos, -1, 1) + 1) / 2, half, half)
    )
    out["revert_null_p99"] = (
        out["null_iso_p99"] * out["dw_norm"] / out["v_norm"].where(out["v_norm"] > 0)
    )
    for side in SIDES:
        if f"dim_{side}" not in out.columns:
            continue
        dim = out[f"dim_{side}"].to_numpy(dtype=float)
        tot = (
            out["numel_k"].fillna(out["numel"]).to_numpy(dtype=float)
            if "numel_k" in out
            else numel.astype(float)
        )
        ok = np.isfinite(dim) & (dim > 0) & (dim < tot)
        pairs = {(int(d), int(n)) for d, n, o in zip(dim, tot, ok) if o}
        qq = {pn: energy_quantile(pn[0], pn[1], Q) for pn in pairs}
        out[f"iso_{side}_p99"] = [
            qq[(int(d), int(n))] if o else math.nan for d, n, o in zip(dim, tot, ok)
        ]
        a, b = np.where(ok, dim / 2, 1.0), np.where(ok, (tot - dim) / 2, 1.0)
        frac = out[f"frac_{side}"].to_numpy(dtype=float)
        out[f"p_iso_{side}"] = np.where(
            ok & np.isfinite(frac), sps.beta.sf(np.clip(frac, 0, 1), a, b), np.nan
        )
    return out


def module_dims(ks: list[int], m: int, n: int) -> dict[str, list[int]]:
    return {s: [subspace_dim(s, k, m, n) for k in ks] for s in SIDES}


@dataclass
class _Sums:
    dot: float = 0.0
    dw2: float = 0.0
    v2: float = 0.0
    numel: int = 0
    # per k: energies, null dimensions, matrix sizes and update energy of the modules measured at that k
    e: dict[tuple[str, int], float] = field(default_factory=dict)
    dims: dict[tuple[str, int], int] = field(default_factory=dict)
    total: dict[int, int] = field(default_factory=dict)
    dw2_k: dict[int, float] = field(default_factory=dict)
    rand: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)


class Accumulator:
    """Exact sums over modules, per (run, step, level): ``level`` is a layer index or ``"model"``."""

    def __init__(self, ks: tuple[int, ...]) -> None:
        self.ks = list(ks)
        self.sums: dict[tuple[str, int, Any], _Sums] = {}
        self.meta: dict[str, str] = {}

    def add(
        self,
        key: tuple[str, int, Any],
        en: Energies,
        v2: float,
        numel: int,
        ks: list[int],
        dims: dict[str, list[int]],
    ) -> None:
        s = self.sums.setdefault(key, _Sums())
        s.dot += en.dot
        s.dw2 += en.dw2
        s.v2 += v2
        s.numel += numel
        for i, k in enumerate(ks):
            s.total[k] = s.total.get(k, 0) + numel
            s.dw2_k[k] = s.dw2_k.get(k, 0.0) + en.dw2
            for side in SIDES:
                e = getattr(en, side)
                s.e[(side, k)] = s.e.get((side, k), 0.0) + (float(e[i]) if e is not None else 0.0)
                s.dims[(side, k)] = s.dims.get((side, k), 0) + dims[side][i]
                r = getattr(en, f"rand_{side}")
                if r is not None:
                    col = r[:, i].double().cpu().numpy()
                    s.rand[(side, k)] = s.rand.get((side, k), 0.0) + col

    def rows(self, kinds: dict[str, str]) -> list[dict[str, Any]]:
        """Aggregated rows (``level`` key -> ``layer``; ``"model"`` -> layer ``-2``)."""
        out = []
        for (run, step, level), s in self.sums.items():
            head = {
                "run": run,
                "kind": kinds.get(run, "run"),
                "step": step,
                "layer": -2 if level == "model" else int(level),
                **base_row(s.dot, s.dw2, s.v2, s.numel),
            }
            ks = [k for k in self.ks if k in s.total]
            if not ks:
                out.append({**head, "k": 0})
                continue
            for k in ks:
                dw2 = s.dw2_k[k]
                energies = {side: np.array([s.e[(side, k)]]) for side in SIDES}
                rand = {
                    side: s.rand[(side, k)][:, None] if (side, k) in s.rand else None
                    for side in SIDES
                }
                dims = {side: [s.dims[(side, k)]] for side in SIDES}
                chance = {side: [_div(s.dims[(side, k)], s.total[k])] for side in SIDES}
                out.append(
                    {
                        **head,
                        **k_rows([k], energies, rand, dw2, dims, chance)[0],
                        "numel_k": s.total[k],
                    }
                )
        return out
