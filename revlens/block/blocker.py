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

from contextlib import ExitStack
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from revlens._attach import Attachable
from revlens.block.attach import named_steps, trained_parameters, wrapped_step
from revlens.block.config import BlockerConfig
from revlens.block.constraints import (
    gradient_coefficients,
    hook_edit,
    penalty_rows,
    update_coefficients,
)
from revlens.block.inputs import ProbeInputs, Resolved
from revlens.block.objective import ProbeObjective
from revlens.block.projection import Jacobian
from revlens.errors import ConfigError, NotFittedError, RevlensError
from revlens.modes import BLOCK_METHODS, BlockMethod
from revlens.sites import SiteAccess

__all__ = ["METHODS", "BlockerConfig", "Method", "ReversionBlocker"]

Method = BlockMethod
METHODS = BLOCK_METHODS
AUTO_PROBE_BATCH = 32


class ReversionBlocker(ProbeInputs, Attachable):
    """Keep a fine-tuned model from moving along per-layer reversion directions.

    Args:
        directions: a :class:`~revlens.directions.Directions` of any rank (or a ``[layer, d]`` /
            ``[layer, k, d]`` tensor with ``directions_layers=``).
        probes: a :class:`~revlens.probes.Probes` (or list of prompts, or ``TokenizedProbes``).
        reference: the aligned model's residual on the probes: a ``[layer, d]`` tensor of means
            (rows = the blocked layers), a ``CheckpointStats`` / ``HistoryStats`` (its aligned
            checkpoint), or a model (HF model, ``LensModel``, ``save_pretrained`` dir).
        layers: blocked layers (default: every layer of ``directions``).
        method: ``"update"``, ``"gradient"``, ``"penalty"`` or ``"hook"`` (module docstring).
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

    Raises:
        ConfigError: unknown method, ``strength < 0``, bad sizes, ``rank`` above the directions'
            rank, a hook that confines or acts per prompt, per prompt without a per-prompt reference.
    """

    def __init__(
        self,
        directions: Any,
        probes: Any,
        reference: Any,
        *,
        layers: Any = None,
        tokenizer: Any = None,
        directions_layers: Any = None,
        config: BlockerConfig | None = None,
        **settings: Any,
    ) -> None:
        self.config = cfg = BlockerConfig.build(config, "ReversionBlocker", **settings)
        self._store_inputs(directions, probes, reference, layers=layers, tokenizer=tokenizer,
                           directions_layers=directions_layers, site=cfg.site)
        self.method, self.strength, self.restore = cfg.method, cfg.strength, cfg.restore
        self.probe_batch_size, self.refresh_every = cfg.probe_batch_size, cfg.refresh_every
        self.grad_batching, self.ridge, self.seed = cfg.grad_batching, cfg.ridge, cfg.seed
        self.rank, self.constraint, self.per_prompt = cfg.rank, cfg.constraint, cfg.per_prompt
        self._stack: ExitStack | None = None
        self._log: list[dict[str, Any]] = []
        self._active: list[dict[str, int]] = []

    # ------------------------------------------------------------------ fitting
    def prepare(self, model: Any) -> "ReversionBlocker":
        """Validate inputs against ``model`` and precompute what each step needs.

        Sets ``reader_``, ``inputs_`` and ``layers_``. Called by :meth:`attach`.
        """
        reader, res = self.resolve(model)
        if self.rank is not None:
            if self.rank > res.basis.shape[1]:  # type: ignore[union-attr]
                raise ConfigError(f"rank={self.rank} but the directions have rank {res.basis.shape[1]}")  # type: ignore[union-attr]
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
        self.probe_batch_size_: int | None = None if size is None or size >= n else int(size)
        self._model_id = id(model)
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
        self.step_ = 0
        self._jac: Jacobian | None = None
        self._gram: Tensor | None = None
        self._s_now = torch.zeros(0, dtype=torch.float64)
        self._a_before: Tensor | None = None
        return self

    def _for(self, model: Any) -> None:
        """Prepare for ``model`` unless it is the one prepared (``None``: the prepared one)."""
        if model is not None and getattr(self, "_model_id", None) != id(model):
            self.prepare(model)
        self._check()

    def _check(self) -> None:
        if not hasattr(self, "inputs_"):
            raise NotFittedError(
                "this ReversionBlocker is not attached; call attach(model, optimizer) or prepare(model)"
            )

    # ------------------------------------------------------------------ attach / detach
    def attach(
        self, model: Any, optimizer: Any = None, *, wrap_step: bool = True, params: Any = None
    ) -> "ReversionBlocker":
        """Start blocking on ``model``: wrap ``optimizer.step`` (update/gradient/penalty) or add
        forward hooks (hook). Use :meth:`detach` (or :meth:`attached`) to undo.

        With ``wrap_step=False`` nothing is wrapped: call :meth:`before_step` and
        :meth:`after_step` around the optimizer step yourself (the Trainer callback does).
        ``params``: the tensors (or optimizer param groups) to correct, a subset of what trains
        (default: every trainable parameter in the optimizer, narrowed by the ``params`` patterns).
        """
        self.detach()
        self.prepare(model)
        params = trained_parameters(self.reader_.module, self.reader_.parameters(), optimizer=optimizer,
                                    params=params, patterns=self.config.params)
        if optimizer is None and wrap_step and self.method != "hook":
            raise ConfigError(
                f"method={self.method!r} acts on the optimizer step: attach(model, optimizer), or "
                "attach(model, wrap_step=False) and call before_step()/after_step() around it yourself"
            )
        self._params = params
        stack = ExitStack()
        try:
            if self.method == "hook":
                stack.enter_context(self.reader_.hooked([(site, self._edit(i)) for i, site in enumerate(self.inputs_.sites)]))
            elif optimizer is not None and wrap_step:
                stack.enter_context(wrapped_step(optimizer, *named_steps(self)))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def detach(self) -> None:
        """Remove every hook and restore ``optimizer.step`` (safe to call twice)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self._a_before = self._jac = self._gram = None  # the stored gradients go with the attachment

    @property
    def is_attached(self) -> bool:
        """Whether hooks or a wrapped step are in place."""
        return self._stack is not None

    # ------------------------------------------------------------------ measurements
    def projection(self, model: Any = None) -> Tensor:
        """``s_l`` on the whole probe set at the current weights (no grad), ``[layer]`` float64
        (of ``model`` if given, else of the attached / prepared model)."""
        self._for(model)
        return self.objective_.s_full()

    def subspace_projection(self, model: Any = None) -> Tensor:
        """The drift's coordinates on every blocked basis row on the whole probe set, ``[layer, k]``
        float64 (column 0 is :meth:`projection`)."""
        self._for(model)
        return self.objective_.subspace_full()

    def penalty(self, model: Any = None) -> Tensor:
        """``strength · Σ_r s_r²`` on a probe batch (``one_sided``: ``Σ relu(s_r)²``), differentiable:
        add it to the loss in a plain loop when the blocker is **not** attached with
        ``method="penalty"`` (that adds it for you)."""
        self._for(model)
        s = self.objective_.s(self.objective_.batch())
        return self.strength * penalty_rows(s, self.constraint)

    def _measure(self) -> None:
        """Every ``refresh_every`` steps: measure ``s`` and the per-layer gradients on a probe
        batch (one forward, one backward per layer). In between, ``s`` is the first-order
        prediction carried over from the last step (``s + AΔ'``) and ``A`` is reused."""
        if self._jac is None or self.step_ % self.refresh_every == 0:
            self._jac = None  # free the last refresh's gradients before computing the new ones
            with torch.enable_grad():
                terms = self.objective_.s_terms(self.objective_.batch())
                self._jac = self.objective_.grads(terms, self._params)
                s = torch.cat(terms)
            self._gram = self._jac.gram()
            self._stored = (self._jac.n_rows, self._jac.nbytes)
            self._s_now = s.detach().double().cpu()
            measured = True
        else:
            measured = False
        self._log.append({"step": self.step_, "measured": measured,
                          **{f"s{layer}": float(v) for layer, v in zip(self.layers_, self._first_rows())}})

    def _first_rows(self) -> Tensor:
        """Per layer, the current ``s`` along the first basis row (per prompt: the batch mean)."""
        parts = torch.split(self._s_now, self.objective_.layout) if self.objective_.layout else []
        return self.objective_.first_rows(list(parts))

    # ------------------------------------------------------------------ the step
    def before_step(self) -> None:
        """Call just before ``optimizer.step()`` (done for you by :meth:`attach`)."""
        self._check()
        if self.method == "hook" or self.strength == 0.0:
            return
        if self.method == "penalty":
            with torch.enable_grad():
                terms = self.objective_.s_terms(self.objective_.batch())
                s = torch.cat(terms)
                pen = self.strength * penalty_rows(s, self.constraint)
                grads = torch.autograd.grad(pen, self._params, allow_unused=True)
            self._log.append({"step": self.step_,
                              **{f"s{layer}": float(v) for layer, v in zip(self.layers_, self.objective_.first_rows(terms))}})
            for p, g in zip(self._params, grads, strict=True):
                if g is not None:
                    p.grad = g.detach() if p.grad is None else p.grad.add_(g)
            return
        self._measure()
        jac = self._jac
        assert jac is not None and self._gram is not None
        with torch.no_grad():
            if self.method == "update":  # Aθ before the step: AΔ = Aθ_after − Aθ_before, no copy of θ
                self._a_before = jac.dot([p.detach() for p in jac.params])
                return
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in jac.params]
            coef = gradient_coefficients(self.constraint, self._gram, jac.dot(grads),
                                         strength=self.strength, ridge=self.ridge)
            self._note_active(coef)
            jac.correct([p.grad for p in jac.params], coef)

    def after_step(self) -> None:
        """Call just after ``optimizer.step()`` (done for you by :meth:`attach`)."""
        self._check()
        if self.method == "update" and self.strength > 0.0:
            jac = self._jac
            if self._a_before is None or jac is None:
                raise RevlensError(
                    "after_step() without before_step(): call both around optimizer.step()"
                )
            with torch.no_grad():
                a_delta = jac.dot([p.detach() for p in jac.params]) - self._a_before
                coef = update_coefficients(self.constraint, self._gram, a_delta, self._s_now,
                                           strength=self.strength, restore=self.restore, ridge=self.ridge)
                self._note_active(coef)
                if bool((coef != 0).any()):
                    jac.correct([p.data for p in jac.params], coef)
                self._s_now = self._s_now + a_delta - self._gram @ coef  # s + AΔ' (first order)
            self._a_before = None
        elif self.method == "gradient" and self.refresh_every > 1:
            self._s_now = torch.full_like(self._s_now, float("nan"))  # not tracked
        self.step_ += 1

    # ------------------------------------------------------------------ hook method
    def _edit(self, i: int) -> Any:
        """The training-time edit at the ``i``-th blocked site (measurements, in eval mode, see
        the unedited model)."""
        res, module = self.inputs_, self.reader_.module
        return hook_edit(res.basis[i], res.ref_mean[i], self.strength, self.constraint == "one_sided",  # type: ignore[index]
                         lambda: module.training)

    @property
    def cost_(self) -> dict[str, int]:
        """What blocking holds now: ``trained_parameters`` (corrected elements), ``trained_bytes``,
        and, at the last refresh, ``rows`` (constraint rows) and ``stored_bytes`` (the per-layer
        gradients kept until the next one, ``docs/scale.md`` "Blocking cost")."""
        params, (rows, stored) = getattr(self, "_params", []), getattr(self, "_stored", (0, 0))
        return {"trained_parameters": sum(p.numel() for p in params), "rows": rows, "stored_bytes": stored,
                "trained_bytes": sum(p.numel() * p.element_size() for p in params)}

    def _note_active(self, coef: Tensor) -> None:
        """Record how many constraint rows acted at this step (one-sided: the active set)."""
        self._active.append({"step": self.step_, "rows": int(coef.numel()), "active": int((coef != 0).sum())})

    @property
    def active_(self) -> pd.DataFrame:
        """Per corrected step: ``step``, ``rows`` (constraint rows) and ``active`` (rows whose
        coefficient is non-zero: with ``constraint="one_sided"``, the rows that bound)."""
        return pd.DataFrame(self._active, columns=["step", "rows", "active"])

    @property
    def history_(self) -> pd.DataFrame:
        """Per-step ``s_l`` on the probe batch before each step, long format ``step, layer, s,
        measured`` (``measured=False``: the first-order prediction between refreshes); empty for
        ``method="hook"``."""
        rows = [
            {"step": r["step"], "layer": int(k[1:]), "s": v, "measured": r.get("measured", True)}
            for r in self._log
            for k, v in r.items()
            if k.startswith("s") and k[1:].isdigit()
        ]
        return pd.DataFrame(rows, columns=["step", "layer", "s", "measured"])

    def measurements(self) -> dict[str, float]:
        """The last step's values, flat (what the Trainer callback logs under ``revlens/``):
        ``block_s_layer{l}`` (``s_l`` before the step) and ``block_active_rows`` (rows acting)."""
        last = self._log[-1] if self._log else {}
        out = {f"block_s_layer{k[1:]}": float(v) for k, v in last.items() if k[0] == "s" and k[1:].isdigit()}
        return {**out, "block_active_rows": self._active[-1]["active"]} if self._active else out

    def as_trainer_callback(self) -> Any:
        """A :class:`~revlens.block.ReversionBlockerCallback` (``transformers.TrainerCallback``) for it."""
        from revlens.block.trainer import ReversionBlockerCallback

        return ReversionBlockerCallback(self)

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
            f"layers={getattr(self, 'layers_', self.layers)}, attached={self.is_attached})"
        )
