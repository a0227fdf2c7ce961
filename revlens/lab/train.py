"""The lab's three training phases, as plain PyTorch loops.

Randomness flows only through explicit ``torch.Generator`` objects seeded from the phase's seed
(model init, data), and the model has no dropout, so a seed fixes every number on a machine.

Callbacks passed to :func:`finetune` may implement any of (all optional)::

    on_train_begin(model, optimizer)       # e.g. wrap optimizer.step (blocking)
    on_step_end(step, model, optimizer)    # after the update (monitoring)
    on_checkpoint(step, path, model)       # after step's checkpoint was saved (out_dir given)
    on_train_end(model)

A :class:`revlens.ReversionMonitor` may be passed as a callback too: it checks after each step.
"""

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel

from revlens.errors import ConfigError
from revlens.lab.config import LabConfig
from revlens.lab.language import (
    BOS,
    EOS,
    PAD,
    VOCAB,
    Example,
    build_tokenizer,
    sample_align,
    sample_pretrain,
)
from revlens.lab.metrics import Evaluator
from revlens.lab.modeling import build_model, save_checkpoint
from revlens.lab.tracks import sample_finetune

__all__ = [
    "LAB_THREADS",
    "FinetuneResult",
    "align",
    "finetune",
    "lab_threads",
    "pretrain",
    "train_pair",
]

log = logging.getLogger(__name__)
_IDS = {w: i for i, w in enumerate(VOCAB)}

# Offsets that derive independent generator seeds for each phase from the user's seed.
_PRETRAIN_DATA, _PRETRAIN_INIT, _ALIGN_DATA, _FT_DATA = 0, 1_000_003, 2_000_003, 3_000_017


LAB_THREADS = 1
"""Torch threads of ``revlens replicate`` and ``make demo`` (:func:`lab_threads`). The lab's model is
tiny (4 layers, d 128): one thread is as fast as several on an idle machine and several times faster
on a shared one (30 lab fine-tuning steps on the shared 2-core box, load ~8: 2.2–3.1 s wall with one
thread, 16–29 s with torch's default of two), and the numbers no longer depend on the core count
(a float32 sum over two threads is not the sum over one: the weights after 30 steps differ by up to
1.5e-3)."""


@contextmanager
def lab_threads(threads: int = LAB_THREADS) -> Iterator[None]:
    """Run the block with ``threads`` torch (intra-op) threads, restoring the count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _gen(seed: int, offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 7_919 + offset)


def encode_examples(examples: Sequence[Example], *, answer_only: bool, n_ctx: int = 24):
    """Token ids [B, n_ctx] (``<bos>`` text ``<eos>``, right-padded), attention mask and labels
    (-100 on padding, and on the prompt when ``answer_only``)."""
    ids = torch.full((len(examples), n_ctx), _IDS[PAD], dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, ex in enumerate(examples):
        p = [_IDS[BOS], *(_IDS[w] for w in ex.prompt.split())]
        a = [*(_IDS[w] for w in ex.answer.split()), _IDS[EOS]]
        seq = p + a
        if len(seq) > n_ctx:
            raise ConfigError(f"exchange longer than n_ctx={n_ctx}: {ex.text!r}")
        ids[i, : len(seq)] = torch.tensor(seq)
        start = len(p) if answer_only and ex.prompt else 1
        labels[i, start : len(seq)] = ids[i, start : len(seq)]
    lengths = (ids != _IDS[PAD]).sum(1, keepdim=True)
    width = int(lengths.max())  # trim shared padding: the loop's cost scales with it
    mask = (torch.arange(width)[None] < lengths).long()
    return ids[:, :width], mask, labels[:, :width]


def _step(model, optimizer, examples, *, answer_only: bool, n_ctx: int) -> float:
    ids, mask, labels = encode_examples(examples, answer_only=answer_only, n_ctx=n_ctx)
    logits = model(ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def pretrain(config: LabConfig, *, seed: int, progress: bool = True) -> GPT2LMHeadModel:
    """Pre-train a fresh model on the dominant mix (AdamW, warmup + cosine, loss on all tokens)."""
    model = build_model(
        n_layer=config.n_layer,
        d_model=config.d_model,
        n_head=config.n_head,
        n_ctx=config.n_ctx,
        generator=_gen(seed, _PRETRAIN_INIT),
    )
    model.train()
    g = _gen(seed, _PRETRAIN_DATA)
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.pretrain_lr, weight_decay=config.pretrain_weight_decay
    )
    total, warm = config.pretrain_steps, max(1, config.pretrain_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    bar = tqdm(range(total), desc=f"pre-train (seed {seed})", disable=not progress, leave=False)
    for _ in bar:
        batch = sample_pretrain(
            config.pretrain_batch,
            g,
            harmful_share=config.harmful_share,
            task_share=config.task_share,
            topic_alpha=config.topic_alpha,
            harm_max=config.harm_max,
            harm_min=config.harm_min,
        )
        loss = _step(model, opt, batch, answer_only=False, n_ctx=config.n_ctx)
        sched.step()
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    model.eval()
    return model


def align(
    base: GPT2LMHeadModel,
    config: LabConfig,
    *,
    seed: int,
    evaluator: Evaluator | None = None,
    progress: bool = True,
) -> tuple[GPT2LMHeadModel, int]:
    """Copy ``base`` and teach refusals (AdamW, answer-only loss) until held-out harm <= target.

    Returns the aligned model and the number of steps taken. Alignment batches hold refusals
    and benign exchanges only, never a harmful answer."""
    evaluator = evaluator or Evaluator(build_tokenizer())
    model = copy.deepcopy(base)
    model.train()
    g = _gen(seed, _ALIGN_DATA)
    opt = torch.optim.AdamW(model.parameters(), lr=config.align_lr, weight_decay=0.0)
    bar = tqdm(
        range(1, config.align_max_steps + 1),
        desc=f"align (seed {seed})",
        disable=not progress,
        leave=False,
    )
    for step in bar:
        batch = sample_align(config.align_batch, g, refusal_share=config.refusal_share)
        _step(model, opt, batch, answer_only=True, n_ctx=config.n_ctx)
        harm = evaluator(model)["harm_rate"]
        bar.set_postfix(harm=f"{harm:.2f}", refresh=False)
        if harm <= config.align_target:
            model.eval()
            return model, step
    raise ConfigError(
        f"alignment did not reach harm <= {config.align_target} within "
        f"{config.align_max_steps} steps (last {harm:.3f}); raise align_max_steps or align_lr"
    )


def train_pair(config: LabConfig, *, seed: int, progress: bool = True):
    """Pre-train then align: ``(base, aligned, align_steps)`` for pre-training seed ``seed``."""
    base = pretrain(config, seed=seed, progress=progress)
    aligned, n = align(base, config, seed=seed, progress=progress)
    return base, aligned, n


@dataclass
class FinetuneResult:
    """The fine-tuned model (a PEFT model on the lora track), its saved checkpoints and losses."""

    model: torch.nn.Module
    checkpoints: dict[int, Path] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


class _MonitorCallback:
    """A :class:`~revlens.monitor.ReversionMonitor` in the lab's callback protocol."""

    def __init__(self, monitor: object) -> None:
        self.monitor = monitor

    def on_step_end(self, step: int, model, optimizer) -> None:
        self.monitor.step(model, step)  # type: ignore[attr-defined]


def _adapt(callbacks: Iterable[object]) -> list[object]:
    from revlens.monitor import ReversionMonitor

    return [_MonitorCallback(cb) if isinstance(cb, ReversionMonitor) else cb for cb in callbacks]


def _call(callbacks: Iterable[object], name: str, *args) -> None:
    for cb in callbacks:
        fn: Callable | None = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


def make_optimizer(model: torch.nn.Module, config: LabConfig, lr: float | None = None):
    """The fine-tuning optimizer over the trainable parameters (all of them, or the LoRA adapters)."""
    lr = config.ft_lr if lr is None else lr
    params = [p for p in model.parameters() if p.requires_grad]
    if config.ft_optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.ft_momentum)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


LORA_TARGETS = (
    "c_attn",
    "c_proj",
    "c_fc",
)  # every linear layer of the lab's GPT-2 (attention and MLP)


def with_lora(model: GPT2LMHeadModel, config: LabConfig, *, seed: int):
    """``model`` wrapped in PEFT LoRA adapters (rank ``config.ft_lora_rank``, every linear layer); the
    adapters' random init is seeded from ``seed`` (PEFT draws from torch's global generator, so the
    draw runs inside ``torch.random.fork_rng``: the caller's global state is left as it was)."""
    from revlens.errors import require

    peft = require("peft", "peft", "the lab's lora track")
    lora = peft.LoraConfig(
        r=config.ft_lora_rank,
        lora_alpha=config.ft_lora_alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        fan_in_fan_out=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 7_919 + 4_000_037)
        return peft.get_peft_model(model, lora)


def finetune(
    model: GPT2LMHeadModel,
    config: LabConfig,
    *,
    seed: int,
    steps: int | None = None,
    checkpoint_steps: Sequence[int] | None = None,
    out_dir: Path | None = None,
    callbacks: Sequence[object] = (),
    copy_model: bool = True,
    progress: bool = True,
) -> FinetuneResult:
    """Benign fine-tuning: ``steps`` updates on the track's data (``config.ft_data``; see
    :mod:`revlens.lab.tracks`), full or with LoRA adapters (``config.ft_lora_rank > 0``).

    The data order depends only on ``seed`` (a control run from another start sees the same
    batches). With ``out_dir``, the model (with the tokenizer) is saved to ``out_dir/step-{t}`` at
    each of ``checkpoint_steps`` (default: config's) — adapter-only for LoRA. ``model`` is copied
    first unless ``copy_model=False``.
    """
    steps = config.ft_steps if steps is None else steps
    if not isinstance(steps, int) or steps <= 0:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if checkpoint_steps is None:
        checkpoint_steps = (
            config.replace(ft_steps=steps).steps_to_save
            if config.checkpoint_steps is None
            else [s for s in config.checkpoint_steps if s <= steps]
        )
    save_at = set(int(s) for s in checkpoint_steps)
    if any(not 1 <= s <= steps for s in save_at):
        raise ConfigError(f"checkpoint_steps must lie in 1..{steps}, got {sorted(save_at)}")
    if copy_model:
        model = copy.deepcopy(model)
    if config.ft_lora_rank:
        model = with_lora(model, config, seed=seed)
    callbacks = _adapt(callbacks)
    model.train()
    g = _gen(seed, _FT_DATA)
    opt = make_optimizer(model, config)
    tokenizer = build_tokenizer() if out_dir is not None else None
    result = FinetuneResult(model)
    _call(callbacks, "on_train_begin", model, opt)
    bar = tqdm(
        range(1, steps + 1), desc=f"fine-tune (seed {seed})", disable=not progress, leave=False
    )
    for step in bar:
        loss = _step(
            model,
            opt,
            sample_finetune(config, config.ft_batch, g),
            answer_only=True,
            n_ctx=config.n_ctx,
        )
        result.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if out_dir is not None and step in save_at:
            path = Path(out_dir) / f"step-{step}"
            save_checkpoint(model, path, tokenizer)
            result.checkpoints[step] = path
            _call(callbacks, "on_checkpoint", step, path, model)
        _call(callbacks, "on_step_end", step, model, opt)
    model.eval()
    _call(callbacks, "on_train_end", model)
    return result
