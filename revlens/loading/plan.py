"""Map a checkpoint's keys onto a model's parameters the way ``from_pretrained`` does.

Keys go through transformers' own machinery for the model class
(``conversion_mapping.get_model_conversion_mapping`` and ``core_model_loading.rename_source_key``):
its ``WeightRenaming`` rules (e.g. GPT-NeoX ``embed_out`` -> ``lm_head``, Mixtral
``block_sparse_moe`` -> ``mlp``), the add/strip of ``base_model_prefix`` for prefix-less state
dicts, and its ``WeightConverter`` groups (e.g. per-expert ``experts.N.w1/w3`` fused into
``experts.gate_up_proj``). The result is a :class:`Plan`: one :class:`Entry` per copy or per
converter group, validated against the model (missing / unexpected / mis-shaped / wrongly typed
parameters, all named) before a single weight is touched. Converter outputs are validated by
running the converter's own operations on meta tensors.
"""

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from revlens.errors import ConfigError, ShapeMismatchError
from revlens.loading.sources import TensorSource
from revlens.loading.targets import Targets

__all__ = ["Entry", "Plan", "conversion_rules", "make_plan", "name_resolver"]

_ORIG = "._original_component"


@dataclass
class Entry:
    """One unit of loading: a plain copy (one key -> one target) or a converter group.

    Attributes:
        targets: HF names written (the first one names the entry).
        keys: checkpoint keys read, in loading order.
        patterns: for a converter group, the converter source pattern each key matched.
        converter: a fresh (unused) transformers ``WeightConverter``, or ``None`` for a copy.
    """

    targets: list[str]
    keys: list[str]
    patterns: list[str] = field(default_factory=list)
    converter: Any = None


@dataclass
class Plan:
    """How a checkpoint maps onto a model.

    Attributes:
        entries: what to read and write, in checkpoint (natural key) order.
        ignored: checkpoint keys deliberately skipped (old buffers, HF ignore lists).
        tied_duplicates: keys skipped because a tied partner is loaded (equal values checked).
    """

    entries: list[Entry]
    ignored: list[str] = field(default_factory=list)
    tied_duplicates: list[tuple[str, str]] = field(default_factory=list)

    def written(self) -> set[str]:
        """Every HF name the plan writes."""
        return {t for e in self.entries for t in e.targets}

    def restricted(self, names: set[str], targets: Targets) -> "Plan":
        """The entries that write any parameter of ``names`` (compared by tie group)."""
        want = {targets.leader.get(n, n) for n in names}
        keep = [e for e in self.entries if any(targets.leader.get(t, t) in want for t in e.targets)]
        return Plan(keep)


def conversion_rules(
    model: torch.nn.Module, key_mapping: Mapping[str, str] | None = None
) -> list[Any]:
    """transformers' weight transforms for this model (what ``from_pretrained`` would apply).

    ``key_mapping`` is ``from_pretrained``'s argument of that name (regex -> replacement).
    Scopes of sub-model transforms are stripped of bridge segments.

    Raises:
        ConfigError: transformers 4.x (no conversion rules to follow).
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError as exc:  # transformers 4.x has no loading-time conversion rules
        import transformers

        raise ConfigError(
            f"revlens.loading needs transformers>=5 (its weight conversion rules); "
            f"found transformers {transformers.__version__}"
        ) from exc
    rules = get_model_conversion_mapping(
        model, key_mapping=dict(key_mapping) if key_mapping else None
    )
    for rule in rules:
        if getattr(rule, "scope_prefix", None):
            rule.scope_prefix = rule.scope_prefix.replace(_ORIG, "")
    return rules


def name_resolver(
    model: torch.nn.Module, targets: Targets, key_mapping: Mapping[str, str] | None = None
) -> Callable[[str], str]:
    """A function mapping a parameter name as a checkpoint writes it to the model's HF name,
    with transformers' renamings and prefix rules (converters excluded): for adapter files."""
    from transformers.core_model_loading import WeightRenaming

    rules = [r for r in conversion_rules(model, key_mapping) if isinstance(r, WeightRenaming)]
    prefix = getattr(model, "base_model_prefix", "") or ""
    return lambda key: _rename(key, rules, prefix, targets.all_names)[0]


def _rename(
    key: str, rules: list[Any], prefix: str, meta: Mapping[str, Any]
) -> tuple[str, str | None]:
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    renamings = [r for r in rules if isinstance(r, WeightRenaming)]
    converters = [r for r in rules if isinstance(r, WeightConverter)]
    renamed, pattern = rename_source_key(key, renamings, converters, prefix, meta)
    if (
        renamed not in meta and key in meta
    ):  # what from_pretrained does: keep the key, fix the prefix
        renamed, pattern = rename_source_key(key, [], [], prefix, meta)
    return renamed, pattern


def make_plan(
    source: TensorSource,
    targets: Targets,
    model: torch.nn.Module,
    *,
    key_mapping: Mapping[str, str] | None = None,
    strict: bool = True,
) -> Plan:
    """Map every key of ``source`` onto ``targets`` and validate the result.

    Args:
        source: the checkpoint (only its header is read here).
        targets: the model's parameters (:meth:`Targets.from_model`).
        model: the HF model (its class selects transformers' conversion rules).
        key_mapping: extra regex renames, as ``from_pretrained(key_mapping=...)``.
        strict: raise on missing parameters (``False``: load what is there).

    Raises:
        ShapeMismatchError: unexpected keys, missing parameters, shapes or dtypes that do not fit
            (the message names the checkpoint, the parameters and both shapes).
    """
    from transformers.core_model_loading import WeightConverter, dot_natural_key

    rules = conversion_rules(model, key_mapping)
    by_pattern = {p: r for r in rules if isinstance(r, WeightConverter) for p in r.source_patterns}
    prefix = getattr(model, "base_model_prefix", "") or ""
    entries: dict[str, Entry] = {}
    plan = Plan([])
    unexpected: list[str] = []
    for key in sorted(source.keys(), key=dot_natural_key):
        renamed, pattern = _rename(key, rules, prefix, targets.all_names)
        if renamed in targets:
            if pattern is not None:
                entry = entries.setdefault(
                    renamed, Entry([renamed], [], [], copy.deepcopy(by_pattern[pattern]))
                )
                entry.keys.append(key)
                entry.patterns.append(pattern)
            elif renamed in entries:
                raise ShapeMismatchError(
                    f"checkpoint {source.name}: keys {entries[renamed].keys[0]!r} and {key!r} both load {renamed!r}"
                )
            else:
                entries[renamed] = Entry([renamed], [key])
        elif targets.ignore.search(key) or targets.ignore.search(renamed):
            plan.ignored.append(key)
        else:
            unexpected.append(key if renamed == key else f"{key} (as {renamed})")
    if unexpected:
        raise ShapeMismatchError(
            f"checkpoint {source.name} has parameters the model does not: {unexpected[:6]}"
            f"{' ...' if len(unexpected) > 6 else ''} ({len(unexpected)} in all; model: {type(model).__name__})"
        )
    plan.entries = list(entries.values())
    _expand_converters(plan, source, targets, model)
    _dedupe_ties(plan, source, targets)
    if strict:
        _check_complete(plan, source, targets)
    _check_fit(plan, source, targets)
    return plan


def _meta_convert(
    entry: Entry, source: TensorSource, model: torch.nn.Module
) -> dict[str, torch.Size]:
    """Run a converter's operations on meta tensors: output name -> shape, without reading data."""
    conv = copy.deepcopy(entry.converter)
    for key, pattern in zip(entry.keys, entry.patterns):
        info = source.info(key)
        conv.add_tensor(
            entry.targets[0],
            key,
            pattern,
            lambda i=info: torch.empty(i.shape, dtype=i.dtype, device="meta"),
        )
    out = conv.convert(entry.targets[0], model=model, config=getattr(model, "config", None))
    return {name: (t[0] if isinstance(t, list) else t).shape for name, t in out.items()}


def _expand_converters(
    plan: Plan, source: TensorSource, targets: Targets, model: torch.nn.Module
) -> None:
    for entry in plan.entries:
        if entry.converter is None:
            continue
        try:
            shapes = _meta_convert(entry, source, model)
        except Exception as exc:
            raise ShapeMismatchError(
                f"checkpoint {source.name}: converting {entry.keys[:3]}... into {entry.targets[0]!r} "
                f"({type(entry.converter).__name__}) fails: {exc}"
            ) from exc
        for name, shape in shapes.items():
            if name not in targets:
                raise ShapeMismatchError(
                    f"checkpoint {source.name}: conversion of {entry.keys[0]!r} gives "
                    f"{name!r}, which the model does not have"
                )
            want = tuple(targets.get(name).shape)
            if tuple(shape) != want:
                raise ShapeMismatchError(
                    f"checkpoint {source.name}: parameter {name!r} (from {len(entry.keys)} keys like "
                    f"{entry.keys[0]!r}) has shape {tuple(shape)}, the model expects {want}"
                )
        entry.targets = list(shapes)


def _dedupe_ties(plan: Plan, source: TensorSource, targets: Targets) -> None:
    """Keep one entry per tied parameter; a partner is dropped only if its values are equal."""
    first: dict[str, Entry] = {}
    keep: list[Entry] = []
    for entry in sorted(
        plan.entries, key=lambda e: e.targets[0] != targets.leader.get(e.targets[0])
    ):
        if entry.converter is not None or entry.targets[0] not in targets.params:
            keep.append(entry)
            continue
        lead = targets.leader[entry.targets[0]]
        if lead not in first:
            first[lead] = entry
            keep.append(entry)
            continue
        kept = first[lead]
        a, b = source.read(kept.keys[0]), source.read(entry.keys[0])
        if a.shape != b.shape or not torch.equal(a, b.to(a.dtype)):
            raise ShapeMismatchError(
                f"checkpoint {source.name} holds tied parameters {kept.targets[0]!r} and {entry.targets[0]!r} "
                "with different values; from_pretrained would untie them, but the booted model ties them "
                "(boot it from a config with tie_word_embeddings=False)"
            )
        plan.tied_duplicates.append((entry.keys[0], kept.keys[0]))
    order = {id(e): i for i, e in enumerate(plan.entries)}
    plan.entries = sorted(keep, key=lambda e: order[id(e)])


def _check_complete(plan: Plan, source: TensorSource, targets: Targets) -> None:
    have = {targets.leader.get(t, t) for t in plan.written()}
    missing = [
        n
        for n in targets.required()
        if n not in have and not (targets.optional is not None and targets.optional.search(n))
    ]
    if missing:
        raise ShapeMismatchError(
            f"checkpoint {source.name} lacks parameter(s) {missing[:6]}{' ...' if len(missing) > 6 else ''} "
            f"({len(missing)} of {len(targets.required())} missing)"
        )


def _check_fit(plan: Plan, source: TensorSource, targets: Targets) -> None:
    for entry in plan.entries:
        want = targets.get(entry.targets[0])
        for key in entry.keys:
            info = source.info(key)
            if want.is_floating_point() != info.dtype.is_floating_point:
                what = (
                    "integer/bool weights into a float"
                    if want.is_floating_point()
                    else "float weights into a quantized"
                )
                raise ShapeMismatchError(
                    f"checkpoint {source.name}: {key!r} is {info.dtype} but parameter {entry.targets[0]!r} "
                    f"is {want.dtype}; refusing to cast {what} model"
                )
        if entry.converter is None:
            shape = source.info(entry.keys[0]).shape
            if tuple(shape) != tuple(want.shape):
                raise ShapeMismatchError(
                    f"checkpoint {source.name}: parameter {entry.targets[0]!r} has shape {tuple(shape)}, "
                    f"the model expects {tuple(want.shape)}"
                )
