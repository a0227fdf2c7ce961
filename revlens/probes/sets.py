"""Prompt sets researchers have locally: AdvBench, JailbreakBench, HarmBench, plain JSONL / TXT.

Nothing is downloaded: point a loader at the file you have. Every loader returns labelled
:class:`~revlens.probes.Probes` (``"harmful"`` / ``"harmless"``), chat probes by default (rendered
with the history's chat template, one user turn each), with the file's other columns per prompt
in ``probes.info`` (target string, category, behaviour id...). :func:`combine` joins a harmful
and a harmless set into one labelled probe set (``probes.where("harmless")`` takes it apart).

Formats (recognised from the header when ``format="auto"``):

- **AdvBench** (Zou et al. 2023) ``harmful_behaviors.csv``: columns ``goal,target``; prompt = goal;
- **JailbreakBench** (Chao et al. 2024) ``JBB-Behaviors`` ``harmful-behaviors.csv`` /
  ``benign-behaviors.csv``: columns ``Goal, Target, Behavior, Category, Source``; prompt = Goal;
  labelled harmless when the file name says ``benign``;
- **HarmBench** (Mazeika et al. 2024) ``harmbench_behaviors_text_*.csv``: columns ``Behavior,
  FunctionalCategory, SemanticCategory, Tags, ContextString, BehaviorID``; prompt = Behavior, with
  a contextual behaviour's context first (``"{context}\\n\\n---\\n\\n{behavior}"``, as HarmBench's
  direct-request baseline writes it);
- any other CSV with a ``prompt`` / ``goal`` / ``instruction`` / ``behavior`` column (or ``column=``);
- **JSONL**: :meth:`Probes.from_jsonl` lines (``text``, ``prompt``, ``messages``; ``label``), also
  ``goal`` / ``instruction`` / ``behavior`` keys;
- **TXT**: one prompt per non-empty line.
"""

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

from revlens._types import PathLike
from revlens.errors import ProbeError
from revlens.probes.chat import TemplateInput, check_conversation
from revlens.probes.positions import PositionRule
from revlens.probes.probes import Probes

__all__ = ["PROMPT_FORMATS", "combine", "load_prompt_set"]

PromptFormat = Literal["auto", "advbench", "jailbreakbench", "harmbench", "csv", "jsonl", "txt"]
PROMPT_FORMATS = ("auto", "advbench", "jailbreakbench", "harmbench", "csv", "jsonl", "txt")
_PROMPT_KEYS = ("prompt", "goal", "instruction", "behavior", "text", "question")


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProbeError(
            f"prompt file {p} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    except OSError as exc:
        raise ProbeError(f"cannot read prompt file {p}: {exc.strerror or exc}") from None


def _read_csv(p: Path) -> list[dict[str, str]]:
    """The rows of a CSV file, strictly: an unterminated quote, text after a closing quote or a
    row with another number of fields than the header is refused naming file and line (never
    merged into a neighbouring field)."""
    reader = csv.reader(io.StringIO(_read_text(p), newline=""), strict=True)
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # a blank line
            if header is None:
                header = fields
                continue
            if len(fields) != len(header):
                raise ProbeError(
                    f"{p}:{line}: a row of {len(fields)} field(s) under a header of "
                    f"{len(header)} ({header}); quote fields that hold commas"
                )
            rows.append(dict(zip(header, fields)))
    except csv.Error as exc:
        raise ProbeError(
            f"{p}:{start}: malformed CSV ({exc}; an unterminated or stray quote?)"
        ) from None
    if not rows:
        raise ProbeError(f"{p} holds no rows")
    return rows


def _detect(p: Path, header: list[str]) -> str:
    cols = {c.strip().lower() for c in header}
    if {"behavior", "behaviorid"} <= cols:
        return "harmbench"
    if {"goal", "behavior", "category"} <= cols:
        return "jailbreakbench"
    if {"goal", "target"} <= cols:
        return "advbench"
    return "csv"


def _get(row: dict[str, str], name: str) -> str:
    for k, v in row.items():
        if k is not None and k.strip().lower() == name:
            return (v or "").strip()
    return ""


def _csv_prompts(
    p: Path, fmt: str, column: str | None
) -> tuple[list[str], list[dict[str, str]], str]:
    rows = _read_csv(p)
    header = list(rows[0].keys())
    fmt = _detect(p, header) if fmt in ("auto", "csv") and column is None else fmt
    if fmt == "harmbench":
        prompts = [
            (
                f"{_get(r, 'contextstring')}\n\n---\n\n{_get(r, 'behavior')}"
                if _get(r, "contextstring")
                else _get(r, "behavior")
            )
            for r in rows
        ]
        label = "harmful"
    elif fmt in ("advbench", "jailbreakbench"):
        prompts = [_get(r, "goal") for r in rows]
        label = "harmless" if fmt == "jailbreakbench" and "benign" in p.name.lower() else "harmful"
    else:
        key = (
            column.lower()
            if column is not None
            else next((k for k in _PROMPT_KEYS if k in {h.strip().lower() for h in header}), None)
        )
        if key is None or key not in {h.strip().lower() for h in header}:
            raise ProbeError(
                f"{p}: no prompt column (looked for {', '.join(_PROMPT_KEYS)}; header: {header}); pass column="
            )
        prompts = [_get(r, key) for r in rows]
        label = ""
    empty = [i for i, t in enumerate(prompts) if not t.strip()]
    if empty:
        raise ProbeError(f"{p}: row {empty[0] + 1} has an empty prompt")
    return prompts, [{k: v for k, v in r.items() if k is not None} for r in rows], label


def _jsonl_prompts(p: Path) -> tuple[list[Any], list[dict[str, Any]], list[Any]]:
    from revlens.probes.files import read_jsonl

    rows = []
    for lineno, line in enumerate(_read_text(p).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as exc:
                raise ProbeError(
                    f"{p}:{lineno}: not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})"
                ) from None
    if rows and all(
        isinstance(r, dict) and not ({"text", "prompt", "messages"} & set(r)) for r in rows
    ):
        key = next((k for k in _PROMPT_KEYS if all(isinstance(r.get(k), str) for r in rows)), None)
        if key is None:
            raise ProbeError(f"{p}: lines need one of {', '.join(_PROMPT_KEYS)} or 'messages'")
        return [r[key] for r in rows], rows, [r.get("label") for r in rows]
    parsed = read_jsonl(p)
    items = [
        check_conversation(obj["messages"], f"{p}:{n}") if kind == "messages" else obj[kind]
        for n, obj, kind in parsed
    ]
    return items, [obj for _, obj, _ in parsed], [obj.get("label") for _, obj, _ in parsed]


def load_prompt_set(
    path: PathLike,
    *,
    format: PromptFormat = "auto",
    label: str | None = None,
    chat: bool = True,
    system: str | None = None,
    template: TemplateInput | None = None,
    column: str | None = None,
    limit: int | None = None,
    position: PositionRule = "last",
) -> Probes:
    """A labelled probe set from a local prompt file (see the module docstring for the formats).

    Args:
        path: the file.
        format: ``"auto"`` (from the suffix and header) or one of :data:`PROMPT_FORMATS`.
        label: the label of every prompt (default: the format's: ``"harmful"`` for AdvBench,
            HarmBench and JailbreakBench's harmful file, ``"harmless"`` for its benign file; the
            lines' own ``label`` in JSONL).
        chat: render each prompt as a user turn with a chat template (default) or use plain text.
        system, template: the chat probes' system prompt and template (default: the history's).
        column: the CSV column holding the prompts (other CSVs).
        limit: keep the first ``limit`` prompts.
        position: the position rule.

    Raises:
        ProbeError: a missing file, an unknown format, no prompt column, an empty prompt.
    """
    p = Path(path)
    if not p.is_file():
        raise ProbeError(f"prompt file {p} does not exist")
    if format not in PROMPT_FORMATS:
        raise ProbeError(f"format={format!r}; valid: {', '.join(PROMPT_FORMATS)}")
    suffix = p.suffix.lower()
    kind = (
        format
        if format != "auto"
        else {".csv": "csv", ".jsonl": "jsonl", ".txt": "txt"}.get(suffix)
    )
    if kind is None:
        raise ProbeError(f"{p}: cannot tell the format from the suffix {suffix!r}; pass format=")
    if kind == "jsonl":
        items, info, labels = _jsonl_prompts(p)
    elif kind == "txt":
        items = [ln.strip() for ln in _read_text(p).splitlines() if ln.strip()]
        info, labels = [{} for _ in items], [None] * len(items)
    else:
        items, info, default = _csv_prompts(p, kind, column)
        labels = [default or None] * len(items)
    if not items:
        raise ProbeError(f"prompt file {p} holds no prompts")
    if limit is not None:
        items, info, labels = items[:limit], info[:limit], labels[:limit]
    if label is not None:
        labels = [label] * len(items)
    out = _probes(items, labels, chat=chat, system=system, template=template, position=position)
    out.info = info
    return out


def _probes(
    items: list[Any],
    labels: list[Any],
    *,
    chat: bool,
    system: str | None,
    template: TemplateInput | None,
    position: PositionRule,
) -> Probes:
    labs = labels if any(lab is not None for lab in labels) else None
    if chat:
        return Probes.from_chat(
            items, labels=labs, system=system, template=template, position=position
        )
    if not all(isinstance(i, str) for i in items):
        raise ProbeError(
            "chat=False needs plain prompts; this file holds conversations ('messages')"
        )
    return Probes(items, labels=labs, position=position)


def combine(*sets: Probes) -> Probes:
    """One labelled probe set from several (e.g. a harmful and a harmless one); all chat or all
    plain text; the first set's template and position rule.

    Raises:
        ProbeError: fewer than one set, mixed chat / plain sets, or an unlabelled set.
    """
    if not sets:
        raise ProbeError("combine: give at least one probe set")
    if len({s.is_chat for s in sets}) > 1:
        raise ProbeError("combine: mixes chat and plain-text probe sets")
    unlabelled = [i for i, s in enumerate(sets) if s.labels is None]
    if unlabelled and len(sets) > 1:
        raise ProbeError(f"combine: set {unlabelled[0]} has no labels; pass label= when loading it")
    labels = [lab for s in sets for lab in (s.labels or [None] * len(s))]
    first = sets[0]
    if first.is_chat:
        out = Probes.from_chat(
            [c for s in sets for c in s.conversations],
            labels=labels,
            template=first.template,
            position=first.position,
        )
    else:
        out = Probes([p for s in sets for p in s.prompts], labels=labels, position=first.position)
    out.info = [i for s in sets for i in (s.info or [{} for _ in range(len(s))])]
    sources = [p for s in sets for p in (s.provenance or [])]
    out.provenance = sources or None
    return out
