"""Reading probe files (JSONL lines of plain text or chat conversations)."""

import json
from pathlib import Path
from typing import Any

from revlens._types import PathLike
from revlens.errors import ProbeError

__all__ = ["read_jsonl"]


def read_jsonl(path: PathLike) -> list[tuple[int, dict[str, Any], str]]:
    """``(line number, object, kind)`` of each non-empty line; kind ``"text"``, ``"messages"`` or
    ``"prompt"``. Raises :class:`ProbeError` naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ProbeError(f"probe file {p} does not exist")
    try:
        content = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeError(
            f"probe file {p} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    rows = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ProbeError(
                f"{p}:{lineno}: not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})"
            ) from None
        rows.append((lineno, obj, line_kind(obj, f"{p}:{lineno}")))
    if not rows:
        raise ProbeError(f"probe file {p} holds no prompts")
    return rows


def line_kind(obj: Any, where: str) -> str:
    """``"text"``, ``"messages"`` or ``"prompt"``: what a JSONL line holds."""
    if isinstance(obj, dict):
        if isinstance(obj.get("messages"), list):
            return "messages"
        if isinstance(obj.get("prompt"), str):
            return "prompt"
        if isinstance(obj.get("text"), str):
            return "text"
    raise ProbeError(
        f'{where}: expected an object with a "text" string, a "prompt" string (one chat user turn) '
        'or a "messages" list ([{"role": ..., "content": ...}, ...])'
    )
