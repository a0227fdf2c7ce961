"""Probe sets: the prompts on which activations are read.

A :class:`Probes` holds prompts (strings or token ids), optional labels, and a **position
rule** saying which token positions of each prompt a statistic reads:

- ``"last"``: the last real token (padding-aware; the default);
- ``"mean"``: the mean over the prompt's real tokens;
- a boolean mask ``[n_prompts, n_pos]`` chosen by the user (positions beyond a prompt's length
  are ignored).

Prompts are right-padded: with a causal model, a real token never attends to padding, so a
padded batch gives exactly the statistics of the prompts one by one.

Example:
    >>> probes = Probes(["how do I pick a lock", "how do I bake bread"])
    >>> probes
    Probes(2 prompts, position='last')
"""

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, no_type_check

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from revlens.errors import ProbeError, SiteError
from revlens.modes import POSITION_RULES, PositionRuleName

__all__ = ["POSITION_RULES", "PositionRule", "ProbeBatch", "Probes", "TokenizedProbes"]

PositionRule = PositionRuleName | Bool[Tensor, "prompt pos"]


@dataclass
class ProbeBatch:
    """A right-padded batch of probe prompts.

    Attributes:
        tokens: token ids, right-padded with the pad id.
        last_index: index of each prompt's last real token.
        weights: per-position read-out weights (each row sums to 1) from the position rule.
        indices: indices of these prompts in the probe set.
        labels: optional per-prompt labels.
    """

    tokens: Int[Tensor, "batch pos"]
    last_index: Int[Tensor, " batch"]
    weights: Float[Tensor, "batch pos"]
    indices: Int[Tensor, " batch"]
    labels: list[Any] | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: Any) -> "ProbeBatch":
        """The batch on ``device``."""
        return ProbeBatch(self.tokens.to(device), self.last_index.to(device), self.weights.to(device),
                          self.indices, self.labels)


class TokenizedProbes:
    """Probes tokenized for one tokenizer: padded ids, lengths and position weights."""

    def __init__(self, tokens: Tensor, lengths: Tensor, weights: Tensor, *, labels: list[Any] | None,
                 position: str, tokenizer_id: str, texts: list[str] | None) -> None:
        self.tokens = tokens
        self.lengths = lengths
        self.weights = weights
        self.labels = labels
        self.position = position
        self.tokenizer_id = tokenizer_id
        self.texts = texts

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def batches(self, batch_size: int) -> Iterator[ProbeBatch]:
        """Yield :class:`ProbeBatch` es, trimmed to the longest prompt of each batch."""
        if batch_size < 1:
            raise ProbeError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            sl = slice(start, min(start + batch_size, len(self)))
            width = int(self.lengths[sl].max())
            yield ProbeBatch(
                tokens=self.tokens[sl, :width],
                last_index=self.lengths[sl] - 1,
                weights=self.weights[sl, :width],
                indices=torch.arange(sl.start, sl.stop),
                labels=self.labels[sl] if self.labels is not None else None,
            )

    def fingerprint(self) -> str:
        """Content hash of token ids and position weights."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.tokens.numpy().tobytes())
        h.update(self.lengths.numpy().tobytes())
        h.update(self.weights.to(torch.float64).numpy().tobytes())
        return h.hexdigest()


def _tokenizer_id(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    h = hashlib.blake2b(json.dumps(sorted(vocab.items())).encode(), digest_size=8)
    return f"{type(tokenizer).__name__}:{len(vocab)}:{h.hexdigest()}"


class Probes:
    """A probe set: prompts, optional labels, and a position rule.

    Args:
        prompts: strings, or token-id sequences (lists of ints / a 2-D tensor without padding).
        labels: optional per-prompt labels.
        position: ``"last"``, ``"mean"``, or a boolean mask ``[n_prompts, n_pos]``.

    Raises:
        ProbeError: empty set, or labels of the wrong length.
        SiteError: unknown position rule.
    """

    @no_type_check  # validates its own arguments (typed errors)
    def __init__(self, prompts: Sequence[Any] | Tensor, *, labels: Sequence[Any] | None = None,
                 position: PositionRule = "last") -> None:
        if isinstance(prompts, Tensor):
            if prompts.ndim != 2:
                raise ProbeError(f"token tensor must be 2-D [prompt, pos], got shape {tuple(prompts.shape)}")
            prompts = [row.tolist() for row in prompts]
        items = list(prompts)
        if not items:
            raise ProbeError("the probe set is empty; give at least one prompt")
        self.is_text = all(isinstance(p, str) for p in items)
        if not self.is_text and not all(isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p) for p in items):
            raise ProbeError("prompts must all be strings or all be sequences of token ids")
        empty = [i for i, p in enumerate(items) if len(p) == 0]
        if empty:
            raise ProbeError(f"prompt {empty[0]} is empty")
        if self.is_text:
            for i, p in enumerate(items):
                try:
                    p.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ProbeError(f"prompt {i} ({p[:40]!r}) is not valid text: {exc.reason} at {exc.start}") from None
        if labels is not None and len(labels) != len(items):
            raise ProbeError(f"got {len(labels)} labels for {len(items)} prompts")
        if isinstance(position, str) and position not in POSITION_RULES:
            raise SiteError(f"unknown position rule {position!r}; valid: 'last', 'mean', or a bool mask tensor")
        if isinstance(position, Tensor):
            if position.dtype != torch.bool or position.ndim != 2 or position.shape[0] != len(items):
                raise SiteError(
                    f"a position mask must be a bool tensor [n_prompts={len(items)}, n_pos]; "
                    f"got {position.dtype} {tuple(position.shape)}"
                )
        elif not isinstance(position, str):
            raise SiteError(f"unknown position rule {position!r}; valid: 'last', 'mean', or a bool mask tensor")
        self.prompts = items
        self.labels = list(labels) if labels is not None else None
        self.position = position

    @classmethod
    def from_jsonl(cls, path: Union[str, "os.PathLike[str]"], *, position: PositionRule = "last") -> "Probes":
        """One JSON object per line: ``{"text": ...}`` and optionally ``"label"``."""
        p = Path(path)
        if not p.is_file():
            raise ProbeError(f"probe file {p} does not exist")
        texts, labels = [], []
        try:
            content = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ProbeError(f"probe file {p} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProbeError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ProbeError(f'{p}:{lineno}: expected an object with a "text" string')
            texts.append(obj["text"])
            labels.append(obj.get("label"))
        if not texts:
            raise ProbeError(f"probe file {p} holds no prompts")
        return cls(texts, labels=labels if any(lab is not None for lab in labels) else None, position=position)

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        pos = self.position if isinstance(self.position, str) else f"mask{tuple(self.position.shape)}"
        lab = f", {len(set(map(str, self.labels)))} labels" if self.labels else ""
        return f"Probes({len(self)} prompts, position={pos!r}{lab})"

    def with_position(self, position: PositionRule) -> "Probes":
        """The same prompts under another position rule."""
        return Probes(self.prompts, labels=self.labels, position=position)

    def tokenize(self, tokenizer: Any, *, n_ctx: int | None = None) -> TokenizedProbes:
        """Tokenize (right padding) and build position weights.

        Raises:
            ProbeError: a prompt longer than the context, token ids outside the vocabulary, or
                text the tokenizer mostly does not know (a probe set for another tokenizer).
        """
        vocab_size = len(tokenizer)
        unk = getattr(tokenizer, "unk_token_id", None)
        if self.is_text:
            ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in self.prompts]
            if unk is not None:
                for i, row in enumerate(ids):
                    if row and sum(t == unk for t in row) * 2 > len(row):
                        raise ProbeError(
                            f"prompt {i} ({self.prompts[i][:60]!r}) is mostly unknown tokens for this "
                            "tokenizer; was the probe set written for another model?"
                        )
        else:
            ids = [list(p) for p in self.prompts]
            for i, row in enumerate(ids):
                bad = [t for t in row if t < 0 or t >= vocab_size]
                if bad:
                    raise ProbeError(f"prompt {i} has token id {bad[0]} outside the vocabulary (size {vocab_size})")
        for i, row in enumerate(ids):
            if not row:
                raise ProbeError(f"prompt {i} tokenizes to nothing")
            if n_ctx is not None and len(row) > n_ctx:
                raise ProbeError(f"prompt {i} has {len(row)} tokens; the model's context limit is {n_ctx}")
        lengths = torch.tensor([len(r) for r in ids], dtype=torch.long)
        width = int(lengths.max())
        pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
        tokens = torch.full((len(ids), width), int(pad), dtype=torch.long)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        real = torch.arange(width)[None, :] < lengths[:, None]
        if isinstance(self.position, Tensor):
            mask = torch.zeros_like(real)
            w = min(width, self.position.shape[1])
            mask[:, :w] = self.position[:, :w]
            mask &= real
            empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise SiteError(f"position mask selects no real token of prompt {empty[0]}")
            weights = mask.to(torch.float64)
            position_name = "mask"
        elif self.position == "last":
            weights = torch.zeros(len(ids), width, dtype=torch.float64)
            weights[torch.arange(len(ids)), lengths - 1] = 1.0
            position_name = "last"
        else:
            weights = real.to(torch.float64)
            position_name = "mean"
        weights = weights / weights.sum(dim=1, keepdim=True)
        texts = list(self.prompts) if self.is_text else None
        return TokenizedProbes(tokens, lengths, weights, labels=self.labels, position=position_name,
                               tokenizer_id=_tokenizer_id(tokenizer), texts=texts)
