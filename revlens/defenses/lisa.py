"""Lisa, Lazy Safety Alignment (Huang et al. 2024, arXiv 2405.18641): Bi-State Optimization with a
proximal term — fine-tuning alternates between an **alignment state** (steps on alignment data) and
the **user state** (the user's fine-tuning steps), each pulled toward the weights where the other
state left off.

With ``w`` the trained tensors, ``ρ`` the proximal intensity, ``K_a`` alignment and ``K_u`` user steps
per cycle:

- user state (the caller's own loop): each step minimises ``h(w) + ρ/2 ‖w − w̄_a‖²`` — ``ρ (w − w̄_a)``
  is added to ``.grad`` before the optimizer step; ``w̄_a`` = the weights at the end of the last
  alignment state (at the start: the weights when attached, i.e. the aligned model);
- after every ``K_u`` user steps, ``K_a`` alignment steps minimise ``f(w) + ρ/2 ‖w − w̄_u‖²`` on
  batches of the alignment pairs (answer-only loss), ``w̄_u`` = the weights at the end of that user
  state; then ``w̄_a`` ← the weights, and the user state resumes.

The alignment steps run inside :meth:`Lisa.after_step` with **their own optimizer** (``align_optimizer``
at ``align_lr`` over the same tensors: the caller's optimizer cannot be stepped from inside its own
wrapped step); the paper uses one optimizer configuration for both states. Defaults ``rho = 1.0``,
``align_steps = 100``, ``user_steps = 900`` (10 % of the steps on alignment data) are the paper's
main setting as recalled offline — *not verified against the paper's table*; scale
``align_steps`` / ``user_steps`` to your run's length. Full and LoRA fine-tuning (the trained tensors
are whatever the optimizer steps). The alignment data is required (``alignment=``: a JSONL file of
``{prompt, answer}`` records or a list of pairs; :mod:`revlens.defenses.data`).
"""

from dataclasses import dataclass
from typing import Any, no_type_check

import torch

from revlens._config import Config, as_bool, as_float, as_int, option
from revlens._seeds import generator
from revlens.block.registry import register
from revlens.block.strategy import BlockingStrategy
from revlens.defenses._targets import hf_model
from revlens.defenses.data import encode_pairs, lm_loss, read_pairs
from revlens.errors import ConfigError
from revlens.modes import check_mode

__all__ = ["Lisa", "LisaConfig"]

OPTIMIZERS = ("adamw", "sgd")


@no_type_check  # validates its own fields (typed errors)
@dataclass
class LisaConfig(Config):
    """Settings of :class:`Lisa` (module docstring)."""

    alignment: Any = option(
        None,
        "the alignment data (required): a JSONL file of {prompt, answer} records "
        "or a list of (prompt, answer) pairs",
        cli=False,
    )
    rho: float = option(1.0, "ρ, the proximal intensity (>= 0)")
    align_steps: int = option(100, "K_a: alignment steps per cycle")
    user_steps: int = option(
        900, "K_u: user (fine-tuning) steps per cycle, before each alignment state"
    )
    align_lr: float = option(1e-4, "learning rate of the alignment steps")
    align_optimizer: str = option("adamw", "optimizer of the alignment steps", choices=OPTIMIZERS)
    batch_size: int = option(8, "alignment pairs per alignment step")
    chat: bool = option(
        False, "render alignment prompts as one user turn of the tokenizer's chat template"
    )
    max_length: int = option(256, "tokens per alignment row")
    seed: int = option(0, "seed of the alignment batches' order")

    def validate(self) -> None:
        """Check every field (the alignment data is read and checked here: typed errors)."""
        self.alignment = read_pairs(self.alignment, "alignment")
        self.rho = as_float("rho", self.rho, min=0.0)
        self.align_steps = as_int("align_steps", self.align_steps, min=1)
        self.user_steps = as_int("user_steps", self.user_steps, min=1)
        self.align_lr = as_float("align_lr", self.align_lr, min=0.0, open_min=True)
        check_mode("align_optimizer", self.align_optimizer, OPTIMIZERS)
        self.batch_size = as_int("batch_size", self.batch_size, min=1)
        self.chat = as_bool("chat", self.chat)
        self.max_length = as_int("max_length", self.max_length, min=2)
        self.seed = as_int("seed", self.seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (the pairs as lists)."""
        out = super().to_dict()
        out["alignment"] = [list(p) for p in self.alignment]
        return out


@register("lisa")
class Lisa(BlockingStrategy):
    """Lisa's Bi-State Optimization (module docstring; arXiv 2405.18641).

    Args:
        tokenizer: encodes the alignment pairs (required).
        config: a :class:`LisaConfig`; ``**settings`` override it (``alignment=`` is required).

    Fitted attributes: ``params_`` (the trained tensors), ``anchor_`` (``w̄_a``), ``align_optimizer_``,
    ``user_in_state_``, ``align_done_``; records ``proximal`` (``ρ/2 ‖w − w̄_a‖²`` before each user
    step) and, after each alignment state, ``align_loss`` (its mean loss) and ``align_steps``.
    """

    source = "lisa"

    def __init__(
        self, tokenizer: Any = None, *, config: LisaConfig | None = None, **settings: Any
    ) -> None:
        self.config = LisaConfig.build(config, "Lisa", **settings)
        if tokenizer is None:
            raise ConfigError(
                "Lisa needs the tokenizer that encodes its alignment pairs (tokenizer=...)"
            )
        self.tokenizer = tokenizer

    def prepare(self, model: Any, *, optimizer: Any = None, params: Any = None) -> "Lisa":
        """Keep the trained tensors, the first anchor and the alignment optimizer."""
        cfg = self.config
        if params is None and optimizer is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        if params is None:
            params = [p for p in hf_model(model).parameters() if p.requires_grad]
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ConfigError("Lisa: the model has no trainable tensor")
        self.model_, self.params_ = hf_model(model), params
        self.anchor_ = [p.detach().clone() for p in params]
        make = torch.optim.AdamW if cfg.align_optimizer == "adamw" else torch.optim.SGD
        kw = {"weight_decay": 0.0} if cfg.align_optimizer == "adamw" else {}
        self.align_optimizer_ = make(params, lr=cfg.align_lr, **kw)
        self.generator_ = generator(cfg.seed, "lisa-alignment")
        self.user_in_state_, self.align_done_ = 0, 0
        self._start()
        return self

    @torch.no_grad()
    def _add_proximal(self, anchor: list[torch.Tensor]) -> float:
        """Add ``ρ (w − w̄)`` to every ``.grad``; return ``ρ/2 ‖w − w̄‖²``."""
        rho, total = self.config.rho, 0.0
        for p, a in zip(self.params_, anchor, strict=True):
            diff = p.detach() - a
            total += float((diff.double() ** 2).sum())
            if rho:
                p.grad = rho * diff if p.grad is None else p.grad.add_(diff, alpha=rho)
        return 0.5 * rho * total

    def before_step(self) -> None:
        """User state: add the proximal term's gradient toward the last alignment state's weights."""
        super().before_step()
        self._record("proximal", self._add_proximal(self.anchor_))

    def after_step(self) -> None:
        """Count the user step; after ``user_steps`` of them, run the alignment state."""
        self._check()
        self.user_in_state_ += 1
        if self.user_in_state_ >= self.config.user_steps:
            self._alignment_state()
        super().after_step()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pairs = self.config.alignment
        idx = torch.randint(
            0, len(pairs), (min(self.config.batch_size, len(pairs)),), generator=self.generator_
        )
        return encode_pairs(
            self.tokenizer,
            [pairs[i] for i in idx.tolist()],
            chat=self.config.chat,
            max_length=self.config.max_length,
        )

    def _alignment_state(self) -> None:
        cfg, model = self.config, self.model_
        anchor_user = [p.detach().clone() for p in self.params_]
        losses = []  # in the mode the caller trains in (dropout as in its own steps)
        try:
            for _ in range(cfg.align_steps):
                self.align_optimizer_.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = lm_loss(model, *self._batch())
                    loss.backward()
                self._add_proximal(anchor_user)
                self.align_optimizer_.step()
                losses.append(float(loss.detach()))
        finally:
            self.align_optimizer_.zero_grad(set_to_none=True)
        self.anchor_ = [p.detach().clone() for p in self.params_]
        self.user_in_state_ = 0
        self.align_done_ += cfg.align_steps
        self._record("align_loss", sum(losses) / len(losses))
        self._record("align_steps", float(self.align_done_))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Lisa(rho={c.rho}, align_steps={c.align_steps}, user_steps={c.user_steps}, "
            f"{len(c.alignment)} alignment pairs, attached={self.is_attached})"
        )
