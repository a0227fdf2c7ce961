"""Metrics described as data: ``{"name": "logit_diff", "pos": [...], "neg": [...]}``.

A history can declare the metrics that make sense for it (``history.json`` →
``metadata.metrics_spec``: name → spec), so a command line can say ``--metric harm`` for a history
that defines ``harm``, without revlens knowing what harm means for that model. The built-in
names (:data:`METRICS`) are also valid specs on their own (``"kl"``).

Example:
    >>> m = metric_from_spec({"name": "logit_rate", "pos": ["sure"], "neg": ["sorry"]})
    >>> type(m).__name__
    'LogitRate'
"""

from collections.abc import Mapping
from typing import Any, no_type_check

from revlens.errors import MetricError
from revlens.metrics.continuation import PhraseLogOdds
from revlens.metrics.refusal import REFUSAL_PHRASES, compliance_rate, refusal_rate, refusal_score
from revlens.metrics.tokens import greedy_rate, kl_to, logit_diff, logit_rate

__all__ = ["METRICS", "metric_from_spec"]

METRICS = (
    "logit_diff",
    "logit_rate",
    "greedy_rate",
    "kl",
    "refusal_score",
    "refusal_rate",
    "compliance_rate",
    "phrase_logodds",
    "phrase_rate",
)
"""Built-in metric names a spec may use: token sets ``pos`` / ``neg`` / ``tokens``; phrase sets
``pos`` / ``neg`` (``phrase_*``); ``phrases``, ``max_new_tokens``, ``case_sensitive``, ``prefix``
(``refusal_rate`` / ``compliance_rate``, generation-based)."""


def _tokens(spec: Mapping[str, Any], key: str, name: str) -> list[str | int]:
    value = spec.get(key)
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise MetricError(
            f"metric spec {name!r} needs a non-empty list {key!r} of tokens; got {value!r}"
        )
    return value


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def metric_from_spec(spec: str | Mapping[str, Any], *, label: str | None = None) -> Any:
    """A metric callable from a spec (a mapping with ``name``, or a built-in name).

    ``label`` (e.g. the history's name for it, ``"harm"``) becomes the metric's ``name``, which
    reports record.

    Raises:
        MetricError: an unknown name or missing token sets (named).
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise MetricError(
            f"a metric spec is a built-in name or a mapping with 'name'; got {spec!r}"
        )
    kind = spec["name"]
    if kind in ("logit_diff", "logit_rate"):
        make = logit_diff if kind == "logit_diff" else logit_rate
        metric: Any = make(_tokens(spec, "pos", kind), _tokens(spec, "neg", kind))
    elif kind == "greedy_rate":
        metric = greedy_rate(_tokens(spec, "pos", kind))
    elif kind == "kl":
        metric = kl_to()
    elif kind == "refusal_score":
        metric = refusal_score(_tokens(spec, "tokens", kind) if "tokens" in spec else None)
    elif kind in ("refusal_rate", "compliance_rate"):
        make = refusal_rate if kind == "refusal_rate" else compliance_rate
        phrases = spec.get("phrases", REFUSAL_PHRASES)
        metric = make(
            [phrases] if isinstance(phrases, str) else list(phrases),
            max_new_tokens=int(spec.get("max_new_tokens", 32)),
            case_sensitive=bool(spec.get("case_sensitive", False)),
            prefix=bool(spec.get("prefix", False)),
        )
    elif kind in ("phrase_logodds", "phrase_rate"):
        metric = PhraseLogOdds(
            _tokens(spec, "pos", kind), _tokens(spec, "neg", kind), rate=kind == "phrase_rate"
        )
    else:
        raise MetricError(
            f"unknown metric {kind!r} in spec {dict(spec)}; built-in metrics: {', '.join(METRICS)}"
        )
    if label:
        metric.name = label
    return metric
