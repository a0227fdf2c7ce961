"""``revlens.evaluate``: behaviour metrics on every checkpoint of a history, as a tidy table.

Each checkpoint's weights are swapped into one booted model (as :func:`revlens.collect` does),
then every metric is scored on its prompt set: logits metrics of a set share one forward per
batch, generation metrics with the same settings share one greedy generation per batch (the
responses are kept), other model metrics run on their own. ``kl_to()`` without a reference gets
the aligned model's next-token distribution on the same prompts (the harmless-side cost, with
``over_refusal_rate()`` on harmless prompts).
"""

import copy
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, no_type_check

import pandas as pd
import torch
from tqdm.auto import tqdm

from revlens._config import as_int
from revlens._types import Device
from revlens._version import __version__
from revlens.collect import resolve_probes
from revlens.errors import HistoryError, MetricError, ProbeError, naming
from revlens.evaluate.result import Evaluation
from revlens.history import Checkpoint, History, HistoryInput
from revlens.history.spec import metrics_frame
from revlens.metrics import (
    GenerationMetric,
    KLTo,
    bind_metric,
    call_metric,
    check_metric_output,
    metric_from_spec,
    metric_name,
    score_metric,
)
from revlens.metrics.model import MetricLike, is_model_metric
from revlens.model import LensModel, ModelInput
from revlens.probes import Probes, ProbesInput, TokenizedProbes
from revlens.sites import access

MetricSpec: TypeAlias = MetricLike | str | Mapping[str, Any]
"""One metric: a metric object, a built-in name, or a spec mapping with ``name``."""

EvalMetrics: TypeAlias = (
    MetricLike | Sequence[MetricLike] | Mapping[str, MetricSpec | tuple[MetricSpec, str]]
)
"""What :func:`evaluate` scores: one metric, a list of them, or column name -> metric / spec, or
-> ``(metric, probe set or label)``."""

__all__ = ["evaluate"]


class _Set:
    """One prompt set, tokenized, with the metrics scored on it."""

    def __init__(self, name: str, probes: Probes) -> None:
        self.name, self.probes = name, probes
        self.jobs: list[tuple[str, Any]] = []
        self.tokenized: TokenizedProbes | None = None


def _prompt_sets(hist: History, prompts: Any) -> dict[str, _Set]:
    if isinstance(prompts, Mapping):
        if not prompts:
            raise ProbeError("prompts: an empty mapping; give set name -> prompts")
        return {str(k): _Set(str(k), resolve_probes(hist, v)) for k, v in prompts.items()}
    return {"all": _Set("all", resolve_probes(hist, prompts))}


def _metric_list(hist: History, metrics: Any) -> list[tuple[str, Any, str | None]]:
    """``(column, metric, set or label or None)`` for every metric asked."""
    if metrics is None:
        specs = hist.metadata.get("metrics_spec") or {}
        if not specs:
            raise MetricError(
                "no metrics given and the history declares none (metadata.metrics_spec); pass metrics="
            )
        metrics = {name: metric_from_spec(spec, label=name) for name, spec in specs.items()}
    if not isinstance(metrics, Mapping):
        items = [metrics] if callable(metrics) or is_model_metric(metrics) else list(metrics)
        metrics = {metric_name(m): m for m in items}
    out = []
    for name, value in metrics.items():
        metric, where = value if isinstance(value, tuple) and len(value) == 2 else (value, None)
        if isinstance(metric, (str, Mapping)):
            metric = metric_from_spec(metric, label=str(name))
        out.append((str(name), metric, None if where is None else str(where)))
    if not out:
        raise MetricError("metrics is empty")
    return out


def _assign(sets: dict[str, _Set], metrics: list[tuple[str, Any, str | None]]) -> dict[str, _Set]:
    """Put each metric on its set: a set name, a label (the labelled subset of the one set that
    has it), or every set."""
    n_sets = len(sets)
    for name, metric, where in metrics:
        if where is None:
            targets = list(sets.values())
        elif where in sets:
            targets = [sets[where]]
        else:
            holders = [
                s for s in list(sets.values()) if s.probes.labels and where in s.probes.labels
            ]
            if not holders:
                raise ProbeError(
                    f"metric {name!r}: {where!r} is neither a prompt set ({list(sets)}) nor a label of one"
                )
            key = where if len(holders) == 1 else f"{holders[0].name}:{where}"
            sets.setdefault(key, _Set(key, holders[0].probes.where(where)))
            targets = [sets[key]]
        for s in targets:
            column = name if where is not None or n_sets == 1 else f"{name}:{s.name}"
            s.jobs.append((column, copy.copy(metric) if isinstance(metric, KLTo) else metric))
    return {k: s for k, s in sets.items() if s.jobs}


def _select(hist: History, checkpoints: Any) -> list[Checkpoint]:
    if checkpoints is None:
        return list(hist)
    names = [checkpoints] if isinstance(checkpoints, str) else [str(c) for c in checkpoints]
    known = {c.name for c in hist}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HistoryError(
            f"checkpoint(s) {unknown} are not in the history; checkpoints: {sorted(known)}"
        )
    return [c for c in hist if c.name in names]


def _score_batch(
    lm: LensModel, s: _Set, batch: Any
) -> tuple[dict[str, torch.Tensor], list[tuple[int, Any]]]:
    """Every metric of set ``s`` on one batch: values per column, and the generations made."""
    out: dict[str, torch.Tensor] = {}
    logits = None
    generations: dict[tuple, Any] = {}
    for column, metric in s.jobs:
        if isinstance(metric, GenerationMetric):
            key = metric.generation_key
            if key not in generations:
                generations[key] = metric.generate(lm, batch)
            out[column] = check_metric_output(
                metric.from_generation(batch, generations[key]), len(batch), metric
            )
        elif is_model_metric(metric):
            out[column] = score_metric(metric, lm, batch)
        else:
            if logits is None:
                with torch.no_grad():
                    logits = access(lm).forward(batch.tokens)
            out[column] = call_metric(metric, logits, batch)
    return out, [(key[0], g) for key, g in generations.items()]


def _kl_references(lm: LensModel, hist: History, sets: dict[str, _Set], batch_size: int) -> None:
    """Fill ``kl_to()`` metrics without a reference with the aligned model's last-token logits."""
    needy = [
        (s, m)
        for s in sets.values()
        for _, m in s.jobs
        if isinstance(m, KLTo) and m.needs_reference
    ]
    if not needy:
        return
    with naming(f"checkpoint {hist.aligned.name}", "computing the kl_to reference on"):
        _kl_rows(lm, hist, sets, batch_size, needy)


def _kl_rows(
    lm: LensModel, hist: History, sets: dict[str, _Set], batch_size: int, needy: list
) -> None:
    lm.load(hist.aligned)
    for s in {id(s): s for s, _ in needy}.values():
        rows = []
        with torch.no_grad():
            for batch in s.tokenized.batches(batch_size):  # type: ignore[union-attr]
                logits = access(lm).forward(batch.tokens)
                rows.append(
                    logits[torch.arange(len(batch)), batch.last_index.to(logits.device)]
                    .float()
                    .cpu()
                )
        for t, m in needy:
            if t is s:
                m.set_reference(torch.cat(rows))


@no_type_check  # validates its own arguments (typed errors)
def evaluate(
    history: HistoryInput,
    prompts: ProbesInput | Mapping[str, ProbesInput] | None = None,
    metrics: EvalMetrics | None = None,
    *,
    model: ModelInput | None = None,
    checkpoints: Sequence[str] | None = None,
    batch_size: int = 32,
    device: Device | None = None,
    progress: bool = True,
) -> Evaluation:
    """Score behaviour metrics on every checkpoint of a history.

    Args:
        history: a :class:`~revlens.History` (or anything ``History.load`` accepts).
        prompts: a :class:`~revlens.Probes` (chat probes use the history's template for every
            checkpoint), a list, a JSONL path, ``None`` (the history's default probes), or a mapping
            set name -> any of these (e.g. ``{"harmful": ..., "harmless": ...}``).
        metrics: a mapping column name -> metric (a logits metric, a model metric, a spec), or
            ``(metric, where)`` with ``where`` a set name or a label of the probes (its subset),
            e.g. ``{"refusal": (refusal_rate(), "harmful"), "over_refusal": (over_refusal_rate(),
            "harmless"), "kl": (kl_to(), "harmless")}``; a list of metrics (named by their names);
            ``None``: the metrics the history declares (``metadata.metrics_spec``). A metric on
            no set is scored on every set (column ``name:set`` when there are several).
        model: a booted model to reuse (default: boot the history's architecture).
        checkpoints: names of the checkpoints to evaluate (default: all).
        batch_size: prompts per forward / generation.
        device, progress: where the booted model runs; a tqdm bar over checkpoints.

    Returns:
        :class:`~revlens.evaluate.Evaluation` (``.table``: one row per checkpoint, the shape of a
        history's metrics table).

    Raises:
        MetricError / ProbeError / HistoryError: bad metrics, prompts, sets or checkpoint names,
            before any forward pass.
    """
    batch_size = as_int("batch_size", batch_size, min=1)
    hist = History.load(history)
    sets = _assign(_prompt_sets(hist, prompts), _metric_list(hist, metrics))
    selected = _select(hist, checkpoints)
    lm = LensModel.boot(model) if model is not None else hist.boot(device=device)
    lm.check_architecture(hist)
    for s in sets.values():
        s.tokenized = s.probes.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
        for _, m in s.jobs:
            bind_metric(m, lm.tokenizer, vocab_size=lm.vocab_size)
    _kl_references(lm, hist, sets, batch_size)
    records, per_prompt, responses = [], [], []
    for ck in tqdm(selected, desc="evaluate", unit="ckpt", disable=not progress):
        with naming(f"checkpoint {ck.name}", "evaluating"):
            records.append(_score_checkpoint(lm, ck, sets, batch_size, per_prompt, responses))
    return _result(hist, lm, sets, records, per_prompt, responses)


def _score_checkpoint(
    lm: LensModel,
    ck: Checkpoint,
    sets: dict[str, _Set],
    batch_size: int,
    per_prompt: list,
    responses: list,
) -> dict[str, Any]:
    """One checkpoint's record (its per-prompt values and responses appended to the lists)."""
    lm.load(ck)
    record: dict[str, Any] = {"checkpoint": ck.name}
    for s in sets.values():
        sums: dict[str, float] = {}
        for batch in s.tokenized.batches(batch_size):
            values, gens = _score_batch(lm, s, batch)
            texts = batch.texts or [""] * len(batch)
            for column, v in values.items():
                sums[column] = sums.get(column, 0.0) + float(v.sum())
                per_prompt += [
                    {
                        "checkpoint": ck.name,
                        "metric": column,
                        "set": s.name,
                        "index": int(i),
                        "prompt": t,
                        "value": float(x),
                    }
                    for i, t, x in zip(batch.indices, texts, v)
                ]
            for n_new, g in gens:
                responses += [
                    {
                        "checkpoint": ck.name,
                        "set": s.name,
                        "index": int(i),
                        "prompt": t,
                        "max_new_tokens": int(n_new),
                        "response": r,
                    }
                    for i, t, r in zip(batch.indices, texts, g.texts)
                ]
        record.update({c: total / len(s.tokenized) for c, total in sums.items()})
    return record


def _result(
    hist: History,
    lm: LensModel,
    sets: dict[str, _Set],
    records: list,
    per_prompt: list,
    responses: list,
) -> Evaluation:
    columns = {
        c: {"metric": metric_name(m), "set": s.name, "repr": repr(m)}
        for s in sets.values()
        for c, m in s.jobs
    }
    templates = {
        s.name: s.tokenized.template for s in sets.values() if s.tokenized.template is not None
    }
    provenance = {
        "revlens_version": __version__,
        "model": lm.source,
        "history": hist.metadata.get("spec"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "chat_template": next(iter(templates.values()), None),
        "chat_templates": templates,
        "n_prompts": {s.name: len(s.tokenized) for s in sets.values()},
        "datasets": {s.name: s.tokenized.datasets for s in sets.values() if s.tokenized.datasets},
    }
    return Evaluation(
        table=metrics_frame(hist, records),
        per_prompt=pd.DataFrame(
            per_prompt, columns=["checkpoint", "metric", "set", "index", "prompt", "value"]
        ),
        responses=pd.DataFrame(
            responses,
            columns=["checkpoint", "set", "index", "prompt", "max_new_tokens", "response"],
        ),
        config={"metrics": columns, "sets": list(sets)},
        provenance=provenance,
    )
