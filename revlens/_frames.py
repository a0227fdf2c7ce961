"""Exact, pickle-free DataFrame persistence shared by :class:`Report` and :class:`CausalReport`.

Column-wise JSON with each column's dtype; floats keep their exact repr, NaN is written as
``null`` and restored as NaN, so ``save`` / ``load`` round-trip with ``check_exact=True``.
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["frame_from_obj", "frame_to_obj", "read_frame", "write_frame"]


def frame_to_obj(df: pd.DataFrame) -> dict[str, Any]:
    """A JSON-able description of ``df`` (columns, dtypes, values, non-default index)."""
    cols = []
    for name in df.columns:
        values = df[name].tolist()
        if pd.api.types.is_float_dtype(df[name].dtype):
            values = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
        cols.append({"name": name, "dtype": str(df[name].dtype), "values": values})
    idx = df.index
    is_range = isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
    return {"columns": cols, "index": None if is_range else idx.tolist(), "n_rows": len(df)}


def frame_from_obj(obj: Mapping[str, Any]) -> pd.DataFrame:
    """Inverse of :func:`frame_to_obj`."""
    index = pd.Index(obj["index"]) if obj.get("index") is not None else pd.RangeIndex(obj["n_rows"])
    df = pd.DataFrame(
        {c["name"]: pd.Series(c["values"], dtype=object, index=index) for c in obj["columns"]},
        index=index,
        columns=[c["name"] for c in obj["columns"]],
    )
    for c in obj["columns"]:
        values = df[c["name"]]
        if c["dtype"].startswith("float"):
            values = values.where(values.notna(), np.nan)
        df[c["name"]] = values.astype(c["dtype"])
    return df


def write_frame(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` as column-wise JSON (atomically)."""
    from revlens._io import write_text

    write_text(path, json.dumps(frame_to_obj(df), default=str))


def read_frame(path: Path) -> pd.DataFrame:
    """Read a frame written by :func:`write_frame` (a missing or malformed file: ``ConfigError``)."""
    from revlens._io import read_json
    from revlens.errors import ConfigError

    obj = read_json(path, "saved table")
    try:
        return frame_from_obj(obj)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"saved table {path} is malformed: {exc}") from None
