"""Helpers of the chat / behaviour-metric tests: chat batches of the test families and unit vectors."""

import torch

from revlens.probes import Probes

CHATS = ["w10 w11", "w12 w13 w14 w15 w16", "w20", "w30 w31 w32"]


def chat_batch(lm, chats=CHATS):
    """Chat prompts of different lengths, rendered with the families' template, one right-padded batch."""
    tok = Probes.from_chat(chats).tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    return next(tok.batches(len(tok)))


def unit(d: int, seed: int) -> torch.Tensor:
    """A seeded random unit vector of width ``d``."""
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()
