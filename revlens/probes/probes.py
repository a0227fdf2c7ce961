"""The :class:`Probes` class: prompts, labels, a position rule; tokenized for one tokenizer."""

import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, TypeAlias, Union, no_type_check

import torch
from torch import Tensor

from revlens._types import PathLike, TokenizerInput
from revlens.errors import ProbeError
from revlens.probes.batch import TokenizedProbes, tokenizer_id
from revlens.probes.chat import ChatTemplate, TemplateInput, check_conversation
from revlens.probes.files import read_jsonl
from revlens.probes.positions import PositionRule, check_position, position_name, position_weights

__all__ = ["Probes", "ProbesInput"]


class Probes:
    """A probe set: prompts, optional labels, and a position rule.

    Args:
        prompts: strings, or token-id sequences (lists of ints / a 2-D tensor without padding).
        labels: optional per-prompt labels.
        position: ``"last"``, ``"mean"``, a boolean mask ``[n_prompts, n_pos]``, or (chat probes)
            ``("post_instruction", k)``.

    Raises:
        ProbeError: empty set, or labels of the wrong length.
        SiteError: unknown position rule.
    """

    @no_type_check  # validates its own arguments (typed errors)
    def __init__(
        self,
        prompts: Sequence[Any] | Tensor,
        *,
        labels: Sequence[Any] | None = None,
        position: PositionRule = "last",
    ) -> None:
        if isinstance(prompts, Tensor):
            if prompts.ndim != 2:
                raise ProbeError(
                    f"token tensor must be 2-D [prompt, pos], got shape {tuple(prompts.shape)}"
                )
            prompts = [row.tolist() for row in prompts]
        items = list(prompts)
        if not items:
            raise ProbeError("the probe set is empty; give at least one prompt")
        self.is_text = all(isinstance(p, str) for p in items)
        if not self.is_text and not all(
            isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p) for p in items
        ):
            raise ProbeError("prompts must all be strings or all be sequences of token ids")
        empty = [i for i, p in enumerate(items) if len(p) == 0]
        if empty:
            raise ProbeError(f"prompt {empty[0]} is empty")
        if self.is_text:
            for i, p in enumerate(items):
                try:
                    p.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ProbeError(
                        f"prompt {i} ({p[:40]!r}) is not valid text: {exc.reason} at {exc.start}"
                    ) from None
        if labels is not None and len(labels) != len(items):
            raise ProbeError(f"got {len(labels)} labels for {len(items)} prompts")
        self.prompts = items
        self.labels = list(labels) if labels is not None else None
        self.conversations: list[list[dict[str, str]]] | None = getattr(self, "conversations", None)
        self.template: ChatTemplate | None = getattr(self, "template", None)
        self.info: list[dict[str, Any]] | None = getattr(
            self, "info", None
        )  # per-prompt extras (prompt sets)
        # where the prompts come from (revlens.datasets: package, version, file, sha256, licence); reports record it
        self.provenance: list[dict[str, Any]] | None = getattr(self, "provenance", None)
        self.position = check_position(position, len(items), self.conversations is not None)

    # ------------------------------------------------------------------ chat
    @classmethod
    @no_type_check  # validates its own arguments (typed errors)
    def from_chat(
        cls,
        conversations: Sequence[Any],
        *,
        system: str | None = None,
        template: TemplateInput | None = None,
        labels: Sequence[Any] | None = None,
        position: PositionRule = "last",
    ) -> "Probes":
        """Chat probes: each item a user message (a string) or a conversation (a list of
        ``{"role", "content"}`` messages), rendered with a chat template when tokenized.

        Args:
            conversations: strings (one user turn each) or message lists.
            system: a system prompt put before every conversation that has none.
            template: the chat template (Jinja text, a file, a tokenizer or its dir, a
                :class:`~revlens.probes.chat.ChatTemplate`); default: the history's, else the tokenizer's.
            labels, position: as for :class:`Probes`.
        """
        items = list(conversations)
        if not items:
            raise ProbeError("the probe set is empty; give at least one prompt")
        if system is not None and not isinstance(system, str):
            raise ProbeError(f"system must be a string, got {type(system).__name__}")
        convs = []
        for i, item in enumerate(items):
            conv = (
                [{"role": "user", "content": item}]
                if isinstance(item, str)
                else check_conversation(item, f"prompt {i}")
            )
            if system is not None and conv[0]["role"] != "system":
                conv = [{"role": "system", "content": system}, *conv]
            convs.append(conv)
        shown = [
            next(m["content"] for m in reversed(c) if m["role"] == "user") or "<empty>"
            for c in convs
        ]
        self = cls.__new__(cls)
        self.conversations = convs
        self.template = ChatTemplate.resolve(template) if template is not None else None
        cls.__init__(self, shown, labels=labels, position=position)
        return self

    @property
    def is_chat(self) -> bool:
        """Whether the prompts are conversations rendered with a chat template."""
        return self.conversations is not None

    def _like(
        self,
        position: Any = None,
        template: TemplateInput | None = None,
        keep: Sequence[int] | None = None,
    ) -> "Probes":
        idx = list(range(len(self))) if keep is None else list(keep)
        labels = [self.labels[i] for i in idx] if self.labels is not None else None
        pos = self.position if position is None else position
        if isinstance(pos, Tensor) and keep is not None:
            pos = pos[idx]
        if not self.is_chat:
            out = Probes([self.prompts[i] for i in idx], labels=labels, position=pos)
        else:
            out = Probes.from_chat(
                [self.conversations[i] for i in idx],
                labels=labels,
                position=pos,  # type: ignore[index]
                template=template if template is not None else self.template,
            )
        out.info = [self.info[i] for i in idx] if self.info is not None else None
        out.provenance = self.provenance
        return out

    def with_position(self, position: PositionRule) -> "Probes":
        """The same prompts under another position rule."""
        return self._like(position=position)

    def with_template(self, template: TemplateInput | None) -> "Probes":
        """The same chat prompts rendered with another template (Jinja text, file, tokenizer, dir)."""
        if not self.is_chat:
            raise ProbeError("with_template: these probes are plain text, not chat conversations")
        return self._like(template=ChatTemplate.resolve(template))

    def subset(self, indices: Sequence[int]) -> "Probes":
        """The probes at ``indices`` (labels, position mask and template follow)."""
        bad = [i for i in indices if not 0 <= int(i) < len(self)]
        if bad or not len(indices):
            raise ProbeError(
                f"subset: indices must be a non-empty list in [0, {len(self)}); got {list(indices)[:5]}"
            )
        return self._like(keep=[int(i) for i in indices])

    def where(self, label: Hashable) -> "Probes":
        """The probes labelled ``label`` (e.g. ``"harmful"``)."""
        idx = [i for i, lab in enumerate(self.labels or []) if lab == label]
        if not idx:
            raise ProbeError(
                f"no probe is labelled {label!r}; labels: {sorted(set(map(str, self.labels or [])))}"
            )
        return self.subset(idx)

    # ------------------------------------------------------------------ files
    @classmethod
    def from_jsonl(
        cls,
        path: Union[str, "os.PathLike[str]"],
        *,
        position: PositionRule = "last",
        system: str | None = None,
        template: TemplateInput | None = None,
    ) -> "Probes":
        """One JSON object per line: ``{"text": ...}`` (plain text), or chat lines
        ``{"messages": [...]}`` / ``{"prompt": ...}`` (one user turn, optional ``"system"``);
        optionally ``"label"``. A file is all plain or all chat."""
        p = Path(path)
        rows = read_jsonl(p)
        kinds = {"text" if k == "text" else "chat" for _, _, k in rows}
        if len(kinds) > 1:
            raise ProbeError(
                f"{p}: mixes plain 'text' lines with chat lines ('messages' / 'prompt'); use one kind"
            )
        labels = [obj.get("label") for _, obj, _ in rows]
        labels_or_none = labels if any(lab is not None for lab in labels) else None
        if kinds == {"text"}:
            return cls(
                [obj["text"] for _, obj, _ in rows], labels=labels_or_none, position=position
            )
        convs = []
        for lineno, obj, kind in rows:
            conv = (
                check_conversation(obj["messages"], f"{p}:{lineno}")
                if kind == "messages"
                else [{"role": "user", "content": obj["prompt"]}]
            )
            sys_prompt = obj.get("system", system)
            if sys_prompt is not None and conv[0]["role"] != "system":
                conv = [{"role": "system", "content": str(sys_prompt)}, *conv]
            convs.append(conv)
        return cls.from_chat(convs, labels=labels_or_none, position=position, template=template)

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        pos = (
            self.position
            if isinstance(self.position, str)
            else (
                f"mask{tuple(self.position.shape)}"
                if isinstance(self.position, Tensor)
                else position_name(self.position)
            )
        )
        lab = f", {len(set(map(str, self.labels)))} labels" if self.labels else ""
        kind = " chat" if self.is_chat else ""
        return f"Probes({len(self)}{kind} prompts, position={pos!r}{lab})"

    # ------------------------------------------------------------------ tokenize
    def tokenize(
        self,
        tokenizer: TokenizerInput,
        *,
        n_ctx: int | None = None,
        template: TemplateInput | None = None,
    ) -> TokenizedProbes:
        """Tokenize (right padding) and build position weights. Chat probes are rendered with
        ``template`` (default: the probes' own, else the tokenizer's) and tokenized once.

        Raises:
            ProbeError: a prompt longer than the context, token ids outside the vocabulary, text
                the tokenizer mostly does not know (a probe set for another tokenizer), a chat
                probe set without a template.
        """
        used: ChatTemplate | None = None
        n_post = None
        rendered = None
        if self.is_chat:
            used = ChatTemplate.resolve(
                self.template if self.template is not None else template, tokenizer
            )
            outs = [
                used.render(tokenizer, c, where=f"prompt {i}")
                for i, c in enumerate(self.conversations)
            ]  # type: ignore[arg-type]
            ids, rendered = [o.ids for o in outs], [o.text for o in outs]
            n_post = torch.tensor(
                [-1 if o.n_post is None else o.n_post for o in outs], dtype=torch.long
            )
            self._check_unknown(tokenizer, ids, rendered)
        elif self.is_text:
            ids = [text_ids(tokenizer, p) for p in self.prompts]
            self._check_unknown(tokenizer, ids, self.prompts)
        else:
            ids = [list(p) for p in self.prompts]
            for i, row in enumerate(ids):
                bad = [t for t in row if t < 0 or t >= len(tokenizer)]
                if bad:
                    raise ProbeError(
                        f"prompt {i} has token id {bad[0]} outside the vocabulary (size {len(tokenizer)})"
                    )
        for i, row in enumerate(ids):
            if not row:
                raise ProbeError(f"prompt {i} tokenizes to nothing")
            if n_ctx is not None and len(row) > n_ctx:
                raise ProbeError(
                    f"prompt {i} has {len(row)} tokens; the model's context limit is {n_ctx}"
                )
        lengths = torch.tensor([len(r) for r in ids], dtype=torch.long)
        pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
        tokens = torch.full((len(ids), int(lengths.max())), int(pad), dtype=torch.long)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return TokenizedProbes(
            tokens,
            lengths,
            position_weights(self.position, lengths, n_post),
            labels=self.labels,
            position=position_name(self.position),
            tokenizer_id=tokenizer_id(tokenizer),
            texts=list(self.prompts) if self.is_text else None,
            rendered=rendered,
            template=used.provenance() if used is not None else None,
            n_post=n_post,
            datasets=self.provenance,
        )

    def _check_unknown(self, tokenizer: Any, ids: list[list[int]], shown: Sequence[str]) -> None:
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None:
            return
        for i, row in enumerate(ids):
            if row and sum(t == unk for t in row) * 2 > len(row):
                raise ProbeError(
                    f"prompt {i} ({shown[i][:60]!r}) is mostly unknown tokens for this tokenizer; "
                    "was the probe set written for another model?"
                )


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """A text probe's ids: with the tokenizer's special tokens, except for a text that already
    starts with its BOS token (a conversation rendered by a chat template to a string,
    ``apply_chat_template(tokenize=False)``), which is tokenized as it is — no second BOS; the ids
    then equal ``apply_chat_template(tokenize=True)`` (TransformerLens #1418)."""
    bos = getattr(tokenizer, "bos_token", None)
    starts = isinstance(bos, str) and bool(bos) and text.startswith(bos)
    return list(tokenizer(text, add_special_tokens=not starts)["input_ids"])


ProbesInput: TypeAlias = Probes | Sequence[str] | PathLike
"""What an entry point accepts as probes: a :class:`Probes`, a list of prompts, or a ``.jsonl`` file
(converted once by :func:`revlens.collect.as_probes`, which also fills in a history's default set)."""
