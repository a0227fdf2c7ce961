"""Deterministic train / selection / held-out splits, stratified by category.

The rule (the same on every machine and every run; Python's ``hash()`` is never used): within
each category, the set's distinct prompt texts are ordered by ``sha256(SALT + "\\0" + text)``;
the first ``floor(n · f_train + ½)`` are ``train``, the next ``floor(n · f_selection + ½)``
``selection`` (choosing layers, positions, hyper-parameters), the rest ``held_out`` (reported
numbers). A text that occurs twice is one unit (same split; its first row's category), so no
prompt is in two splits. A split depends only on the text, its category and the fractions: adding
a row to one category moves no text of another.
"""

import hashlib
from collections.abc import Sequence
from typing import no_type_check

from revlens.errors import ConfigError
from revlens.modes import DATA_SPLITS

__all__ = ["FRACTIONS", "SALT", "SPLITS", "assign_splits", "split_key"]

SPLITS = DATA_SPLITS
"""The split names, in order (:data:`revlens.modes.DataSplit`)."""
FRACTIONS = (0.6, 0.2, 0.2)
"""Default fractions of train, selection, held-out."""
SALT = "revlens-datasets-v1"
"""The fixed salt of :func:`split_key`."""


def split_key(text: str, salt: str = SALT) -> str:
    """``sha256(salt + "\\0" + text)`` (hex): a text's place in the split order."""
    return hashlib.sha256(f"{salt}\0{text}".encode()).hexdigest()


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1.

    Raises:
        ConfigError: otherwise.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-9:
        raise ConfigError(
            f"fractions must be three non-negative numbers (train, selection, held_out) summing "
            f"to 1; got {tuple(fractions)}"
        )
    return fr  # type: ignore[return-value]


@no_type_check  # validates its own arguments (typed errors)
def assign_splits(
    texts: Sequence[str],
    categories: Sequence[str] | None = None,
    *,
    fractions: Sequence[float] = FRACTIONS,
    salt: str = SALT,
) -> list[str]:
    """The split of each text (see the module docstring).

    Args:
        texts: the items' texts.
        categories: one per text (strata); ``None``: one stratum.
        fractions: train, selection, held-out.
        salt: the hash salt (change it for another, equally deterministic, split).
    """
    fr = check_fractions(fractions)
    cats = list(categories) if categories is not None else [""] * len(texts)
    if len(cats) != len(texts):
        raise ConfigError(f"got {len(cats)} categories for {len(texts)} texts")
    stratum: dict[str, str] = {}
    for text, cat in zip(texts, cats):
        stratum.setdefault(text, cat)
    groups: dict[str, list[str]] = {}
    for text, cat in stratum.items():
        groups.setdefault(cat, []).append(text)
    split: dict[str, str] = {}
    for members in groups.values():
        order = sorted(members, key=lambda t: split_key(t, salt))
        n = len(order)
        n_train = int(n * fr[0] + 0.5)
        n_sel = min(int(n * fr[1] + 0.5), n - n_train)
        for i, text in enumerate(order):
            split[text] = (
                SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_sel else SPLITS[2]
            )
    return [split[t] for t in texts]
