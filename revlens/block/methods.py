"""The built-in activation-space blocking methods, one class each (DESIGN §2; the formulas in
:mod:`revlens.block.blocker` and :mod:`revlens.block.constraints`).

Each is a :class:`~revlens.block.ReversionBlocker` subclass registered under its
:data:`revlens.modes.BlockMethod` name; ``ReversionBlocker(..., method="gradient")`` builds
:class:`GradientProjection`. A new method is one more such class (in any module, a test's
included) decorated with :func:`~revlens.block.registry.register`.
"""

from contextlib import ExitStack
from typing import Any

import torch

from revlens._types import ModuleLike, ParamsInput
from revlens.block.blocker import ReversionBlocker
from revlens.block.config import BlockerConfig
from revlens.block.constraints import (
    gradient_coefficients,
    hook_edit,
    penalty_rows,
    update_coefficients,
)
from revlens.block.registry import register
from revlens.errors import ConfigError, RevlensError

__all__ = ["ForwardHook", "GradientProjection", "Penalty", "UpdateProjection"]


@register("update")
class UpdateProjection(ReversionBlocker):
    """``"update"`` (the default): project the optimizer's actual step off ``span{a_l}`` and add
    the restoring term (``restore=True``), so that ``s_l`` stays ≈ 0 (module docstring of
    :mod:`revlens.block.blocker`). ``AΔ = Aθ_after − Aθ_before`` (``k`` float64 numbers kept
    across the step): no copy of the weights."""

    def prepare(
        self,
        model: ModuleLike,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        params: ParamsInput | None = None,
    ) -> "UpdateProjection":
        """:meth:`ReversionBlocker.prepare`, plus ``a_before_`` (``Aθ`` before the step in flight)."""
        super().prepare(model, optimizer=optimizer, params=params)
        self.a_before_: torch.Tensor | None = None
        return self

    def before_step(self) -> None:
        """Measure (or predict) ``s`` and ``A``; keep ``Aθ`` before the step."""
        super().before_step()
        if self.strength == 0.0:
            return
        self.refresh()
        assert self.jac_ is not None
        with torch.no_grad():
            self.a_before_ = self.jac_.dot([p.detach() for p in self.jac_.params])

    def after_step(self) -> None:
        """``Δ' = Δ − Aᵀc`` in place on the weights; ``s_now_`` becomes ``s + AΔ'`` (first order)."""
        self._check()
        if self.strength > 0.0:
            jac = self.jac_
            if self.a_before_ is None or jac is None:
                raise RevlensError(
                    "after_step() without before_step(): call both around optimizer.step()"
                )
            with torch.no_grad():
                a_delta = jac.dot([p.detach() for p in jac.params]) - self.a_before_
                coef = update_coefficients(
                    self.constraint,
                    self.gram_,
                    a_delta,
                    self.s_now_,  # type: ignore[arg-type]
                    strength=self.strength,
                    restore=self.restore,
                    ridge=self.ridge,
                )
                self._note_active(coef)
                if bool((coef != 0).any()):
                    jac.correct([p.data for p in jac.params], coef)
                self.s_now_ = self.s_now_ + a_delta - self.gram_ @ coef  # type: ignore[operator]
            self.a_before_ = None
        super().after_step()

    def detach(self) -> None:
        """As :meth:`ReversionBlocker.detach`; a step begun is forgotten."""
        super().detach()
        if self.is_fitted:
            self.a_before_ = None


@register("gradient")
class GradientProjection(ReversionBlocker):
    """``"gradient"``: the same projection on the raw gradient before the optimizer (momentum
    and Adam re-introduce the component: prototypes found it does **not** hold ``s_l``)."""

    def before_step(self) -> None:
        """Measure (or predict) ``s`` and ``A``; remove the gradient's component along them."""
        super().before_step()
        if self.strength == 0.0:
            return
        self.refresh()
        jac = self.jac_
        assert jac is not None and self.gram_ is not None
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in jac.params]
            coef = gradient_coefficients(
                self.constraint,
                self.gram_,
                jac.dot(grads),
                strength=self.strength,
                ridge=self.ridge,
            )
            self._note_active(coef)
            jac.correct([p.grad for p in jac.params], coef)

    def after_step(self) -> None:
        """Between refreshes ``s`` is not tracked (NaN until the next measurement)."""
        self._check()
        if self.refresh_every > 1:
            self.s_now_ = torch.full_like(self.s_now_, float("nan"))
        super().after_step()


@register("penalty")
class Penalty(ReversionBlocker):
    """``"penalty"``: add ``strength · Σ_l s_l²`` (``one_sided``: ``Σ relu(s_l)²``) to the loss. When
    attached, its gradient is added to ``.grad`` just before the optimizer step (the same thing,
    without touching the loss; gradient clipping, done earlier by a ``Trainer``, does not see it)."""

    def before_step(self) -> None:
        """Measure ``s`` on a probe batch and add the penalty's gradient to ``.grad``."""
        super().before_step()
        if self.strength == 0.0:
            return
        with torch.enable_grad():
            terms = self.objective_.s_terms(self.objective_.batch())
            pen = self.strength * penalty_rows(torch.cat(terms), self.constraint)
            grads = torch.autograd.grad(pen, self.params_, allow_unused=True)
        self._record_s(self.objective_.first_rows(terms))
        for p, g in zip(self.params_, grads, strict=True):
            if g is not None:
                p.grad = g.detach() if p.grad is None else p.grad.add_(g)


@register("hook")
class ForwardHook(ReversionBlocker):
    """``"hook"``: during training forwards, ``h ← h − strength·B_lᵀB_l(h − μ_l(aligned))``
    (``one_sided``: only the positive, base-ward coordinates). Acts through forward hooks only:
    ``attach`` wraps no optimizer step; measurements (eval mode) see the unedited model."""

    acts_on_step = False

    @classmethod
    def check_config(cls, config: BlockerConfig) -> None:
        """A hook can neither confine nor act per prompt."""
        if config.constraint == "confine":
            raise ConfigError(
                "method='hook' cannot confine: a forward hook keeping only the subspace would erase "
                "every per-token direction outside it; confine with update, gradient or penalty"
            )
        if config.per_prompt:
            raise ConfigError(
                "method='hook' edits training activations, not probe prompts: per_prompt applies to "
                "update, gradient and penalty"
            )

    def install(self, stack: ExitStack) -> None:
        """A forward hook at every blocked site, removed on detach."""
        stack.enter_context(
            self.reader_.hooked(
                [(site, self._edit(i)) for i, site in enumerate(self.inputs_.sites)]
            )
        )

    def _edit(self, i: int) -> Any:
        """The training-time edit at the ``i``-th blocked site (a no-op in eval mode)."""
        res, module = self.inputs_, self.reader_.module
        return hook_edit(
            res.basis[i],
            res.ref_mean[i],
            self.strength,
            self.constraint == "one_sided",  # type: ignore[index]
            lambda: module.training,
        )
