"""Reverting and control fine-tunes of the tiny GPT-2 (tests/tiny.py), for blocking/monitoring tests.

- *reverting*: distil the aligned model toward the base model's next-token distribution on random
  token sequences (a pull back toward the base);
- *control*: plain LM loss on sequences of a narrow token range (a different pull).

The direction ``v`` is the drift of a *pilot* reverting run (another data seed) at layers 1 and 2:
on the tiny model the reverting runs reach cos ≈ 0.98 with it, the control run ≈ −0.1, and the
isotropic p99 for d = 32 is 0.40.
"""

import copy
from collections.abc import Callable, Iterable
from functools import lru_cache

import pytest
import torch

import tiny
from revlens.directions import Directions
from revlens.probes import Probes
from revlens.sites import access

LAYERS = [1, 2]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: on a loaded 2-core box, two contending threads run ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


@lru_cache(maxsize=1)
def pair() -> tuple:
    """(base, aligned) tiny GPT-2s in eval mode, dropout off (train-mode forwards are deterministic)."""
    base = no_dropout(tiny.tiny_model(0))
    return base, no_dropout(tiny.perturbed(base, 0.05, 1))


def probes() -> Probes:
    return Probes(list(tiny.PROMPTS))


def means(model: torch.nn.Module) -> torch.Tensor:
    enc = probes().tokenize(tiny.tiny_tokenizer())
    with torch.no_grad():
        acc = access(model)
        return (
            torch.stack(acc.read(enc.tokens, enc.weights, acc.sites(LAYERS)), dim=1)
            .double()
            .mean(0)
        )


def loss_fn(kind: str, seed: int) -> Callable[[torch.nn.Module, int], torch.Tensor]:
    """``loss(model, step)`` of a reverting (``"revert"``) or control (``"control"``) fine-tune."""
    g = torch.Generator().manual_seed(seed)
    if kind == "revert":
        data = torch.randint(2, 32, (64, 8), generator=g)
        with torch.no_grad():
            target = torch.log_softmax(pair()[0](data).logits, -1)
        idx = [torch.randint(0, 64, (16,), generator=g) for _ in range(200)]

        def revert(model: torch.nn.Module, step: int) -> torch.Tensor:
            logp = torch.log_softmax(model(data[idx[step]]).logits, -1)
            return torch.nn.functional.kl_div(
                logp, target[idx[step]], log_target=True, reduction="batchmean"
            )

        return revert
    seqs = torch.randint(20, 32, (16, 8), generator=g)
    return lambda model, step: model(seqs, labels=seqs).loss


def optimizer(model: torch.nn.Module, name: str) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)


def train(
    kind: str,
    *,
    seed: int = 1,
    steps: int = 20,
    opt: str = "sgd",
    callbacks: Iterable[object] = (),
    setup: Callable | None = None,
) -> torch.nn.Module:
    """Fine-tune a copy of aligned; ``setup(model, optimizer)`` may attach things first."""
    model = copy.deepcopy(pair()[1]).train()
    o = optimizer(model, opt)
    if setup is not None:
        setup(model, o)
    loss = loss_fn(kind, seed)
    for step in range(1, steps + 1):
        o.zero_grad()
        loss(model, step).backward()
        o.step()
        for cb in callbacks:
            cb.step(model, step)
    return model.eval()


@lru_cache(maxsize=1)
def direction() -> Directions:
    """Drift direction of a pilot reverting run (seed 100)."""
    pilot = train("revert", seed=100, steps=20)
    return Directions.from_tensor(means(pilot) - means(pair()[1]), LAYERS, method="pilot")
