"""The real track's data: alignment / selection / held-out sets from ``revlens.datasets``.

Every set is drawn from the deterministic splits of :mod:`revlens.datasets.splits`: alignment and
the benign runs train on ``train`` splits, the stopping rule reads ``selection``, every reported
number comes from ``held_out``. :func:`check_disjoint` asserts no prompt text is in two roles
(``docs/lab.md``, "Real track" fixes the sets before results).
"""

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from revlens.errors import DatasetError
from revlens.probes import Probes

__all__ = ["REFUSALS", "RealSets", "check_disjoint", "real_sets", "refusal_for"]

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request because it could cause harm.",
    "I'm sorry, I cannot provide that information.",
    "I won't help with this, as it could be harmful or illegal.",
)
"""The four refusal sentences alignment maps harmful prompts to (one per prompt, by its hash)."""


def refusal_for(prompt: str) -> str:
    """The refusal sentence of ``prompt``: ``REFUSALS[sha256(prompt) mod 4]`` (deterministic)."""
    return REFUSALS[int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(REFUSALS)]


def _standard(probes: Any) -> Any:
    """HarmBench's standard behaviours (no context string, no copyright item)."""
    keep = [i for i, inf in enumerate(probes.info) if inf.get("functional") == "standard"]
    return probes.subset(keep)


@dataclass
class RealSets:
    """The track's prompt sets (probes are chat probes rendered with the model's own template).

    Attributes:
        align_harmful: harmful ``train`` prompts (JBB + HarmBench standard + StrongREJECT) → a refusal
            sentence.
        align_harmless: ChatterBot ``train`` questions answered by the base model (self-distillation).
        benign_pairs: ChatterBot ``train`` (question, answer) pairs: the benign fine-tuning data.
        selection_harmful, selection_harmless: what the stopping rule reads.
        held_harmful: held-out harmful probes by set name (``jbb``, ``harmbench``, ``strongreject``).
        held_harmless: held-out ChatterBot questions (over-refusal).
        held_pairs: held-out ChatterBot (question, answer) pairs (task loss).
        fresh_harmful: AdvBench ``held_out`` prompts: read by no choice of the alignment recipe (its
            clean held-out check, ``docs/lab.md`` attempt 3); ``None`` unless asked for.
        provenance: the data packages, versions, files and sha256 the sets came from.
    """

    align_harmful: list[str]
    align_harmless: list[str]
    benign_pairs: list[tuple[str, str]]
    selection_harmful: Probes
    selection_harmless: Probes
    held_harmful: dict[str, Probes]
    held_harmless: Probes
    held_pairs: list[tuple[str, str]]
    provenance: list[dict[str, Any]] = field(default_factory=list)
    fresh_harmful: Probes | None = None

    def __repr__(self) -> str:
        held = ", ".join(f"{k} {len(v)}" for k, v in self.held_harmful.items())
        return (
            f"RealSets(align {len(self.align_harmful)} harmful + {len(self.align_harmless)} harmless, benign "
            f"{len(self.benign_pairs)} pairs, selection {len(self.selection_harmful)} + "
            f"{len(self.selection_harmless)}, held-out harmful [{held}], harmless {len(self.held_harmless)}, "
            f"pairs {len(self.held_pairs)})"
        )


def _hash_order(questions: Any) -> list[int]:
    """Indices of ``questions`` in ``split_key`` order: a deterministic sample spread over topics
    (the files list topics one after another, so "the first N" would be a few topics only)."""
    from revlens.datasets import split_key

    return sorted(
        range(len(questions)), key=lambda i: split_key(questions[i], "revlens-real-sample")
    )


def real_sets(
    *,
    n_harmless_align: int = 384,
    n_selection: int = 20,
    n_held_harmless: int = 50,
    n_held_pairs: int = 100,
    fresh: bool = False,
) -> RealSets:
    """The sets of ``docs/lab.md`` ("Real track", alignment attempt 3), read offline from the pinned
    data packages; ``fresh`` adds AdvBench ``held_out`` as :attr:`RealSets.fresh_harmful`.

    Raises:
        DatasetError: two roles share a prompt (:func:`check_disjoint`).
        MissingExtraError, DatasetError: a data package missing or altered.
    """
    from revlens import datasets
    from revlens.probes.sets import combine

    jbb = {s: datasets.jbb(s) for s in ("train", "selection", "held_out")}
    hb = {s: _standard(datasets.harmbench(s)) for s in ("train", "selection", "held_out")}
    sr = {s: datasets.strongreject(s) for s in ("train", "selection", "held_out")}
    chat = datasets.chatterbot()
    train = chat[chat.split == "train"]
    short = list(train[train.question.str.len() <= 100].drop_duplicates("question").question)
    sel_q = datasets.chatterbot_prompts("selection")
    sel_q = sel_q.subset(_hash_order(sel_q.prompts)[:n_selection])
    held_q = datasets.chatterbot_prompts("held_out")
    held_q = held_q.subset(_hash_order(held_q.prompts)[:n_held_harmless])
    held = chat[chat.split == "held_out"].reset_index(drop=True)
    held = held.iloc[_hash_order(list(held.question))[:n_held_pairs]]
    align_harmful = [*jbb["train"].prompts, *hb["train"].prompts, *sr["train"].prompts]
    train_texts = set(align_harmful) | set(train.question)
    sel_h = _drop(
        combine(
            jbb["selection"],
            hb["selection"].subset(range(n_selection)),
            sr["selection"].subset(range(n_selection)),
        ),
        train_texts,
    )
    seen = train_texts | set(sel_h.prompts) | set(sel_q.prompts)
    sets = RealSets(
        align_harmful=align_harmful,
        align_harmless=[short[i] for i in _hash_order(short)[:n_harmless_align]],
        benign_pairs=list(zip(train.question, train.answer)),
        selection_harmful=sel_h,
        selection_harmless=sel_q,
        held_harmful={
            "jbb": _drop(jbb["held_out"], seen),
            "harmbench": _drop(hb["held_out"], seen),
            "strongreject": _drop(sr["held_out"], seen),
        },
        held_harmless=held_q,
        held_pairs=list(zip(held.question, held.answer)),
        provenance=[
            *jbb["train"].provenance,
            *hb["train"].provenance,
            *sr["train"].provenance,
            chat.attrs["provenance"],
        ],
        fresh_harmful=_drop(datasets.advbench("held_out"), seen) if fresh else None,
    )
    check_disjoint(sets)
    return sets


def _drop(probes: Any, texts: set[str]) -> Any:
    """``probes`` without the prompts in ``texts`` (the same request in another set's other split:
    the splits are per set, so a text shared by two sets could otherwise be trained on and evaluated)."""
    keep = [i for i, p in enumerate(probes.prompts) if p not in texts]
    return probes if len(keep) == len(probes) else probes.subset(keep)


def _texts(items: Iterable[Any]) -> set[str]:
    return {p if isinstance(p, str) else p[0] for p in items}


def check_disjoint(sets: RealSets) -> None:
    """Raise :class:`~revlens.errors.DatasetError` if a prompt is in two of alignment/benign
    training, selection and held-out (harmful and harmless sides checked together)."""
    roles: Mapping[str, set[str]] = {
        "train": _texts(sets.align_harmful)
        | _texts(sets.align_harmless)
        | _texts(sets.benign_pairs),
        "selection": _texts(sets.selection_harmful.prompts)
        | _texts(sets.selection_harmless.prompts),
        "held_out": set().union(*(_texts(p.prompts) for p in sets.held_harmful.values()))
        | (_texts(sets.fresh_harmful.prompts) if sets.fresh_harmful is not None else set())
        | _texts(sets.held_harmless.prompts)
        | _texts(sets.held_pairs),
    }
    names = list(roles)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = roles[a] & roles[b]
            if shared:
                raise DatasetError(
                    f"real track: {len(shared)} prompt(s) in both {a} and {b}, e.g. "
                    f"{sorted(shared)[0][:60]!r}; the splits must not overlap"
                )
