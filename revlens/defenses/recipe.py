"""A fine-tuning recipe: what :func:`revlens.defenses.compare_defenses` repeats for every defense.

:class:`FinetuneRecipe` is a validated config (the data, steps, batch size, optimizer, LoRA) and a plain
PyTorch loop (:meth:`FinetuneRecipe.train`) that drives any list of
:class:`~revlens.block.BlockingStrategy` through their step protocol (``attach`` wraps the optimizer's
step; ``finish`` and ``detach`` at the end). **Same seed, same data order**: the batches depend only on
the seed (:meth:`FinetuneRecipe.batches`), never on the defense, and LoRA adapters are initialised from
the seed too. Subclass it to train on other data (override :meth:`batches` and :meth:`example_pairs`),
with another optimizer (:meth:`make_optimizer`) or adapter (:meth:`wrap`): the lab does
(``revlens.lab.defenses.LabRecipe``).
"""

import copy
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

import torch
from tqdm.auto import tqdm

from revlens._config import Config, as_bool, as_float, as_int, option
from revlens._seeds import generator
from revlens.defenses.data import encode_pairs, lm_loss, read_pairs
from revlens.errors import ConfigError, require
from revlens.modes import check_mode

__all__ = ["FinetuneRecipe"]

OPTIMIZERS = ("adamw", "sgd")


@no_type_check  # validates its own fields (typed errors)
@dataclass
class FinetuneRecipe(Config):
    """One benign fine-tuning run (module docstring)."""

    data: Any = option(
        None,
        "the fine-tuning pairs: a JSONL file of {prompt, answer} records or a list of pairs",
        cli=False,
    )
    steps: int = option(100, "optimizer steps")
    batch_size: int = option(8, "pairs per step (drawn with replacement, seeded)")
    lr: float = option(1e-4, "learning rate")
    optimizer: str = option("adamw", "optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.0, "SGD momentum")
    weight_decay: float = option(0.0, "AdamW weight decay")
    lora_rank: int = option(0, "LoRA rank (0: full fine-tuning)")
    lora_alpha: float = option(16.0, "LoRA alpha")
    lora_targets: str = option(
        "all-linear", "PEFT target_modules (comma-separated names, or all-linear)"
    )
    chat: bool = option(False, "render prompts as one user turn of the tokenizer's chat template")
    max_length: int = option(256, "tokens per row")

    def validate(self) -> None:
        """Check every field (the data is read and checked here when given)."""
        if self.data is not None:
            self.data = read_pairs(self.data, "data")
        self.steps = as_int("steps", self.steps, min=1)
        self.batch_size = as_int("batch_size", self.batch_size, min=1)
        self.lr = as_float("lr", self.lr, min=0.0, open_min=True)
        check_mode("optimizer", self.optimizer, OPTIMIZERS)
        self.momentum = as_float("momentum", self.momentum, min=0.0, max=1.0)
        self.weight_decay = as_float("weight_decay", self.weight_decay, min=0.0)
        self.lora_rank = as_int("lora_rank", self.lora_rank, min=0)
        self.lora_alpha = as_float("lora_alpha", self.lora_alpha, min=0.0, open_min=True)
        if not isinstance(self.lora_targets, str) or not self.lora_targets.strip():
            raise ConfigError(f"lora_targets must be a non-empty string, got {self.lora_targets!r}")
        self.chat = as_bool("chat", self.chat)
        self.max_length = as_int("max_length", self.max_length, min=2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (the pairs as lists)."""
        out = super().to_dict()
        if self.data is not None:
            out["data"] = [list(p) for p in self.data]
        return out

    def key(self) -> str:
        """A content hash of everything that changes a run (the data included)."""
        blob = json.dumps(
            {"class": type(self).__qualname__, **self.to_dict()}, sort_keys=True, default=str
        )
        return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()

    # ------------------------------------------------------------------ what a subclass may change
    def _pairs(self) -> list[tuple[str, str]]:
        if self.data is None:
            raise ConfigError(
                f"{type(self).__name__}: data= is required (a JSONL file or a list of pairs)"
            )
        return self.data

    def example_pairs(self, n: int, seed: int) -> list[tuple[str, str]]:
        """``n`` fine-tuning pairs (Lisa's control trains its 'alignment' state on these)."""
        pairs = self._pairs()
        idx = torch.randint(0, len(pairs), (n,), generator=generator(seed, "recipe-examples"))
        return [pairs[i] for i in idx.tolist()]

    def batches(
        self, tokenizer: Any, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(input_ids, attention_mask, labels)`` per step; the order depends only on ``seed``."""
        pairs, g = self._pairs(), generator(seed, "recipe-data")
        for _ in range(self.steps):
            idx = torch.randint(0, len(pairs), (self.batch_size,), generator=g)
            yield encode_pairs(
                tokenizer,
                [pairs[i] for i in idx.tolist()],
                chat=self.chat,
                max_length=self.max_length,
            )

    def wrap(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        """``model`` with LoRA adapters (``lora_rank > 0``, initialised from ``seed``), or itself."""
        if not self.lora_rank:
            return model
        peft = require("peft", "peft", "LoRA fine-tuning")
        targets: Any = (
            self.lora_targets
            if self.lora_targets == "all-linear"
            else [t.strip() for t in self.lora_targets.split(",")]
        )
        fan_in_fan_out = getattr(model.config, "model_type", "") == "gpt2"
        cfg = peft.LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=0.0,
            target_modules=targets,
            fan_in_fan_out=fan_in_fan_out,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(generator(seed, "recipe-lora").initial_seed()) % (2**31))
            return peft.get_peft_model(model, cfg)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The optimizer over the trainable tensors."""
        params = [p for p in model.parameters() if p.requires_grad]
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        aligned: torch.nn.Module,
        tokenizer: Any,
        *,
        seed: int,
        strategies: Sequence[Any] = (),
        on_step: Callable[[int, torch.nn.Module], None] | None = None,
        progress: bool = False,
    ) -> torch.nn.Module:
        """Fine-tune a copy of ``aligned`` with ``strategies`` attached (in the order given); ``on_step(t,
        model)`` after each update. Returns the fine-tuned model (post-hoc defenses applied)."""
        model = self.wrap(copy.deepcopy(aligned), seed)
        model.train()
        opt = self.make_optimizer(model)
        attached = []
        try:
            for s in strategies:
                attached.append(s.attach(model, opt))
            bar = tqdm(
                self.batches(tokenizer, seed),
                total=self.steps,
                desc=f"fine-tune (seed {seed})",
                disable=not progress,
                leave=False,
            )
            for t, (ids, mask, labels) in enumerate(bar, 1):
                opt.zero_grad(set_to_none=True)
                lm_loss(model, ids, mask, labels).backward()
                opt.step()
                if on_step is not None:
                    on_step(t, model)
            model.eval()
            for s in attached:
                s.finish()
        finally:
            for s in attached:
                s.detach()
        return model
