"""Parsers for the published files: every row checked, every error naming ``file:line``."""

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from revlens.datasets.source import DataFile
from revlens.errors import DatasetError, require

__all__ = ["Row", "read_csv", "read_jsonl", "read_lines", "read_yaml_items"]

Row = tuple[int, dict[str, Any]]
"""``(line, fields)``: the 1-based line a record starts on, and its fields."""


def read_csv(f: DataFile, required: Sequence[str], *, comments: bool = False) -> list[Row]:
    """CSV records with the line each starts on; ``comments``: ``#`` lines before the header are skipped.

    Raises:
        DatasetError: a missing column, a row with the wrong number of fields, a CSV syntax error,
            a required field that is empty (``file:line``).
    """
    lines = f.text().splitlines(keepends=True)
    skip = 0
    while comments and skip < len(lines) and lines[skip].startswith("#"):
        skip += 1
    reader = csv.reader(io.StringIO("".join(lines[skip:]), newline=""))
    rows: list[Row] = []
    header: list[str] | None = None
    start = skip + 1
    try:
        for record in reader:
            line, start = start, skip + reader.line_num + 1
            if not record:
                continue
            if header is None:
                header = [h.strip() for h in record]
                missing = [c for c in required if c not in header]
                if missing:
                    raise DatasetError(
                        f"{f.where}:{line}: the header {header} lacks the column(s) {missing}"
                    )
                continue
            if len(record) != len(header):
                raise DatasetError(
                    f"{f.where}:{line}: {len(record)} fields, expected {len(header)} ({header})"
                )
            row = dict(zip(header, record))
            empty = [c for c in required if not row[c].strip()]
            if empty:
                raise DatasetError(f"{f.where}:{line}: the field {empty[0]!r} is empty")
            rows.append((line, row))
    except csv.Error as exc:
        raise DatasetError(f"{f.where}:{skip + reader.line_num}: not valid CSV ({exc})") from None
    if header is None:
        raise DatasetError(f"{f.where}: no header line")
    return rows


def read_jsonl(f: DataFile, required: Sequence[str]) -> list[Row]:
    """One JSON object per non-empty line, each with the ``required`` keys (non-empty strings).

    Raises:
        DatasetError: invalid JSON, not an object, a missing or empty key (``file:line``).
    """
    rows: list[Row] = []
    for lineno, line in enumerate(f.text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{f.where}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DatasetError(
                f"{f.where}:{lineno}: expected a JSON object, got {type(obj).__name__}"
            )
        bad = [k for k in required if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if bad:
            raise DatasetError(
                f"{f.where}:{lineno}: the key {bad[0]!r} is missing or not a non-empty string"
            )
        rows.append((lineno, obj))
    return rows


def read_lines(f: DataFile) -> list[Row]:
    """Non-empty lines (stripped) of a text file."""
    return [
        (i, {"text": ln.strip()}) for i, ln in enumerate(f.text().splitlines(), 1) if ln.strip()
    ]


def read_yaml_items(f: DataFile, key: str) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    """A YAML mapping and the items of its list ``key``, each with the line it starts on.

    Raises:
        DatasetError: invalid YAML, not a mapping, ``key`` missing or not a list (``file:line``).
    """
    yaml = require("yaml", "real", "reading YAML data files")
    loader = yaml.SafeLoader(f.text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{f.where}:{mark.line + 1}" if mark is not None else f.where
        raise DatasetError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DatasetError(f"{f.where}:1: expected a mapping with a list {key!r}")
    items = next(v for k, v in node.value if k.value == key).value
    return data, [(n.start_mark.line + 1, item) for n, item in zip(items, data[key])]
