"""Chat templates: conversations rendered the way a chat model was trained to read them.

Aligned models are prompted through their chat template. revlens renders a conversation with the
tokenizer's own ``apply_chat_template(..., add_generation_prompt=True)`` (Jinja, exactly as
Hugging Face does) and tokenizes the rendered text **once, without adding special tokens**: the
template already writes every special token it wants (``<bos>``, headers), so the ids equal the
template's own (``apply_chat_template(tokenize=True)``; tested) and the BOS is never doubled, as it
is when a rendered string is passed to ``tokenizer(text)`` (which adds its own BOS).

A :class:`ChatTemplate` is the template text plus where it came from and a content hash, so a
report can state which template was used. Base checkpoints often have no template: a history's
chat probes are rendered with the *history's* template (its aligned checkpoint's tokenizer) for
every checkpoint, unless the user gives another (:func:`revlens.collect.resolve_probes`).

**Post-instruction tokens.** Every rendered prompt ends with template tokens after the user's
content (e.g. Llama-3's ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n``); the
refusal-direction literature reads activations there (Arditi et al. 2024, arXiv 2406.11717). The
rendering records how many tokens follow the end of the last user message (from the tokenizer's
character offsets), which the ``("post_instruction", k)`` position rule of
:class:`revlens.probes.Probes` uses.

Example:
    >>> t = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}", origin="inline")
    >>> t.name, len(t.sha)
    ('inline', 16)
"""

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, no_type_check

from revlens._types import PathLike, TokenizerInput
from revlens.errors import ProbeError

__all__ = ["ChatTemplate", "Rendered", "TemplateInput", "check_conversation", "template_from_dir"]

ROLES = ("system", "user", "assistant", "tool")


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def check_conversation(conv: Sequence[Mapping[str, str]], where: str) -> list[dict[str, str]]:
    """A conversation as a list of ``{"role", "content"}`` dicts (validated; names ``where``).

    Raises:
        ProbeError: not a non-empty list of messages, an unknown role, a non-string content, or no
            user turn.
    """
    if not isinstance(conv, (list, tuple)) or not conv:
        raise ProbeError(
            f"{where}: a conversation is a non-empty list of {{'role', 'content'}} messages; got {conv!r}"
        )
    out = []
    for i, m in enumerate(conv):
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ProbeError(
                f"{where}: message {i} must be an object with string 'role' and 'content'; got {m!r}"
            )
        if m["role"] not in ROLES:
            raise ProbeError(
                f"{where}: message {i} has role {m['role']!r}; expected one of {', '.join(ROLES)}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in out):
        raise ProbeError(f"{where}: the conversation has no user turn")
    return out


def template_from_dir(directory: PathLike) -> "ChatTemplate | None":
    """The chat template saved with a tokenizer in ``directory`` (``chat_template.jinja``, or
    ``chat_template`` in ``tokenizer_config.json``), or ``None``. Read from the files, without
    loading the tokenizer."""
    d = Path(directory)
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return ChatTemplate(
            jinja.read_text(encoding="utf-8"), origin=str(jinja), name=f"{d.name}/{jinja.name}"
        )
    cfg = d / "tokenizer_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(value, list):  # named templates: [{"name": "default", "template": ...}, ...]
            value = next(
                (
                    v.get("template")
                    for v in value
                    if isinstance(v, dict) and v.get("name") == "default"
                ),
                None,
            )
        if isinstance(value, str) and value:
            return ChatTemplate(value, origin=str(cfg), name=f"{d.name}/{cfg.name}")
    return None


@dataclass(frozen=True)
class Rendered:
    """One conversation rendered and tokenized.

    Attributes:
        text: the rendered prompt text.
        ids: its token ids (the template's own; no special token added).
        n_post: tokens after the end of the last user message (the post-instruction template
            tokens), or ``None`` where the user's text could not be located in the rendering.
    """

    text: str
    ids: list[int]
    n_post: int | None


class ChatTemplate:
    """A chat template: the Jinja text, where it came from (``origin``) and its content hash.

    Args:
        text: the Jinja template.
        origin: where it came from (a tokenizer dir, a file, ``"tokenizer"``, ``"inline"``).
        name: a short name for reports (default: ``origin``).
    """

    def __init__(self, text: str, *, origin: str = "inline", name: str | None = None) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ProbeError(f"a chat template must be non-empty Jinja text; got {text!r}")
        self.text = text
        self.origin = origin
        self.name = name or origin
        self.sha = hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()

    @classmethod
    @no_type_check  # validates its own arguments (typed errors), also under the test type-checker
    def resolve(
        cls, spec: "TemplateInput | None", tokenizer: TokenizerInput | None = None
    ) -> "ChatTemplate":
        """A template from ``spec``: a :class:`ChatTemplate`, Jinja text, a ``.jinja`` file, a
        tokenizer dir, a tokenizer; ``None``: ``tokenizer``'s own template.

        Raises:
            ProbeError: no template found (says where it looked and what to pass).
        """
        if isinstance(spec, ChatTemplate):
            return spec
        if spec is None:
            text = getattr(tokenizer, "chat_template", None)
            if isinstance(text, dict):
                text = text.get("default")
            if not isinstance(text, str) or not text:
                raise ProbeError(
                    "chat probes need a chat template, and this tokenizer has none (base checkpoints often "
                    "have none): pass template=... (Jinja text, a .jinja file, a tokenizer or its dir, e.g. "
                    "the aligned checkpoint's)"
                )
            return cls(
                text,
                origin="tokenizer",
                name=getattr(tokenizer, "name_or_path", None) or "tokenizer",
            )
        if isinstance(spec, (str, Path)) and ("{%" in str(spec) or "{{" in str(spec)):
            return cls(str(spec), origin="inline")
        if isinstance(spec, (str, Path)):
            p = Path(spec)
            if p.is_file():
                return cls(p.read_text(encoding="utf-8"), origin=str(p))
            if p.is_dir():
                found = template_from_dir(p)
                if found is None:
                    raise ProbeError(
                        f"template={str(p)!r}: that dir holds no chat template (chat_template.jinja "
                        "or tokenizer_config.json 'chat_template')"
                    )
                return found
            raise ProbeError(
                f"template={spec!r} is neither Jinja text nor an existing file or tokenizer dir"
            )
        if hasattr(spec, "chat_template"):
            return cls.resolve(None, spec)
        raise ProbeError(
            f"template: cannot use {type(spec).__name__}; expected Jinja text, a file, a tokenizer or its dir"
        )

    def provenance(self) -> dict[str, str]:
        """``{"name", "origin", "sha"}`` for reports."""
        return {"name": self.name, "origin": self.origin, "sha": self.sha}

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r}, sha={self.sha})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChatTemplate) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def render(
        self,
        tokenizer: TokenizerInput,
        conversation: Sequence[Mapping[str, str]],
        *,
        where: str = "prompt",
        **template_kwargs: object,
    ) -> Rendered:
        """Render ``conversation`` (a generation prompt after a final user turn; the final
        assistant message continued otherwise) and tokenize it once.

        Raises:
            ProbeError: the template fails on this conversation (its own message is included).
        """
        conv = list(conversation)
        open_turn = conv[-1]["role"] == "assistant"
        try:
            text = tokenizer.apply_chat_template(
                conv,
                chat_template=self.text,
                add_generation_prompt=not open_turn,
                continue_final_message=open_turn,
                tokenize=False,
                **template_kwargs,
            )
        except Exception as exc:  # Jinja's TemplateError, or raise_exception() inside a template
            raise ProbeError(
                f"{where}: the chat template {self.name!r} failed: {type(exc).__name__}: {exc}"
            ) from None
        fast = bool(getattr(tokenizer, "is_fast", False))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
        ids = list(enc["input_ids"])
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
            warnings.warn(
                f"{where}: the rendered template starts with two BOS tokens (the template and the "
                "content both write one?)",
                UserWarning,
                stacklevel=3,
            )
        return Rendered(text, ids, _n_post(tokenizer, text, ids, enc, conv))


def _n_post(
    tokenizer: Any, text: str, ids: list[int], enc: Any, conv: list[dict[str, str]]
) -> int | None:
    """Tokens that start at or after the end of the last user message's content in ``text``."""
    last_user = next(m["content"] for m in reversed(conv) if m["role"] == "user").strip()
    if not last_user:
        return None
    at = text.rfind(last_user)
    if at < 0:  # the template rewrote the content (case, escaping...)
        return None
    end = at + len(last_user)
    offsets = enc.get("offset_mapping") if hasattr(enc, "get") else None
    if offsets is not None:
        first = next((i for i, (start, _) in enumerate(offsets) if start >= end), len(ids))
        return len(ids) - first
    head = tokenizer(text[:end], add_special_tokens=False)["input_ids"]
    return max(len(ids) - len(head), 0)


TemplateInput: TypeAlias = ChatTemplate | str | PathLike | TokenizerInput
"""A chat template as :meth:`ChatTemplate.resolve` takes it: a :class:`ChatTemplate`, Jinja text,
a ``.jinja`` file, a tokenizer folder, or a tokenizer."""
