"""``WeightReport``: weight-space reversion of a history, as tables that draw themselves.

A saved report is a directory of plain files (no pickle), written atomically: ``modules.json``,
``layers.json``, ``model.json``, ``spectrum.json`` (column-wise JSON, exact floats; ``*.csv``
copies for spreadsheets), optionally ``metrics.json``, and ``weights.json`` (config, provenance,
format version), with the manifest every revlens result has.
"""

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, no_type_check

import pandas as pd

from revlens._frames import read_frame, write_frame
from revlens._numbers import format_mean_std, mean_std
from revlens._result import Result
from revlens.errors import ConfigError
from revlens.modes import WeightSide
from revlens.weights.html import WeightsHtml

__all__ = ["WeightReport"]

_FRAMES = ("table", "layers", "model", "spectrum")
_FILES = {"table": "modules", "layers": "layers", "model": "model", "spectrum": "spectrum"}


def _final(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["step"] == df.groupby("run")["step"].transform("max")]


def _groups(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    kinds = df["kind"].astype(str)
    out = {"runs": df[kinds == "run"]}
    for kind in sorted(set(kinds) - {"run"}):
        out[kind] = df[kinds == kind]
    return {g: d for g, d in out.items() if not d.empty}


class WeightReport(WeightsHtml, Result):
    """What :func:`~revlens.weights.weight_reversion` measured.

    Attributes:
        table: one row per (run, step, parameter, k) — ``run, kind, step, layer, module,
            module_type, group, shape, k``; ``cos`` = cos(ΔW, −V), ``revert`` = −⟨ΔW, V⟩/‖V‖²,
            ``dot``, ``dw_norm``, ``v_norm``, ``numel``, exact isotropic nulls ``null_iso_p99``,
            ``p_iso``, ``revert_null_p99``; per k: ``frac_left/right/both``, ``chance_*``,
            ``iso_*_p99``, ``p_iso_*``, ``rand_*_mean``, ``rand_*_p99``, ``p_rand_*``,
            ``v_energy`` (share of ‖V‖² in its own top-k). Vectors and matrices too small for k
            have one row with ``k = 0`` and no subspace columns.
        layers: the same measures summed exactly over each block's parameters (``layer``; ``-1``:
            the parameters outside the blocks).
        model: the same over every parameter read, one row per (run, step, k).
        spectrum: ``V``'s top singular values per matrix (``sigma``, ``energy``, ``cum_energy``).
        metrics: the history's evaluation table (harm, task accuracy...), if it has one.
        config, provenance: the settings, the checkpoints read (kind full / adapter), bytes read,
            seconds and GB/s.

    Figures: :meth:`heatmap`, :meth:`trajectories`, :meth:`subspaces`, :meth:`spectrum_figure`;
    numbers: :meth:`headline` (dict), :meth:`summary` (DataFrame).
    """

    FORMAT = "revlens-weights/1"
    META = "weights.json"

    def __init__(
        self,
        *,
        table: pd.DataFrame,
        layers: pd.DataFrame,
        model: pd.DataFrame,
        spectrum: pd.DataFrame,
        config: Mapping[str, Any],
        provenance: Mapping[str, Any],
        metrics: pd.DataFrame | None = None,
    ) -> None:
        self.table, self.layers, self.model, self.spectrum = table, layers, model, spectrum
        self.config, self.provenance = dict(config), dict(provenance)
        self.metrics = metrics

    # ------------------------------------------------------------------ views
    @property
    def runs(self) -> list[str]:
        """Run names, in table order."""
        return list(dict.fromkeys(self.model["run"]))

    @property
    def ks(self) -> list[int]:
        """The ranks measured (those some parameter was large enough for)."""
        return sorted(int(k) for k in self.model["k"].unique() if k > 0)

    def _k(self, k: int | None) -> int:
        ks = self.ks
        if not ks:
            raise ConfigError("no parameter was large enough for a singular subspace (k)")
        if k is None:
            return ks[-1]
        if k not in ks:
            raise ConfigError(f"k={k} was not measured; measured: {ks}")
        return int(k)

    @no_type_check  # validates its own arguments (typed errors)
    def headline(self, *, k: int | None = None, side: WeightSide = "left") -> dict[str, Any]:
        """Model-level numbers per run group (``runs``, ``control``, other kinds such as
        ``blocked``): at each run's final step ``revert``, ``cos``, ``frac_<side>`` at ``k``
        (default: the largest k) and its random-subspace null; over all steps, how many run-step
        pairs lie above the isotropic p99 (cos) and above the random-subspace p99 (fraction), and
        how many (run, step, block) cells of :attr:`layers` lie above their isotropic p99."""
        if side not in ("left", "right", "both"):
            raise ConfigError(f"side must be 'left', 'right' or 'both', got {side!r}")
        k = self._k(k)
        model = self.model[self.model["k"] == k]
        layers = self.layers[(self.layers["layer"] >= 0)].drop_duplicates(["run", "step", "layer"])
        out: dict[str, Any] = {"k": k, "side": side, "groups": {}}
        for group, df in _groups(model).items():
            fin = _final(df)
            cells = layers[layers["run"].isin(set(df["run"]))]
            out["groups"][group] = {
                "n_runs": int(df["run"].nunique()),
                "revert_final": mean_std(fin["revert"]),
                "cos_final": mean_std(fin["cos"]),
                "frac_final": mean_std(fin[f"frac_{side}"]),
                "rand_mean_final": mean_std(fin[f"rand_{side}_mean"]),
                "rand_p99_final": mean_std(fin[f"rand_{side}_p99"]),
                "chance": float(fin[f"chance_{side}"].mean()),
                "above_iso_p99": {
                    "count": int((df["cos"] > df["null_iso_p99"]).sum()),
                    "total": len(df),
                },
                "above_rand_p99": {
                    "count": int((df[f"frac_{side}"] > df[f"rand_{side}_p99"]).sum()),
                    "total": len(df),
                },
                "layer_cells_above_iso_p99": {
                    "count": int((cells["cos"] > cells["null_iso_p99"]).sum()),
                    "total": len(cells),
                },
            }
        return out

    @no_type_check  # validates its own arguments (typed errors)
    def summary(self, *, k: int | None = None, side: WeightSide = "left") -> pd.DataFrame:
        """:meth:`headline` as a table: one row per quantity, one column per run group."""
        h = self.headline(k=k, side=side)
        names = {
            "revert_final": "reverted fraction −⟨ΔW,V⟩/‖V‖² at the final step",
            "cos_final": "cos(ΔW, −V) at the final step",
            "frac_final": f"share of ‖ΔW‖² in V's top-{h['k']} {side} subspace (final)",
            "rand_mean_final": "… random subspaces of the same rank: mean",
            "rand_p99_final": "… random subspaces of the same rank: p99",
            "above_iso_p99": "run-step pairs with cos above the isotropic p99",
            "above_rand_p99": "run-step pairs with the share above the random-subspace p99",
            "layer_cells_above_iso_p99": "(run, step, block) cells with cos above the isotropic p99",
        }
        rows = []
        for key, label in names.items():
            row = {"quantity": label}
            for group, block in h["groups"].items():
                v = block[key]
                row[group] = f"{v['count']} / {v['total']}" if "count" in v else format_mean_std(v)
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        prov = self.provenance
        lines = [
            f"WeightReport(runs {self.runs}, {self.config.get('n_params')} parameters, ks {self.ks}, "
            f"{prov.get('bytes_read', 0) / 1e6:.1f} MB read in {prov.get('seconds', math.nan):.1f} s"
        ]
        try:
            h = self.headline()
        except (ConfigError, KeyError, ValueError):
            return lines[0] + ")"
        for group, b in h["groups"].items():
            lines.append(
                f"       {group}: revert {format_mean_std(b['revert_final'])}, cos "
                f"{format_mean_std(b['cos_final'])}, above iso p99 {b['above_iso_p99']['count']}/"
                f"{b['above_iso_p99']['total']} (final step; model level)"
            )
        return "\n".join(lines) + ")"

    # ------------------------------------------------------------------ figures
    def heatmap(self, measure: str = "revert", **kw: Any) -> Any:
        """Layer × step heatmaps per module type (:func:`revlens.plot.weights_heatmap`)."""
        from revlens.plot import weights_heatmap

        return weights_heatmap(self.table, layers=self.layers, measure=measure, **kw)

    def trajectories(self, measure: str = "revert", **kw: Any) -> Any:
        """A model-level measure against step, per run, beside its null (:func:`revlens.plot.weights_trajectories`)."""
        from revlens.plot import weights_trajectories

        return weights_trajectories(self.model, measure=measure, **kw)

    @no_type_check  # validates its own arguments (typed errors)
    def subspaces(self, side: WeightSide = "left", **kw: Any) -> Any:
        """Share of ‖ΔW‖² in V's top-k subspaces vs random ones (:func:`revlens.plot.weights_subspaces`)."""
        from revlens.plot import weights_subspaces

        return weights_subspaces(self.model, side=side, **kw)

    def spectrum_figure(self, **kw: Any) -> Any:
        """How low-rank V is, per module type (:func:`revlens.plot.weights_spectrum`)."""
        from revlens.plot import weights_spectrum

        return weights_spectrum(self.spectrum, **kw)

    def _main_figure(self) -> Any:
        return self.heatmap()

    # ------------------------------------------------------------------ persistence
    def _write(self, d: Path) -> dict[str, Any]:
        for attr in _FRAMES:
            frame = getattr(self, attr)
            write_frame(frame, d / f"{_FILES[attr]}.json")
            frame.to_csv(d / f"{_FILES[attr]}.csv", index=False)
        if self.metrics is not None:
            write_frame(self.metrics, d / "metrics.json")
        return {
            "config": self.config,
            "provenance": self.provenance,
            "metrics": self.metrics is not None,
        }

    def write_into(self, d: Path) -> None:
        """Write into an existing directory of an enclosing result (its manifest covers the files)."""
        from revlens._io import write_json

        d.mkdir(parents=True, exist_ok=True)
        write_json(d / self.META, {"format": self.FORMAT, **self._write(d)})

    @classmethod
    def read_from(cls, d: Path) -> "WeightReport":
        """Inverse of :meth:`write_into` (the enclosing result checked the manifest)."""
        from revlens._io import read_json

        meta = read_json(d / cls.META, "saved WeightReport")
        if meta.get("format") != cls.FORMAT:
            raise ConfigError(
                f"{d / cls.META} has format {meta.get('format')!r}; expected {cls.FORMAT!r}"
            )
        return cls._read(d, meta)

    @classmethod
    def _read(cls, d: Path, meta: dict[str, Any]) -> "WeightReport":
        frames = {attr: read_frame(d / f"{_FILES[attr]}.json") for attr in _FRAMES}
        return cls(
            **frames,
            config=meta["config"],
            provenance=meta["provenance"],
            metrics=read_frame(d / "metrics.json") if meta.get("metrics") else None,
        )
