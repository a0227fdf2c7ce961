"""The result of :func:`revlens.evaluate`: a tidy table per checkpoint, per-prompt values, responses."""

from pathlib import Path
from typing import Any

import pandas as pd

from revlens._frames import read_frame, write_frame
from revlens._result import Result
from revlens.errors import ConfigError

__all__ = ["Evaluation"]


class Evaluation(Result):
    """Behaviour metrics of every evaluated checkpoint of a history.

    Attributes:
        table: one row per checkpoint: ``checkpoint, role, run, kind, step, <metric>...`` (the
            shape of a history's metrics table; mean over the prompts of the metric's set), which
            :meth:`revlens.Report.with_metrics` / ``analyze(..., evaluation=...)`` join into a
            report beside the drift.
        per_prompt: one row per (checkpoint, metric, prompt): ``checkpoint, metric, set, index,
            prompt, value``.
        responses: the greedy responses generation metrics judged: ``checkpoint, set, index,
            prompt, max_new_tokens, response``.
        config: metric names, their sets and settings; provenance: prompts' template, model.
    """

    FORMAT = "revlens-evaluation/1"
    META = "evaluation.json"

    def __init__(
        self,
        *,
        table: pd.DataFrame,
        per_prompt: pd.DataFrame,
        responses: pd.DataFrame,
        config: dict[str, Any],
        provenance: dict[str, Any],
    ) -> None:
        self.table, self.per_prompt, self.responses = table, per_prompt, responses
        self.config, self.provenance = dict(config), dict(provenance)

    @property
    def metrics(self) -> list[str]:
        """The metric columns, in evaluation order."""
        return list(self.config.get("metrics", {}))

    def agreement(self, a: str, b: str, *, threshold: float = 0.5) -> pd.DataFrame:
        """Per checkpoint, the share of prompts on which metrics ``a`` and ``b`` agree after
        thresholding both at ``threshold`` (e.g. a generation-based harm rate against a logit-based
        one), and the overall share in the last row (``checkpoint == "all"``).

        Raises:
            ConfigError: a metric not evaluated, or the two were scored on different prompts.
        """
        for m in (a, b):
            if m not in self.metrics:
                raise ConfigError(f"metric {m!r} was not evaluated; metrics: {self.metrics}")
        pp = self.per_prompt
        left = pp[pp["metric"] == a].set_index(["checkpoint", "set", "index"])["value"]
        right = pp[pp["metric"] == b].set_index(["checkpoint", "set", "index"])["value"]
        if not left.index.equals(right.index):
            raise ConfigError(
                f"metrics {a!r} and {b!r} were scored on different prompts; agreement needs the same"
            )
        same = ((left > threshold) == (right > threshold)).rename("agree").reset_index()
        out = same.groupby("checkpoint", sort=False)["agree"].agg(["mean", "size"]).reset_index()
        out = out.rename(columns={"mean": "agreement", "size": "n_prompts"})
        total = pd.DataFrame(
            [
                {
                    "checkpoint": "all",
                    "agreement": float(same["agree"].mean()),
                    "n_prompts": len(same),
                }
            ]
        )
        return pd.concat([out, total], ignore_index=True)

    def __repr__(self) -> str:
        sets = sorted({str(v.get("set")) for v in self.config.get("metrics", {}).values()})
        return (
            f"Evaluation({len(self.table)} checkpoints, metrics {self.metrics}, prompt sets {sets}, "
            f"{len(self.responses)} responses kept)"
        )

    # ------------------------------------------------------------------ figures
    def behaviour(self, **kw: Any) -> Any:
        """The metrics against step, one line per run (:func:`revlens.plot.metrics_figure`)."""
        from revlens.plot import metrics_figure

        return metrics_figure(self.table, **kw)

    def _main_figure(self) -> Any:
        return self.behaviour() if self.table["run"].notna().any() else None

    # ------------------------------------------------------------------ persistence
    def _write(self, d: Path) -> dict[str, Any]:
        for name in ("table", "per_prompt", "responses"):
            write_frame(getattr(self, name), d / f"{name}.json")
        self.table.to_csv(d / "table.csv", index=False)
        return {"config": self.config, "provenance": self.provenance}

    @classmethod
    def _read(cls, d: Path, meta: dict[str, Any]) -> "Evaluation":
        return cls(
            table=read_frame(d / "table.json"),
            per_prompt=read_frame(d / "per_prompt.json"),
            responses=read_frame(d / "responses.json"),
            config=meta["config"],
            provenance=meta["provenance"],
        )
