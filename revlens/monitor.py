"""Watch a fine-tune for reversion while it runs, and warn (DESIGN.md §2, *Monitoring*).

Every ``every`` optimizer steps, :class:`ReversionMonitor` reads the probe-set mean residual of
the model being trained (no grad, eval mode, train mode restored), measures the drift's alignment
``cos(μ_l(θ_t) − μ_l(aligned), v_l)`` per layer, and emits a :class:`ReversionWarning` when a
layer's cos stays above the threshold (default: the isotropic null's p99, exact: for ``u``
uniform on the sphere in R^d, ``(cos(u, v) + 1)/2 ~ Beta((d−1)/2, (d−1)/2)``) for ``patience``
consecutive checks.

It plugs into a plain loop (``monitor.step(model, step)``) and ``transformers.Trainer``
(``callbacks=[monitor.as_trainer_callback()]``; with ``stop=True`` it stops the run). The
measured trajectory is :attr:`ReversionMonitor.history_`; :meth:`ReversionMonitor.trajectory`
draws it against the null.

Example:
    >>> monitor = ReversionMonitor(directions, probes, aligned_dir, every=10)   # doctest: +SKIP
    >>> for step in range(1, 101):                                               # doctest: +SKIP
    ...     train_one_step(model)
    ...     monitor.step(model, step)
    >>> monitor.history_.groupby("layer").cos.max()                              # doctest: +SKIP
"""

import warnings
from typing import Any, no_type_check

import pandas as pd
import torch

from revlens._config import as_int
from revlens.block.inputs import ProbeInputs
from revlens.errors import ConfigError
from revlens.modes import SITE_KINDS, check_mode
from revlens.nulls import isotropic_quantile

__all__ = ["ReversionMonitor", "ReversionWarning"]


def _check_metrics(metrics: Any) -> dict[str, Any]:
    """``metrics`` as name -> metric (KL needs a reference the monitor does not have)."""
    from revlens.metrics import KLTo, is_model_metric, metric_name

    if metrics is None:
        return {}
    items = dict(metrics) if isinstance(metrics, dict) else {metric_name(m): m for m in metrics}
    for name, m in items.items():
        if not callable(m) and not is_model_metric(m):
            raise ConfigError(f"monitor metric {name!r} is neither a logits metric nor a model metric")
        if isinstance(m, KLTo) and m.needs_reference:
            raise ConfigError(f"monitor metric {name!r}: kl_to() needs reference logits here (kl_to(reference))")
    return items


class ReversionWarning(UserWarning):
    """A fine-tune's drift has stayed aligned with the reversion direction beyond the null."""


class ReversionMonitor(ProbeInputs):
    """Measure reversion alignment every ``every`` steps and warn when it persists.

    Args:
        directions, probes, reference: as for :class:`~revlens.block.ReversionBlocker`.
        every: check every k optimizer steps (>= 1).
        layers: monitored layers (default: every layer of ``directions``).
        patience: consecutive checks above the threshold before warning (>= 1).
        threshold: ``"p99"`` (the isotropic null's exact p99 for the model's d) or a cos value.
        stop: ask a ``Trainer`` to stop once warned (``control.should_training_stop``); in a plain
            loop read :attr:`should_stop_`.
        tokenizer: tokenizer for text probes (default: the reference's).
        metrics: behaviour metrics measured at every check too: name -> a logits metric or a model
            metric (e.g. ``{"refusal": refusal_rate()}``, generation-based), on ``metric_probes``.
        metric_probes: the prompts the metrics read (a :class:`~revlens.Probes` / list; default:
            ``probes``).

    Attributes:
        history_: DataFrame ``step, layer, cos, proj, null_p99`` of every check.
        metrics_: DataFrame ``step, metric, value`` of the behaviour metrics at every check.
        alerts_: ``(step, layer, cos)`` of each warning emitted.
        should_stop_: ``True`` once warned with ``stop=True``.
    """

    @no_type_check  # validates its own arguments (typed errors)
    def __init__(
        self,
        directions: Any,
        probes: Any,
        reference: Any,
        *,
        every: int = 10,
        layers: Any = None,
        patience: int = 2,
        threshold: str | float = "p99",
        stop: bool = False,
        tokenizer: Any = None,
        directions_layers: Any = None,
        batch_size: int = 256,
        site: str = "resid_post",
        metrics: Any = None,
        metric_probes: Any = None,
    ) -> None:
        every = as_int("every", every, min=1)
        patience = as_int("patience", patience, min=1)
        batch_size = as_int("batch_size", batch_size, min=1)
        check_mode("site", site, SITE_KINDS)
        if isinstance(threshold, str):
            if threshold != "p99":
                raise ConfigError(
                    f"threshold must be 'p99' or a float in (-1, 1), got {threshold!r}"
                )
        elif not -1.0 < float(threshold) < 1.0:
            raise ConfigError(f"threshold must be 'p99' or a float in (-1, 1), got {threshold!r}")
        self._store_inputs(directions, probes, reference, layers=layers, tokenizer=tokenizer,
                           directions_layers=directions_layers, site=site)
        self.every, self.patience, self.threshold, self.stop, self.batch_size = every, patience, threshold, stop, batch_size
        self._rows: list[dict[str, Any]] = []
        self._metric_rows: list[dict[str, Any]] = []
        self.behaviour_metrics = _check_metrics(metrics)
        self.metric_probes = metric_probes
        self.alerts_: list[tuple[int, int, float]] = []
        self.should_stop_ = False
        self._model_id: int | None = None

    def prepare(self, model: Any) -> "ReversionMonitor":
        """Validate inputs against ``model`` (called on the first check)."""
        reader, res = self.resolve(model)
        self.reader_, self.inputs_ = reader, res
        self.null_p99_ = isotropic_quantile(reader.d_model, 0.99)
        self.threshold_ = self.null_p99_ if self.threshold == "p99" else float(self.threshold)
        self._streak = {layer: 0 for layer in res.layers}
        self._model_id = id(model)
        if self.behaviour_metrics:
            from revlens.block.inputs import _tokenize, _tokenizer_of
            from revlens.metrics import bind_metric

            tok = self.tokenizer or _tokenizer_of(model) or _tokenizer_of(self.reference)
            probes = self.metric_probes if self.metric_probes is not None else self.probes
            self.metric_inputs_ = _tokenize(probes, tok, reader)
            for m in self.behaviour_metrics.values():
                bind_metric(m, tok, vocab_size=reader.vocab_size)
        return self

    def measure_metrics(self, model: Any) -> dict[str, float]:
        """The behaviour metrics now (mean over ``metric_probes``), in eval mode, no grad."""
        if self._model_id != id(model):
            self.prepare(model)
        from revlens.metrics import metric_values

        module = self.reader_.module
        was_training = module.training
        sums = dict.fromkeys(self.behaviour_metrics, 0.0)
        try:
            module.eval()
            with torch.no_grad():
                for batch in self.metric_inputs_.batches(self.batch_size):
                    for name, m in self.behaviour_metrics.items():
                        sums[name] += float(metric_values(m, model, batch.to(self.reader_.device)).sum())
        finally:
            module.train(was_training)
        return {k: v / len(self.metric_inputs_) for k, v in sums.items()}

    def measure(self, model: Any) -> pd.DataFrame:
        """One check now (not recorded): ``layer, cos, proj, norm`` per monitored layer."""
        if self._model_id != id(model):
            self.prepare(model)
        res = self.inputs_
        with torch.no_grad():
            chunks = [
                torch.stack(self.reader_.read(res.tokens[sl], res.weights[sl], res.sites, mask=res.mask[sl]), dim=1)
                .double()
                .sum(0)
                .cpu()
                for sl in (
                    slice(i, i + self.batch_size)
                    for i in range(0, res.tokens.shape[0], self.batch_size)
                )
            ]
        mu = torch.stack(chunks).sum(0) / res.tokens.shape[0]
        drift = mu - res.ref_mean
        v = res.vectors.cpu().double()
        proj = (drift * v).sum(-1)
        norm = drift.norm(dim=-1)
        cos = torch.where(norm > 0, proj / norm.clamp_min(1e-300), torch.zeros_like(proj))
        return pd.DataFrame(
            {"layer": res.layers, "cos": cos.tolist(), "proj": proj.tolist(), "norm": norm.tolist()}
        )

    def step(self, model: Any, step: int) -> pd.DataFrame | None:
        """In a plain loop: call after each optimizer step; checks when ``step % every == 0``.

        Returns the check's rows, or ``None`` when no check was due.
        """
        if step % self.every != 0:
            return None
        table = self.measure(model)
        if self.behaviour_metrics:
            self._metric_rows += [{"step": int(step), "metric": k, "value": v}
                                  for k, v in self.measure_metrics(model).items()]
        table.insert(0, "step", int(step))
        table["null_p99"] = self.null_p99_
        self._rows.extend(table.to_dict("records"))
        for row in table.itertuples():
            layer = int(row.layer)
            self._streak[layer] = self._streak[layer] + 1 if row.cos > self.threshold_ else 0
            if self._streak[layer] == self.patience:
                self.alerts_.append((int(step), layer, float(row.cos)))
                if self.stop:
                    self.should_stop_ = True
                warnings.warn(
                    f"reversion at step {step}: cos(drift, v) at layer {layer} is {row.cos:.3f}, above the "
                    f"threshold {self.threshold_:.3f} ({'isotropic null p99' if self.threshold == 'p99' else 'given'}) "
                    f"for {self.patience} consecutive checks (every {self.every} steps)",
                    ReversionWarning,
                    stacklevel=2,
                )
        return table

    @property
    def history_(self) -> pd.DataFrame:
        """Every check so far: ``step, layer, cos, proj, norm, null_p99``."""
        return pd.DataFrame(
            self._rows, columns=["step", "layer", "cos", "proj", "norm", "null_p99"]
        )

    @property
    def metrics_(self) -> pd.DataFrame:
        """The behaviour metrics of every check: ``step, metric, value``."""
        return pd.DataFrame(self._metric_rows, columns=["step", "metric", "value"])

    def trajectory(self, *, title: str | None = "reversion monitor: cos(drift, v) per check") -> Any:
        """cos(drift, v) of every check per layer, with the threshold and the alerts (plotly)."""
        from revlens.plot import monitor_figure

        return monitor_figure(self.history_, threshold=getattr(self, "threshold_", None),
                              alerts=self.alerts_, title=title)

    def _ipython_display_(self) -> None:  # pragma: no cover - exercised in the notebooks
        from IPython.display import display

        display(repr(self))
        if self._rows:
            display(self.trajectory())

    def reset(self) -> None:
        """Forget the trajectory, alerts and streaks (keep the validated inputs)."""
        self._rows, self._metric_rows, self.alerts_, self.should_stop_ = [], [], [], False
        if hasattr(self, "_streak"):
            self._streak = {k: 0 for k in self._streak}

    def as_trainer_callback(self) -> Any:
        """A ``transformers.TrainerCallback`` that checks on ``on_step_end`` (``state.global_step``)."""
        from transformers import TrainerCallback

        monitor = self

        class ReversionMonitorCallback(TrainerCallback):
            """Runs a :class:`ReversionMonitor` inside ``Trainer.train``."""

            def on_step_end(
                self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
            ) -> Any:
                monitor.step(model, int(state.global_step))
                if monitor.should_stop_:
                    control.should_training_stop = True
                return control

        return ReversionMonitorCallback()

    def __repr__(self) -> str:
        checks = len({r["step"] for r in self._rows})
        return (f"ReversionMonitor(every={self.every}, patience={self.patience}, threshold={self.threshold!r}, "
                f"checks={checks}, alerts={len(self.alerts_)})")
