"""Supervised (prompt, answer) pairs: read, validate, encode, and the answer-only language-model loss.

What Lisa's alignment steps and :class:`~revlens.defenses.recipe.FinetuneRecipe`'s user steps train
on. A pair set is a JSONL file of ``{"prompt": ..., "answer": ...}`` records, a list of such
mappings, or a list of ``(prompt, answer)`` tuples. Encoding: the prompt as the tokenizer encodes it
(with its special tokens; rendered as one user turn of the chat template when ``chat=True``, exactly
as chat probes are: :mod:`revlens.probes.chat`), then the answer (``" " + answer``, or the answer
itself after a chat template's assistant header, without special tokens) and the EOS token; labels are ``-100`` on the
prompt and the padding (answer-only loss), rows right-padded.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from revlens.errors import ConfigError, DatasetError

__all__ = ["encode_pairs", "lm_loss", "read_pairs"]


def _pair(item: Any, where: str) -> tuple[str, str]:
    if isinstance(item, dict):
        item = (item.get("prompt"), item.get("answer"))
    if (
        not isinstance(item, (tuple, list))
        or len(item) != 2
        or not all(isinstance(s, str) and s.strip() for s in item)
    ):
        raise DatasetError(
            f"{where}: expected a (prompt, answer) pair of non-empty strings, got {item!r}"
        )
    return str(item[0]), str(item[1])


def read_pairs(value: Any, field: str) -> list[tuple[str, str]]:
    """``value`` (a JSONL path, or a list of mappings / pairs) as a non-empty list of pairs.

    Raises:
        ConfigError: ``value`` is missing (``None``) or of another type.
        DatasetError: the file does not exist, a record is not a pair of non-empty strings, or the
            set is empty (the culprit named with ``field`` and its line).
    """
    if value is None:
        raise ConfigError(
            f"{field}: required — a JSONL file of {{prompt, answer}} records or a list of pairs"
        )
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise DatasetError(f"{field}={str(value)!r} is not a file")
        out = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{i}: not JSON ({exc.msg})") from None
                out.append(_pair(record, f"{path}:{i}"))
    elif isinstance(value, Sequence):
        out = [_pair(item, f"{field}[{i}]") for i, item in enumerate(value)]
    else:
        raise ConfigError(
            f"{field}: expected a JSONL path or a list of pairs, got {type(value).__name__}"
        )
    if not out:
        raise DatasetError(f"{field}: no (prompt, answer) pair")
    return out


def _prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat:  # the same rendering (and ids: no doubled BOS) as chat probes
        from revlens.probes.chat import ChatTemplate

        return list(
            ChatTemplate.resolve(None, tokenizer)
            .render(tokenizer, [{"role": "user", "content": prompt}], where="a fine-tuning prompt")
            .ids
        )
    return list(tokenizer(prompt)["input_ids"])


def encode_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], *, chat: bool = False, max_length: int = 256
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """``(input_ids, attention_mask, labels)`` of ``pairs`` (module docstring); rows longer than
    ``max_length`` keep their first ``max_length`` tokens.

    Raises:
        ConfigError: the tokenizer has no pad / EOS token, or a prompt fills ``max_length``.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None or tokenizer.eos_token_id is None:
        raise ConfigError("encoding (prompt, answer) pairs needs a tokenizer with an EOS token")
    rows, starts = [], []
    for prompt, answer in pairs:
        p = _prompt_ids(tokenizer, prompt, chat)
        if len(p) >= max_length:
            raise ConfigError(
                f"prompt {prompt[:40]!r}... has {len(p)} tokens, max_length={max_length}"
            )
        a = [
            *tokenizer(("" if chat else " ") + answer, add_special_tokens=False)["input_ids"],
            tokenizer.eos_token_id,
        ]
        rows.append((p + a)[:max_length])
        starts.append(len(p))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, start : len(row)] = ids[i, start : len(row)]
    return ids, mask, labels


def lm_loss(model: Any, ids: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy on the labelled positions (answer-only)."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1).to(device),
        ignore_index=-100,
    )
