"""Supervised fine-tuning on chat pairs for the real track: batches, LoRA, a seeded AdamW loop.

One loop serves alignment and the benign runs: ``(question, answer)`` pairs in the model's own chat
template (default system prompt), loss on the answer tokens only, right-padded batches; every
random draw from explicit generators, so a run is a function of its seed (bit-for-bit on one
machine with a fixed thread count, see ``docs/lab.md``).
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch

from revlens.errors import require
from revlens.evaluate.harm import chat_pair_batch

__all__ = ["LORA_TARGETS", "Cycler", "deterministic", "sft", "with_lora"]

LORA_TARGETS = ("q_proj", "v_proj", "o_proj", "down_proj")
"""The modules the real track's LoRA adapters train (alignment and the LoRA benign runs)."""


def deterministic(threads: int = 1) -> None:
    """Fixed torch thread count and deterministic algorithms (what bit-for-bit needs on CPU)."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def with_lora(
    model: Any,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    seed: int = 0,
    targets: Sequence[str] = LORA_TARGETS,
) -> Any:
    """``model`` wrapped in PEFT LoRA adapters (dropout 0; A initialised from ``seed``)."""
    peft = require("peft", "peft", "the real track's LoRA adapters")
    torch.manual_seed(seed)  # PEFT draws lora_A from the global generator
    cfg = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, cfg)


def sft(
    model: Any,
    tok: Any,
    sampler: Callable[[torch.Generator], list[tuple[str, str, bool]]],
    steps: int,
    *,
    lr: float,
    seed: int,
    clip: float = 1.0,
    on_step: Callable[[int, float], bool | None] | None = None,
    progress: bool = False,
    desc: str = "sft",
) -> list[float]:
    """``steps`` AdamW steps (no weight decay, constant lr, grad-norm clip) on the trainable
    parameters (batches go to their device; the sampler's generator stays on the CPU);
    ``sampler(generator)`` gives each batch's ``(question, answer, end)`` triples.
    ``on_step(step, loss)`` runs after each step (checkpointing, evaluation); returning ``True``
    stops the loop. Returns the losses."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        model.train()
        triples = sampler(gen)
        ids, mask, lab = (
            t.to(params[0].device)  # the model's device (a no-op on the CPU)
            for t in chat_pair_batch(
                tok, [(q, a) for q, a, _ in triples], end=[e for _, _, e in triples]
            )
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.eval()
        if on_step is not None and on_step(step, losses[-1]):
            break
    model.eval()
    return losses


class Cycler:
    """Draws items without replacement, reshuffling (with the caller's generator) each epoch."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items, self.order = list(items), []  # type: ignore[var-annotated]

    def take(self, n: int, gen: torch.Generator) -> list[Any]:
        """The next ``n`` items."""
        out = []
        while len(out) < n:
            if not self.order:
                self.order = torch.randperm(len(self.items), generator=gen).tolist()
            out.append(self.items[self.order.pop(0)])
        return out
