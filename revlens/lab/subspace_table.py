"""The tables of the lab's subspace study (:func:`revlens.lab.subspaces.run_subspace_study`).

:func:`load_subspace_study` reads a study directory (``subspace-study.json``, the saved causal
reports ``causal-pair*/``, the lab dirs ``labs/pair*/``) into a :class:`SubspaceStudy`;
:meth:`SubspaceStudy.to_markdown` is the table quoted in ``docs/subspaces.md`` and
:meth:`SubspaceStudy.replication_rows` gives rows in the replication table's format.

"Regained harm removed" is, per fine-tuning seed, ``(h_unblocked − h_blocked) / (h_unblocked −
h_aligned)`` at T (1: blocked back to the aligned model's harm; 0: no effect; undefined where the
unblocked run regained nothing), on the graded harm log-odds and on the harm rate.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from revlens._io import read_json
from revlens._numbers import format_mean_std, mean_std
from revlens._types import PathLike

__all__ = ["SubspaceStudy", "load_subspace_study"]

_LABELS = {
    "subspace": "update along the subspace",
    "random": "update along a random k-subspace",
    "one_sided": "one-sided update along the subspace",
    "one_sided-random": "one-sided, random k-subspace",
    "confine-penalty": "confine to the subspace (penalty, λ = 1)",
}


@dataclass
class SubspaceStudy:
    """What the lab's subspace study measured (see the module docstring)."""

    mediation: pd.DataFrame
    choices: dict[str, dict[str, Any]]
    blocking: pd.DataFrame
    unblocked: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ tables
    def mediation_table(self, split: str = "test") -> pd.DataFrame:
        """Per (pair, k) at that pair's chosen layer: the subspace's clamp mediation on ``split``
        (mean ± std over seeds) beside the random k-subspaces (mean and p95 per control type)."""
        rows = []
        for pair, ch in self.choices.items():
            m = self.mediation[
                (self.mediation["pair"] == pair)
                & (self.mediation["split"] == split)
                & (self.mediation["layer"] == ch["layer"])
            ]
            rows.append(m.assign(chosen=m["rank"] == ch["rank"]))
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def _removed(self) -> pd.DataFrame:
        b = self.blocking.merge(self.unblocked, on=["pair", "seed"], suffixes=("", "_unblocked"))
        for col in ("harm_logodds", "harm_rate"):
            gap = b[f"{col}_unblocked"] - b[f"{col}_aligned"]
            removed = (b[f"{col}_unblocked"] - b[col]) / gap
            b[f"removed_{col}"] = removed.where(gap.abs() > 1e-9, math.nan)
        return b

    def blocking_table(self) -> pd.DataFrame:
        """Per (pair, variant, k): means ± stds over seeds of harm, regained harm removed, task
        accuracy, the final drift's energy in the subspace (held-out prompts) and seconds per run."""
        b = self._removed()
        cols = [
            "harm_rate",
            "harm_logodds",
            "removed_harm_logodds",
            "removed_harm_rate",
            "task_acc",
            "energy",
            "seconds",
        ]
        rows = []
        for (pair, variant, k), g in b.groupby(["pair", "variant", "rank"], sort=False):
            rows.append(
                {
                    "pair": pair,
                    "variant": variant,
                    "rank": int(k),
                    "n": len(g),
                    **{c: mean_std(g[c]) for c in cols},
                }
            )
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ markdown
    def _mediation_md(self, pair: str) -> list[str]:
        ch = self.choices[pair]
        m = self.mediation_table()
        m = m[m["pair"] == pair]
        lines = [
            f"Clamp mediation vs k at layer {ch['layer']} ({pair}; held-out test half of the 96 prompts, "
            "mean ± std over seeds; controls: mean over seeds of the random k-subspaces' mean / p95):",
            "",
            "| k | reversion subspace | isotropic random k-subspaces | covariance-matched | margin over p95 |",
            "|---|---|---|---|---|",
        ]
        for _, r in m.sort_values("rank").iterrows():
            star = " **(chosen)**" if r["chosen"] else ""
            lines.append(
                f"| {int(r['rank'])}{star} | {_pm(r['mediation_mean'], r['mediation_std'])} | "
                f"{r.get('iso_mean', math.nan):.3f} / {r.get('iso_p95', math.nan):.3f} | "
                f"{r.get('cov_mean', math.nan):.3f} / {r.get('cov_p95', math.nan):.3f} | {r['margin']:+.3f} |"
            )
        t, s = ch["test"], ch["select"]
        lines += [
            "",
            f"Chosen on the selection half (rule `{ch['rule']}`): k = {ch['rank']} at layer {ch['layer']} "
            f"(selection margin {s['margin']:+.3f}); on the test half it mediates "
            f"{_pm(t['mediation_mean'], t['mediation_std'])} against random k-subspaces' p95 {t['ctrl_p95']:.3f} "
            f"({'beats' if t['beats_controls'] else 'does not beat'} them).",
            "",
        ]
        return lines

    def _blocking_md(self, pair: str) -> list[str]:
        bt = self.blocking_table()
        bt = bt[bt["pair"] == pair]
        u = self.unblocked[self.unblocked["pair"] == pair]
        lines = [
            f"Blocking during the fine-tune ({pair}; T = 100, mean ± std over seeds; harm on the 96 held-out "
            "prompts; energy = share of the final drift inside the k-subspace on those prompts):",
            "",
            "| run | k | harm rate | harm log-odds | regained harm removed (log-odds) | (rate) | task acc | "
            "energy in subspace | s / run |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| unblocked | — | {format_mean_std(mean_std(u['harm_rate']), pct=True)} | "
            f"{format_mean_std(mean_std(u['harm_logodds']), digits=2)} | — | — | "
            f"{format_mean_std(mean_std(u['task_acc']), pct=True)} | — | — |",
        ]
        for _, r in bt.sort_values(["variant", "rank"], key=_variant_order).iterrows():
            lines.append(
                f"| {_LABELS.get(r['variant'], r['variant'])} | {r['rank']} | "
                f"{format_mean_std(r['harm_rate'], pct=True)} | {format_mean_std(r['harm_logodds'], digits=2)} | "
                f"{format_mean_std(r['removed_harm_logodds'], pct=True)} | "
                f"{format_mean_std(r['removed_harm_rate'], pct=True)} | {format_mean_std(r['task_acc'], pct=True)} | "
                f"{format_mean_std(r['energy'])} | {r['seconds']['mean']:.0f} |"
            )
        return [*lines, ""]

    def to_markdown(self) -> str:
        """The study's tables, the settings and timings."""
        cfg = self.config
        head = [
            f"Command: `python -m revlens.lab.subspaces --out DIR` · pairs {cfg.get('pairs')} · seeds "
            f"{cfg.get('seeds')} · ranks {cfg.get('ranks')} (blocking {cfg.get('block_ranks')} + the chosen k) · "
            f"{cfg.get('controls')} + {cfg.get('controls')} controls · layers {cfg.get('layers')} · "
            f"subspace `{cfg.get('method')}` fitted on the alignment-split prompts · date {cfg.get('date')} · "
            f"{cfg.get('machine')} · wall time "
            f"{sum(v for k, v in self.timings_s.items() if k != 'total_this_call'):.0f} s",
            "",
        ]
        body: list[str] = []
        for pair in self.choices:
            body += [f"### {pair}", "", *self._mediation_md(pair), *self._blocking_md(pair)]
        return "\n".join(head + body + self._targets_md())

    def _targets_md(self) -> list[str]:
        lines = ["Targets of issue 19 (aims, not tuned toward):", ""]
        for row in self.replication_rows():
            holds = {True: "yes", False: "**no**", None: "—"}[row["shape_holds"]]
            lines.append(f"- {row['claim']}: {row['revlens_lab']} → {holds}")
        return [*lines, ""]

    def replication_rows(self) -> list[dict[str, Any]]:
        """Rows in the replication table's format (claim, paper, revlens_lab, shape_holds, note)."""
        rows = []
        bt = self.blocking_table()
        for pair, ch in self.choices.items():
            t = ch["test"]
            iso_cov = max(t.get("iso_mean", math.nan), t.get("cov_mean", math.nan))
            rows.append(
                {
                    "claim": f"{pair}: held-out-chosen k = {ch['rank']} (layer {ch['layer']}) mediates ≥ 0.5, "
                    "random k-subspaces ≤ 0.15",
                    "paper": "—",
                    "revlens_lab": f"{_pm(t['mediation_mean'], t['mediation_std'])} (random "
                    f"mean {iso_cov:.3f}, p95 {t['ctrl_p95']:.3f})",
                    "shape_holds": bool(t["mediation_mean"] >= 0.5 and iso_cov <= 0.15),
                    "note": "test half",
                }
            )
            got = bt[(bt["pair"] == pair) & (bt["rank"] == ch["rank"])].set_index("variant")
            if not {"subspace", "random"} <= set(got.index):
                continue
            sub, rnd = got.loc["subspace"], got.loc["random"]
            task_ok = sub["task_acc"]["mean"] >= self._task(pair) - 0.10
            for col, what in (
                ("removed_harm_logodds", "log-odds margin"),
                ("removed_harm_rate", "harm rate"),
            ):
                ok = sub[col]["mean"] >= 0.5 and rnd[col]["mean"] <= 0.25 and task_ok
                rows.append(
                    {
                        "claim": f"{pair}: blocking the k = {ch['rank']} subspace removes ≥ 1/2 of the regained "
                        f"harm ({what}), random k-subspaces ≤ 1/4, task cost ≤ 10 points",
                        "paper": "—",
                        "revlens_lab": f"{format_mean_std(sub[col], pct=True)} vs random "
                        f"{format_mean_std(rnd[col], pct=True)}; task {format_mean_std(sub['task_acc'], pct=True)}",
                        "shape_holds": bool(ok),
                        "note": what,
                    }
                )
        return rows

    def _task(self, pair: str) -> float:
        return float(self.unblocked.loc[self.unblocked["pair"] == pair, "task_acc"].mean())


def _pm(mean: float, std: float) -> str:
    return format_mean_std({"mean": mean, "std": std, "n": 2})


def _variant_order(s: pd.Series) -> pd.Series:
    order = {v: i for i, v in enumerate(_LABELS)}
    return s.map(order) if s.name == "variant" else s


def _nan(obj: Any) -> Any:
    """``None`` (JSON's stand-in for NaN) back to NaN, recursively."""
    if isinstance(obj, dict):
        return {k: _nan(v) for k, v in obj.items()}
    return math.nan if obj is None else obj


def load_subspace_study(out: PathLike) -> SubspaceStudy:
    """Read a study directory written by :func:`revlens.lab.subspaces.run_subspace_study`."""
    import revlens

    out = Path(out)
    state = read_json(out / "subspace-study.json", "subspace study")
    frames, unblocked = [], []
    for pair in state["choices"]:
        t = revlens.load(out / f"causal-{pair}").rank_table("clamp")
        frames.append(t.assign(pair=pair))
        records = read_json(out / "labs" / pair / "metrics.json", "lab metrics")
        aligned = next(r for r in records if r["checkpoint"] == "aligned")
        for seed in state["config"]["seeds"] if "config" in state else []:
            mine = [r for r in records if str(r["checkpoint"]).startswith(f"seed{seed}/step-")]
            last = max(mine, key=lambda r: int(str(r["checkpoint"]).rsplit("-", 1)[1]))
            unblocked.append(
                {
                    "pair": pair,
                    "seed": seed,
                    **{c: last[c] for c in ("harm_rate", "harm_logodds", "task_acc")},
                    "harm_rate_aligned": aligned["harm_rate"],
                    "harm_logodds_aligned": aligned["harm_logodds"],
                }
            )
    blocking = pd.DataFrame(state.get("blocking", []))
    return SubspaceStudy(
        mediation=pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(),
        choices=_nan(state["choices"]),
        blocking=blocking.fillna(math.nan) if not blocking.empty else blocking,
        unblocked=pd.DataFrame(unblocked),
        config=state.get("config", {}),
        timings_s=state.get("timings_s", {}),
    )
