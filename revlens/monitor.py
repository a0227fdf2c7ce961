"""Watch a fine-tune for reversion while it runs, and warn (DESIGN.md §2, *Monitoring*).

Every ``every`` optimizer steps, :class:`ReversionMonitor` reads the probe-set mean residual of
the model being trained (no grad, eval mode, train mode restored), measures the drift's alignment
``cos(μ_l(θ_t) − μ_l(aligned), v_l)`` per layer, and emits a :class:`ReversionWarning` when a
layer's cos stays above the threshold (default: the isotropic null's p99, exact: for ``u``
uniform on the sphere in R^d, ``(cos(u, v) + 1)/2 ~ Beta((d−1)/2, (d−1)/2)``) for ``patience``
consecutive checks.

**Cost.** A check is one forward of the probe prompts (read up to the deepest monitored layer, the
rest of the model skipped). On the lab (AdamW, batch 32) a check of all 192 prompts costs about
two training steps, 18 % at ``every=10``. By default (``probe_batch_size="auto"``) each check
therefore reads a **rotating subset** of at most 64 prompts: a fixed seeded permutation of the
probe set, read 64 at a time, so every prompt is read equally often and ``ceil(N / 64)``
consecutive checks cover the set. The drift on a subset ``S`` is paired,
``mean_{i∈S}(h_t(x_i) − h_ref(x_i))`` when the reference has per-prompt activations (a model or
statistics that kept them), else ``mean_{i∈S} h_t(x_i) − μ_ref``; either is unbiased for the
full-set drift, with variance ``(1 − |S|/N) · s² / |S|`` (``s²``: the variance over prompts of the
paired difference, or of ``h_t``). :attr:`history_` reports each check's ``n_probes`` and the
projection's standard error ``proj_se`` (that formula along ``v``); ``patience`` consecutive checks
above the threshold are required before a warning, so one noisy check does not warn.
``probe_batch_size=None`` reads every prompt at every check (exact, as in revlens 0.1).

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
from collections.abc import Mapping, Sequence
from typing import Any, no_type_check

import pandas as pd
import torch
from torch import Tensor

from revlens._config import as_int
from revlens._types import ModuleLike, TokenizerInput
from revlens.block.inputs import DirectionsInput, ProbeInputs, ProbesArg, ReferenceInput
from revlens.errors import ConfigError
from revlens.metrics import MetricLike
from revlens.modes import SITE_KINDS, check_mode
from revlens.nulls import isotropic_quantile
from revlens.sites import LayerSpec

__all__ = ["AUTO_PROBES", "ReversionMonitor", "ReversionWarning"]

AUTO_PROBES = 64
"""Most prompts one check reads with ``probe_batch_size="auto"`` (the rotating subset)."""


def _check_metrics(metrics: Any) -> dict[str, Any]:
    """``metrics`` as name -> metric (KL needs a reference the monitor does not have)."""
    from revlens.metrics import KLTo, is_model_metric, metric_name

    if metrics is None:
        return {}
    items = dict(metrics) if isinstance(metrics, dict) else {metric_name(m): m for m in metrics}
    for name, m in items.items():
        if not callable(m) and not is_model_metric(m):
            raise ConfigError(
                f"monitor metric {name!r} is neither a logits metric nor a model metric"
            )
        if isinstance(m, KLTo) and m.needs_reference:
            raise ConfigError(
                f"monitor metric {name!r}: kl_to() needs reference logits here (kl_to(reference))"
            )
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

        probe_batch_size: prompts read per check: ``"auto"`` (default: at most 64, rotating
            through the set), an int, or ``None`` (every prompt every check).
        seed: seed of the rotation order.

    Attributes:
        history_: DataFrame ``step, layer, cos, proj, norm, null_p99, n_probes, proj_se`` of every check.
        metrics_: DataFrame ``step, metric, value`` of the behaviour metrics at every check.
        alerts_: ``(step, layer, cos)`` of each warning emitted.
        should_stop_: ``True`` once warned with ``stop=True``.
    """

    @no_type_check  # validates its own arguments (typed errors)
    def __init__(
        self,
        directions: DirectionsInput,
        probes: ProbesArg,
        reference: ReferenceInput,
        *,
        every: int = 10,
        layers: LayerSpec = None,
        patience: int = 2,
        threshold: str | float = "p99",
        stop: bool = False,
        tokenizer: TokenizerInput | None = None,
        directions_layers: LayerSpec = None,
        batch_size: int = 256,
        site: str = "resid_post",
        metrics: Mapping[str, MetricLike] | Sequence[MetricLike] | None = None,
        metric_probes: ProbesArg | None = None,
        probe_batch_size: int | str | None = "auto",
        seed: int = 0,
    ) -> None:
        every = as_int("every", every, min=1)
        if probe_batch_size is not None and probe_batch_size != "auto":
            probe_batch_size = as_int("probe_batch_size", probe_batch_size, min=1)
        self.probe_batch_size, self.seed = probe_batch_size, as_int("seed", seed)
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
        self._store_inputs(
            directions,
            probes,
            reference,
            layers=layers,
            tokenizer=tokenizer,
            directions_layers=directions_layers,
            site=site,
        )
        self.every, self.patience, self.threshold, self.stop, self.batch_size = (
            every,
            patience,
            threshold,
            stop,
            batch_size,
        )
        self._rows: list[dict[str, Any]] = []
        self._metric_rows: list[dict[str, Any]] = []
        self.behaviour_metrics = _check_metrics(metrics)
        self.metric_probes = metric_probes
        self.alerts_: list[tuple[int, int, float]] = []
        self.should_stop_ = False
        self._model_id: int | None = None

    def prepare(self, model: ModuleLike) -> "ReversionMonitor":
        """Validate inputs against ``model`` (called on the first check)."""
        reader, res = self.resolve(model)
        self.reader_, self.inputs_ = reader, res
        self.null_p99_ = isotropic_quantile(reader.d_model, 0.99)
        self.threshold_ = self.null_p99_ if self.threshold == "p99" else float(self.threshold)
        self._streak = {layer: 0 for layer in res.layers}
        self._model_id = id(model)
        n = int(res.tokens.shape[0])
        size = min(n, AUTO_PROBES) if self.probe_batch_size == "auto" else self.probe_batch_size
        self.subset_size_ = n if size is None else min(int(size), n)
        self._order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        self._checks = 0
        if self.behaviour_metrics:
            from revlens.block.inputs import _tokenize, _tokenizer_of
            from revlens.metrics import bind_metric

            tok = self.tokenizer or _tokenizer_of(model) or _tokenizer_of(self.reference)
            probes = self.metric_probes if self.metric_probes is not None else self.probes
            self.metric_inputs_ = _tokenize(probes, tok, reader)
            for m in self.behaviour_metrics.values():
                bind_metric(m, tok, vocab_size=reader.vocab_size)
        return self

    def measure_metrics(self, model: ModuleLike) -> dict[str, float]:
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
                        sums[name] += float(
                            metric_values(m, model, batch.to(self.reader_.device)).sum()
                        )
        finally:
            module.train(was_training)
        return {k: v / len(self.metric_inputs_) for k, v in sums.items()}

    def next_subset(self) -> Tensor:
        """The prompt indices the next check reads (the rotation advances)."""
        n, k = len(self._order), self.subset_size_
        start = (self._checks * k) % n
        self._checks += 1
        return self._order[(torch.arange(k) + start) % n]

    def measure(self, model: ModuleLike, prompts: Tensor | None = None) -> pd.DataFrame:
        """One check now (not recorded) on ``prompts`` (indices; default every prompt):
        ``layer, cos, proj, norm, n_probes, proj_se`` per monitored layer."""
        if self._model_id != id(model):
            self.prepare(model)
        res = self.inputs_
        n_all = int(res.tokens.shape[0])
        idx = torch.arange(n_all) if prompts is None else prompts.to(torch.long)
        rows = []
        with torch.no_grad():
            for i in range(0, len(idx), self.batch_size):
                sl = idx[i : i + self.batch_size]
                width = int(
                    res.mask[sl].sum(1).max()
                )  # right padding: trailing columns are padding
                acts = self.reader_.read(
                    res.tokens[sl, :width],
                    res.weights[sl, :width],
                    res.sites,
                    mask=res.mask[sl, :width],
                )
                rows.append(torch.stack(acts, dim=1).double().cpu())
        h = torch.cat(rows)  # [subset, layer, d]
        v = res.vectors.cpu().double()
        paired = res.ref_prompt is not None and len(idx) < n_all
        diffs = h - res.ref_prompt[idx].double() if paired else h - res.ref_mean  # type: ignore[index]
        drift = diffs.mean(0)
        proj = (drift * v).sum(-1)
        norm = drift.norm(dim=-1)
        cos = torch.where(norm > 0, proj / norm.clamp_min(1e-300), torch.zeros_like(proj))
        k = len(idx)
        fpc = max(1.0 - k / n_all, 0.0)
        spread = (diffs * v).sum(-1).std(0) if k > 1 else torch.zeros_like(proj)
        se = spread * (fpc / k) ** 0.5
        return pd.DataFrame(
            {
                "layer": res.layers,
                "cos": cos.tolist(),
                "proj": proj.tolist(),
                "norm": norm.tolist(),
                "n_probes": k,
                "proj_se": se.tolist(),
            }
        )

    def step(self, model: ModuleLike, step: int) -> pd.DataFrame | None:
        """In a plain loop: call after each optimizer step; checks when ``step % every == 0``.

        Returns the check's rows, or ``None`` when no check was due.
        """
        if step % self.every != 0:
            return None
        if self._model_id != id(model):
            self.prepare(model)
        table = self.measure(
            model, self.next_subset() if self.subset_size_ < len(self._order) else None
        )
        if self.behaviour_metrics:
            self._metric_rows += [
                {"step": int(step), "metric": k, "value": v}
                for k, v in self.measure_metrics(model).items()
            ]
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
        """Every check so far: ``step, layer, cos, proj, norm, null_p99, n_probes, proj_se``."""
        return pd.DataFrame(
            self._rows,
            columns=["step", "layer", "cos", "proj", "norm", "null_p99", "n_probes", "proj_se"],
        )

    @property
    def metrics_(self) -> pd.DataFrame:
        """The behaviour metrics of every check: ``step, metric, value``."""
        return pd.DataFrame(self._metric_rows, columns=["step", "metric", "value"])

    def trajectory(
        self, *, title: str | None = "reversion monitor: cos(drift, v) per check"
    ) -> Any:
        """cos(drift, v) of every check per layer, with the threshold and the alerts (plotly)."""
        from revlens.plot import monitor_figure

        return monitor_figure(
            self.history_,
            threshold=getattr(self, "threshold_", None),
            alerts=self.alerts_,
            title=title,
        )

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
            self._checks = 0

    def as_trainer_callback(self) -> Any:
        """A ``transformers.TrainerCallback`` that checks on ``on_step_end`` (``state.global_step``)
        and logs each check through the Trainer's ``log`` (``revlens/cos_layer{l}``,
        ``revlens/proj_layer{l}``, ``revlens/null_p99``, ``revlens/alerts``; see
        :mod:`revlens.block.trainer`)."""
        from revlens.block.trainer import LoggingCallback

        monitor = self

        class ReversionMonitorCallback(LoggingCallback):
            """Runs a :class:`ReversionMonitor` inside ``Trainer.train``."""

            def on_step_end(
                self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
            ) -> Any:
                table = monitor.step(model, int(state.global_step))
                if table is not None:
                    self.pending = {
                        **{
                            f"{k}_layer{int(r.layer)}": float(getattr(r, k))
                            for r in table.itertuples()
                            for k in ("cos", "proj")
                        },
                        "null_p99": float(monitor.null_p99_),
                        "alerts": len(monitor.alerts_),
                    }
                    control.should_log = True  # the check is logged at its own step
                if monitor.should_stop_:
                    control.should_training_stop = True
                return control

        return ReversionMonitorCallback()

    def __repr__(self) -> str:
        checks = len({r["step"] for r in self._rows})
        return (
            f"ReversionMonitor(every={self.every}, patience={self.patience}, threshold={self.threshold!r}, "
            f"checks={checks}, alerts={len(self.alerts_)})"
        )
