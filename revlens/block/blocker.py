"""Block motion along reversion directions or rank-k subspaces while a model fine-tunes (DESIGN §2, §5).

For each blocked layer ``l``, ``s_l(θ) = (μ_l(θ) − μ_l(aligned))·v_l`` is the drift along
``v_l`` of the probe-set mean residual, and ``a_l = ∇θ s_l``. With a rank-k basis ``B_l`` every
basis row is a constraint row (``s_{l,j}`` along ``b_{l,j}``; ``rank=`` keeps the first k); with
``per_prompt=True`` every probe prompt's projection is one; ``constraint`` chooses what is held
(``"equal"``: ``s = 0``; ``"one_sided"``: ``s ≤ 0``, no motion toward base; ``"confine"``: the
drift held inside the subspace — see :mod:`revlens.block.constraints`). Methods:

- ``"update"`` (default): after the optimizer computed its step ``Δθ`` (momentum and Adam
  scaling included), remove ``Δθ``'s component in ``span{a_l}`` and add the restoring term
  ``−Aᵀ(AAᵀ)⁻¹ s`` (``restore=True``) so that ``s_l`` stays ≈ 0, not only its change. ``AΔθ`` is
  ``Aθ_after − Aθ_before`` (``k`` float64 numbers kept across the step): no copy of the weights;
- ``"gradient"``: the same projection on the raw gradient before the optimizer (momentum and
  Adam re-introduce the component: prototypes found it does **not** hold ``s_l``);
- ``"penalty"``: add ``strength · Σ_l s_l²`` to the loss (when attached, its gradient is added
  to ``.grad`` just before the optimizer step: the same thing, without touching the loss);
- ``"hook"``: during training forwards, replace ``h`` by ``h − strength·B_lᵀB_l(h − μ_l(aligned))``
  (``k = 1``: ``h − strength·((h − μ_l(aligned))·v_l) v_l``).

Each method is one class in :mod:`revlens.block.methods`, a subclass of :class:`ReversionBlocker`
registered under its name (:mod:`revlens.block.registry`); ``ReversionBlocker(..., method=name)``
builds the registered class, so a new method (one subclass, ``@register("name")``) is accepted by
``BlockerConfig(method=...)``, the Trainer callback and the lab at once. This module holds what they
share: the inputs, the probe objective, the measurement of ``s`` and of the per-layer gradients
(:meth:`ReversionBlocker.refresh`) and the typed records (:class:`~revlens.block.strategy.Measurement`).

The per-layer gradients: see :mod:`revlens.block.objective`. Only the *trained* parameters are
corrected (``requires_grad``, in the optimizer; ``params=`` narrows them by name, e.g. the LoRA
factors ``"*lora_*"``), and the per-layer gradients are stored at their size only: the cost model
is in ``docs/scale.md`` ("Blocking cost"; measured by ``benchmarks/bench_training.py``).

Example:
    >>> blocker = ReversionBlocker(directions, probes, aligned_dir)       # doctest: +SKIP
    >>> with blocker.attached(model, optimizer):                           # doctest: +SKIP
    ...     for batch in loader:
    ...         loss = model(**batch).loss; loss.backward(); optimizer.step(); optimizer.zero_grad()
"""

from typing import Any, no_type_check

import pandas as pd
import torch
from torch import Tensor

from revlens._types import ModuleLike, ParamsInput, TokenizerInput
from revlens.block.attach import trained_parameters
from revlens.block.config import BlockerConfig
from revlens.block.constraints import penalty_rows
from revlens.block.inputs import DirectionsInput, ProbeInputs, ProbesArg, ReferenceInput, Resolved
from revlens.block.objective import ProbeObjective
from revlens.block.projection import Jacobian
from revlens.block.registry import MethodNames, method_class
from revlens.block.strategy import BlockingStrategy, records_frame
from revlens.errors import ConfigError
from revlens.modes import BlockMethod
from revlens.sites import LayerSpec, SiteAccess

__all__ = ["METHODS", "BlockerConfig", "Method", "ReversionBlocker"]

Method = BlockMethod
AUTO_PROBE_BATCH = 32


class ReversionBlocker(ProbeInputs, BlockingStrategy):
    """Keep a fine-tuned model from moving along per-layer reversion directions.

    ``ReversionBlocker(...)`` returns an instance of the class registered for ``method`` (a
    subclass: :class:`~revlens.block.methods.UpdateProjection`, ``GradientProjection``,
    ``Penalty``, ``ForwardHook``, or a user's); each subclass can also be built directly.

    Args:
        directions: a :class:`~revlens.directions.Directions` of any rank (or a ``[layer, d]`` /
            ``[layer, k, d]`` tensor with ``directions_layers=``).
        probes: a :class:`~revlens.probes.Probes` (or list of prompts, or ``TokenizedProbes``).
        reference: the aligned model's residual on the probes: a ``[layer, d]`` tensor of means
            (rows = the blocked layers), a ``CheckpointStats`` / ``HistoryStats`` (its aligned
            checkpoint), or a model (HF model, ``LensModel``, ``save_pretrained`` dir).
        layers: blocked layers (default: every layer of ``directions``).
        method: a registered method: ``"update"``, ``"gradient"``, ``"penalty"`` or ``"hook"``
            (module docstring), or one a user registered.
        strength: fraction of the component removed (update/gradient/hook), or λ (penalty).
        restore: add the restoring term (``"update"`` only).
        probe_batch_size: prompts per measurement; batches cycle through the probe set in a
            seeded order and need a per-prompt reference (a model, or statistics with kept
            activations). ``None``: the whole set every time. ``"auto"`` (default): 32 when the
            reference is per-prompt, else the whole set.
        refresh_every: measure ``s`` and the per-layer gradients every k steps (1 = every step);
            in between, ``s`` is predicted to first order and the last gradients are reused, so
            such a step costs only the projection algebra. The defaults (2, batches of 32) cost
            ~1.7x a plain step on the lab and held ``s`` within ~5 % of its unblocked motion;
            ``refresh_every=1, probe_batch_size=None`` is exact and ~10x (``benchmarks/``).
        grad_batching: ``"loop"``, ``"vmap"`` or ``"auto"`` (loop on CPU, vmap on GPU, with a
            fallback to loop when vmap fails).
        tokenizer: tokenizer for text probes (default: the reference's, if it has one).
        seed: seed of the probe-batch order.
        rank: block the first ``k`` rows of each layer's basis (default: all).
        constraint: ``"equal"`` (default), ``"one_sided"`` or ``"confine"`` (module docstring).
        per_prompt: one constraint row per probe prompt and basis row (needs a per-prompt
            reference). Costs: the rows grow ``batch``-fold, and so do the per-refresh backwards and
            the kept gradients (up to ``[rows, *param.shape]`` per trained parameter): with
            ``per_prompt`` keep ``probe_batch_size`` small (e.g. 8).
        params: ``fnmatch`` patterns of the trained parameters' names to correct (e.g.
            ``"*lora_*"``; default: every parameter with ``requires_grad`` that the optimizer
            steps). Parameters left out still train, uncorrected: what they move is not blocked.

    Fitted attributes (set by :meth:`prepare`): ``reader_``, ``inputs_``, ``layers_``,
    ``objective_``, ``params_``, ``probe_batch_size_``, ``model_id_``, ``step_``, ``records_``, and
    the step state ``jac_`` (the per-layer gradients of the last refresh), ``gram_``, ``s_now_``
    (``s`` now, measured or predicted), ``stored_`` (rows and bytes kept at the last refresh).

    Raises:
        ConfigError: unknown method, ``strength < 0``, bad sizes, ``rank`` above the directions'
            rank, a hook that confines or acts per prompt, per prompt without a per-prompt reference.
    """

    source = "block"

    def __new__(
        cls, *args: Any, config: BlockerConfig | None = None, **settings: Any
    ) -> "ReversionBlocker":
        if cls is ReversionBlocker:  # the registered class of the method asked for
            method = settings.get(
                "method", config.method if config is not None else BlockerConfig.method
            )
            cls = method_class(method, ReversionBlocker)
        return super().__new__(cls)

    @no_type_check  # validates its own arguments (typed errors), also under the test type-checker
    def __init__(
        self,
        directions: DirectionsInput,
        probes: ProbesArg,
        reference: ReferenceInput,
        *,
        layers: LayerSpec = None,
        tokenizer: TokenizerInput | None = None,
        directions_layers: LayerSpec = None,
        config: BlockerConfig | None = None,
        **settings: Any,
    ) -> None:
        own = type(self).method
        if not own:
            raise ConfigError(
                f"{type(self).__name__} is not a registered blocking method; decorate it with "
                "@revlens.block.register('name')"
            )
        given = settings.get("method", config.method if config is not None else own)
        if given != own:
            raise ConfigError(f"{type(self).__name__} is method {own!r}, not method={given!r}")
        self.config = cfg = BlockerConfig.build(
            config, type(self).__name__, **{**settings, "method": own}
        )
        self._store_inputs(
            directions,
            probes,
            reference,
            layers=layers,
            tokenizer=tokenizer,
            directions_layers=directions_layers,
            site=cfg.site,
        )
        self.method, self.strength, self.restore = cfg.method, cfg.strength, cfg.restore
        self.probe_batch_size, self.refresh_every = cfg.probe_batch_size, cfg.refresh_every
        self.grad_batching, self.ridge, self.seed = cfg.grad_batching, cfg.ridge, cfg.seed
        self.rank, self.constraint, self.per_prompt = cfg.rank, cfg.constraint, cfg.per_prompt

    @classmethod
    def check_config(cls, config: BlockerConfig) -> None:
        """Method-specific checks of a :class:`BlockerConfig` (called by its validation); raise
        :class:`~revlens.errors.ConfigError` for settings this method cannot honour."""

    # ------------------------------------------------------------------ fitting
    def prepare(
        self,
        model: ModuleLike,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        params: ParamsInput | None = None,
    ) -> "ReversionBlocker":
        """Validate inputs against ``model`` and set every fitted attribute (class docstring).

        ``optimizer`` / ``params`` narrow the corrected parameters (``params_``) as in
        :func:`~revlens.block.attach.trained_parameters`. Called by :meth:`attach`.
        """
        reader, res = self.resolve(model)
        if self.rank is not None:
            if self.rank > res.basis.shape[1]:  # type: ignore[union-attr]
                raise ConfigError(
                    f"rank={self.rank} but the directions have rank {res.basis.shape[1]}"
                )  # type: ignore[union-attr]
            res = res.truncated(self.rank)
        n = res.tokens.shape[0]
        size = self.probe_batch_size
        if size == "auto":
            size = AUTO_PROBE_BATCH if res.ref_prompt is not None else None
        if size is not None and size < n and res.ref_prompt is None:
            raise ConfigError(
                f"probe_batch_size={size} < {n} probes needs a per-prompt reference (a reference "
                "model or statistics with kept activations); a reference of means only needs the whole probe set"
            )
        trainable = reader.parameters()
        if optimizer is None and params is None and not self.config.params:
            self.params_ = trainable  # measuring only needs none; attach() checks there are some
        else:
            self.params_ = trained_parameters(
                reader.module,
                trainable,
                optimizer=optimizer,
                params=params,
                patterns=self.config.params,
            )
        self.probe_batch_size_: int | None = None if size is None or size >= n else int(size)
        self.model_id_ = id(model)
        self.reader_: SiteAccess = reader
        self.inputs_: Resolved = res
        self.layers_ = list(res.layers)
        self.objective_ = ProbeObjective(
            reader,
            res,
            batch_size=self.probe_batch_size_,
            seed=self.seed,
            grad_batching=self.grad_batching,
            constraint=self.constraint,
            per_prompt=self.per_prompt,
        )
        self.jac_: Jacobian | None = None
        self.gram_: Tensor | None = None
        self.s_now_ = torch.zeros(0, dtype=torch.float64)
        self.stored_ = (0, 0)
        self._start()
        return self

    def attach(
        self,
        model: ModuleLike,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        wrap_step: bool = True,
        params: ParamsInput | None = None,
    ) -> "ReversionBlocker":
        """Start blocking on ``model`` (:meth:`BlockingStrategy.attach`): wrap ``optimizer.step``
        (methods acting on the step) and add the method's hooks. ``params``: the tensors (or
        optimizer param groups) to correct (default: every trainable parameter in the optimizer,
        narrowed by the ``params`` patterns)."""
        super().attach(model, optimizer, wrap_step=wrap_step, params=params)
        if self.acts_on_step and not self.params_:
            self.detach()
            raise ConfigError("no trainable parameter of the model is in the optimizer")
        return self

    def detach(self) -> None:
        """Remove every hook and restore ``optimizer.step`` (safe to call twice); the stored
        per-layer gradients go with the attachment."""
        super().detach()
        if self.is_fitted:
            self.jac_ = self.gram_ = None

    def _for(self, model: ModuleLike | None) -> None:
        """Prepare for ``model`` unless it is the one prepared (``None``: the prepared one)."""
        if model is not None and (not self.is_fitted or self.model_id_ != id(model)):
            self.prepare(model)
        self._check()

    # ------------------------------------------------------------------ measurements
    def projection(self, model: ModuleLike | None = None) -> Tensor:
        """``s_l`` on the whole probe set at the current weights (no grad), ``[layer]`` float64
        (of ``model`` if given, else of the attached / prepared model)."""
        self._for(model)
        return self.objective_.s_full()

    def subspace_projection(self, model: ModuleLike | None = None) -> Tensor:
        """The drift's coordinates on every blocked basis row on the whole probe set, ``[layer, k]``
        float64 (column 0 is :meth:`projection`)."""
        self._for(model)
        return self.objective_.subspace_full()

    def penalty(self, model: ModuleLike | None = None) -> Tensor:
        """``strength · Σ_r s_r²`` on a probe batch (``one_sided``: ``Σ relu(s_r)²``), differentiable:
        add it to the loss in a plain loop when the blocker is **not** attached with
        ``method="penalty"`` (that adds it for you)."""
        self._for(model)
        s = self.objective_.s(self.objective_.batch())
        return self.strength * penalty_rows(s, self.constraint)

    def refresh(self) -> None:
        """What a method that needs ``s`` and ``A`` calls in :meth:`before_step`: every
        ``refresh_every`` steps, measure ``s`` and the per-layer gradients ``jac_`` on a probe
        batch (one forward, one backward per layer); in between, ``s_now_`` is the first-order
        prediction carried over from the last step and ``jac_`` is reused. Records ``s`` per layer."""
        if self.jac_ is None or self.step_ % self.refresh_every == 0:
            self.jac_ = None  # free the last refresh's gradients before computing the new ones
            with torch.enable_grad():
                terms = self.objective_.s_terms(self.objective_.batch())
                self.jac_ = self.objective_.grads(terms, self.params_)
                s = torch.cat(terms)
            self.gram_ = self.jac_.gram()
            self.stored_ = (self.jac_.n_rows, self.jac_.nbytes)
            self.s_now_ = s.detach().double().cpu()
            measured = True
        else:
            measured = False
        parts = torch.split(self.s_now_, self.objective_.layout) if self.objective_.layout else []
        self._record_s(self.objective_.first_rows(list(parts)), measured=measured)

    def _record_s(self, first_rows: Tensor, *, measured: bool = True) -> None:
        """Record ``s`` along each layer's first basis row (the ``block_s_layer{l}`` log entries)."""
        for layer, v in zip(self.layers_, first_rows, strict=True):
            self._record("s", float(v), layer=layer, measured=measured)

    def _note_active(self, coef: Tensor) -> None:
        """Record how many constraint rows acted at this step (one-sided: the active set)."""
        self._record("active_rows", float((coef != 0).sum()))
        self._record("rows", float(coef.numel()), logged=False)

    # ------------------------------------------------------------------ views
    @property
    def cost_(self) -> dict[str, int]:
        """What blocking holds now: ``trained_parameters`` (corrected elements), ``trained_bytes``,
        and, at the last refresh, ``rows`` (constraint rows) and ``stored_bytes`` (the per-layer
        gradients kept until the next one, ``docs/scale.md`` "Blocking cost")."""
        self._check()
        rows, stored = self.stored_
        return {
            "trained_parameters": sum(p.numel() for p in self.params_),
            "rows": rows,
            "stored_bytes": stored,
            "trained_bytes": sum(p.numel() * p.element_size() for p in self.params_),
        }

    @property
    def active_(self) -> pd.DataFrame:
        """Per corrected step: ``step``, ``rows`` (constraint rows) and ``active`` (rows whose
        coefficient is non-zero: with ``constraint="one_sided"``, the rows that bound)."""
        records = self.records_ if self.is_fitted else []
        active = records_frame(records, "active_rows", ["step", "active_rows"])
        rows = records_frame(records, "rows", ["step", "rows"])
        return pd.DataFrame(
            {
                "step": active["step"],
                "rows": rows["rows"].astype("int64"),
                "active": active["active_rows"].astype("int64"),
            },
            columns=["step", "rows", "active"],
        )

    @property
    def history_(self) -> pd.DataFrame:
        """Per-step ``s_l`` on the probe batch before each step, long format ``step, layer, s,
        measured`` (``measured=False``: the first-order prediction between refreshes); empty for
        ``method="hook"``."""
        return records_frame(
            self.records_ if self.is_fitted else [], "s", ["step", "layer", "s", "measured"]
        )

    def trajectory(self, **kw: Any) -> Any:
        """The blocked quantity ``s_l`` before each step, per layer (:func:`revlens.plot.blocker_figure`)."""
        from revlens.plot import blocker_figure

        return blocker_figure(self.history_, **kw)

    def __repr__(self) -> str:
        extra = "" if self.constraint == "equal" else f", constraint={self.constraint!r}"
        extra += f", rank={self.rank}" if self.rank is not None else ""
        extra += ", per_prompt=True" if self.per_prompt else ""
        return (
            f"ReversionBlocker(method={self.method!r}, strength={self.strength}, restore={self.restore}{extra}, "
            f"layers={self.layers_ if self.is_fitted else self.layers}, attached={self.is_attached})"
        )


METHODS = MethodNames(ReversionBlocker)
"""The registered activation-space methods (a live tuple-like view of the registry)."""
