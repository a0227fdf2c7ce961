"""Behaviour metrics: logits metrics ``metric(logits, batch)`` and model metrics ``metric.score(model, batch)``.

Used by causal studies, the monitor and evaluations (every one accepts both kinds). Built in:

- logits, read at each prompt's last token (:mod:`revlens.metrics.tokens`): token log-odds
  (:func:`logit_diff`, :func:`logit_rate`), greedy-token rate, KL to a reference, task loss; the
  refusal score of :mod:`revlens.metrics.refusal` (:func:`refusal_score`);
- model metrics (:mod:`revlens.metrics.model`): multi-token phrase log-probs / log-odds scored
  teacher-forced (:mod:`revlens.metrics.continuation`), the generation-based refusal rate
  (:func:`refusal_rate`, :func:`compliance_rate`, :func:`over_refusal_rate`) and judge models
  (:mod:`revlens.metrics.judges`), on greedy generations (:mod:`revlens.metrics.generation`).

Any callable with the logits signature, or object with ``score(model, batch)``, works too. Metrics
can also be described as data (:func:`metric_from_spec`). A new metric goes into this package.
"""

from revlens.metrics.continuation import (
    PhraseLogOdds,
    PhraseLogProb,
    phrase_logodds,
    phrase_logprob,
    phrase_rate,
)
from revlens.metrics.generation import Generation, GenerationMetric, greedy_generate, stop_token_ids
from revlens.metrics.judges import CausalLMJudge, ClassifierJudge, judge_metric
from revlens.metrics.model import (
    MetricLike,
    ModelMetric,
    ScoresModel,
    bind_metric,
    is_model_metric,
    metric_values,
    score_metric,
)
from revlens.metrics.refusal import (
    ARDITI_PHRASES,
    REFUSAL_PHRASES,
    REFUSAL_STARTS,
    PhraseJudge,
    RefusalScore,
    compliance_rate,
    over_refusal_rate,
    refusal_rate,
    refusal_score,
    tokenizer_family,
)
from revlens.metrics.specs import METRICS, metric_from_spec
from revlens.metrics.steps import FullForwardFallback
from revlens.metrics.tokens import (
    GreedyRate,
    KLTo,
    LogitDiff,
    LogitRate,
    Metric,
    TaskLoss,
    TokenMetric,
    call_metric,
    check_metric_output,
    greedy_rate,
    kl_to,
    last_logprobs,
    logit_diff,
    logit_rate,
    metric_name,
    task_loss,
)

__all__ = [
    "ARDITI_PHRASES",
    "METRICS",
    "REFUSAL_PHRASES",
    "REFUSAL_STARTS",
    "CausalLMJudge",
    "ClassifierJudge",
    "FullForwardFallback",
    "Generation",
    "GenerationMetric",
    "GreedyRate",
    "KLTo",
    "LogitDiff",
    "LogitRate",
    "Metric",
    "MetricLike",
    "ModelMetric",
    "PhraseJudge",
    "PhraseLogOdds",
    "PhraseLogProb",
    "RefusalScore",
    "ScoresModel",
    "TaskLoss",
    "TokenMetric",
    "bind_metric",
    "call_metric",
    "check_metric_output",
    "compliance_rate",
    "greedy_generate",
    "greedy_rate",
    "is_model_metric",
    "judge_metric",
    "kl_to",
    "last_logprobs",
    "logit_diff",
    "logit_rate",
    "metric_from_spec",
    "metric_name",
    "metric_values",
    "over_refusal_rate",
    "phrase_logodds",
    "phrase_logprob",
    "phrase_rate",
    "refusal_rate",
    "refusal_score",
    "score_metric",
    "stop_token_ids",
    "task_loss",
    "tokenizer_family",
]
