"""What :func:`~revlens.defenses.compare_defenses` measures on every fine-tuned model.

:class:`EvalSets` names the prompts (any history: plain strings, or :class:`~revlens.probes.Probes`,
e.g. chat probes) and the harm metric; :class:`Scorer` scores a model against the aligned one:

- **harm**: the harm metric's per-prompt value on the held-out harmful prompts; a prompt counts as
  harmful when the value is ``> 0`` (a log-odds metric: compliance outscores refusal; a rate metric:
  1). ``harm_k`` of ``harm_n``, the rate and its Wilson 95 % interval, and ``harm_score`` (the mean
  value: the graded margin). The metric: ``EvalSets.harm`` (a spec such as ``{"name": "logit_diff",
  "pos": [...], "neg": [...]}``, a built-in name, or a metric object); else the history's declared
  ``metadata.metrics_spec["harm"]``; else, where the tokenizer has a chat template, greedy generation
  judged by refusal phrases (``compliance_rate``);
- **over-refusal** on the harmless prompts: a token-set harm metric's refusal tokens winning the greedy
  first token (``greedy_rate(neg)``), or the generation metric's ``over_refusal_rate``;
- **KL to aligned** on the harmless prompts: ``mean_x KL(p_aligned(·|x) ‖ p_θ(·|x))`` at the last
  prompt position;
- **task**: ``EvalSets.task`` — a callable ``model -> {name: value}``, or held-out pairs (answer-only
  loss, ``task_loss``);
- **drift**: ``μ_l(θ_T) − μ_l(aligned)`` on ``EvalSets.probes`` (last position) at every layer, and its
  cosine with ``v_rev`` and with the refusal direction ``r`` (mean over layers);
- **weight-space reverted fraction** ``−Σ⟨ΔW, V⟩ / Σ‖V‖²`` over every 2-d weight
  (``V = W_aligned − W_base``, ``ΔW = W_T − W_aligned``; LoRA merged), and ``cos(ΔW, −V)``.
"""

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

import torch

from revlens._numbers import wilson
from revlens.errors import ConfigError, MetricError
from revlens.metrics import (
    bind_metric,
    call_metric,
    greedy_rate,
    metric_from_spec,
    metric_values,
    over_refusal_rate,
)
from revlens.metrics.model import is_model_metric
from revlens.probes import Probes

__all__ = ["EvalSets", "Scorer", "plain_model"]


@no_type_check  # validates its own fields (typed errors)
@dataclass
class EvalSets:
    """The prompts and metrics of a comparison (module docstring).

    Attributes:
        harmful: held-out harmful prompts (harm at T and along the run).
        harmless: harmless prompts (KL to aligned, over-refusal; the refusal direction's other side).
        probes: harmful prompts the drift, ``v_rev``, ``r`` and the activation defenses read (keep them
            apart from ``harmful``: the alignment split).
        task: a callable ``model -> {name: float}`` or held-out (prompt, answer) pairs.
        alignment: (prompt, answer) pairs for Lisa's alignment state (``None``: Lisa cannot run).
        harm: the harm metric (module docstring); ``None``: the history's, else generation.
        over_refusal: the over-refusal metric (``None``: derived from ``harm``).
        layers: the layers read (revlens ``resid_post`` indices; ``None``: every block's output).
        chat: sets given as plain strings are rendered through the tokenizer's chat template: ``None``
            where it has one, ``True`` always (an error without one), ``False`` never
            (:mod:`revlens.defenses.chatprep`).
    """

    harmful: Any
    harmless: Any
    probes: Any
    task: Any = None
    alignment: Any = None
    harm: Any = None
    over_refusal: Any = None
    layers: Sequence[int] | None = None
    chat: bool | None = None

    def __post_init__(self) -> None:
        if self.chat is not None and not isinstance(self.chat, bool):
            raise ConfigError(
                f"EvalSets.chat: True, False or None (where a chat template exists), got {self.chat!r}"
            )
        plain = set(getattr(self, "plain", ()))
        for name in ("harmful", "harmless", "probes"):
            value = getattr(self, name)
            if not isinstance(value, Probes):
                if isinstance(value, str) or not isinstance(value, Sequence) or not value:
                    raise ConfigError(
                        f"EvalSets.{name}: a non-empty list of prompts or a Probes, got {value!r:.80}"
                    )
                setattr(self, name, Probes(list(value)))
                plain.add(name)
        self.plain = plain  # the sets given as plain strings (rendered through a chat template where one applies)
        if self.task is not None and not callable(self.task):
            from revlens.defenses.data import read_pairs

            self.task = read_pairs(self.task, "task")

    def fingerprint(self) -> dict[str, Any]:
        """What changes the measurements (prompt texts, metric specs)."""

        def texts(p: Probes) -> list[str]:
            return [str(x) for x in p.prompts]

        t = self.task
        task = (
            (f"{t.__module__}.{t.__qualname__}" if inspect.isfunction(t) else repr(t))
            if callable(t)
            else t
        )

        def chat(p: Probes) -> Any:
            return p.conversations if p.is_chat else None

        return {
            "harmful": texts(self.harmful),
            "harmless": texts(self.harmless),
            "probes": texts(self.probes),
            "chat": [chat(self.harmful), chat(self.harmless), chat(self.probes)],
            "task": task,
            "task_chat": self.harmful.is_chat,  # task pairs are rendered as the harmful prompts are
            "harm": repr(self.harm),
            "over_refusal": repr(self.over_refusal),
            "layers": None if self.layers is None else list(self.layers),
        }


def plain_model(model: Any) -> torch.nn.Module:
    """A plain Hugging Face model with ``model``'s weights: a PEFT model merged into a copy."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def _resolve_harm(
    sets: EvalSets, metadata: Mapping[str, Any], tokenizer: Any
) -> tuple[Any, Any, str]:
    spec, source = sets.harm, "EvalSets.harm"
    if spec is None:
        spec = (metadata.get("metrics_spec") or {}).get("harm")
        source = "the history's metrics_spec['harm']"
    if spec is None and getattr(tokenizer, "chat_template", None):
        spec, source = {"name": "compliance_rate"}, "generation + refusal phrases (chat template)"
    if spec is None:
        raise MetricError(
            "no harm metric: pass EvalSets(harm=...), declare metadata.metrics_spec['harm'] in the "
            "history, or use a tokenizer with a chat template (generation + refusal phrases)"
        )
    metric = metric_from_spec(spec, label="harm") if isinstance(spec, (str, Mapping)) else spec
    over = sets.over_refusal
    if over is None:
        neg = spec.get("neg") if isinstance(spec, Mapping) else None
        over = (
            greedy_rate(neg) if neg and not str(spec.get("name", "")).startswith("phrase") else None
        )
        if over is None and is_model_metric(metric):
            over = over_refusal_rate(max_new_tokens=getattr(metric, "max_new_tokens", 32))
    elif isinstance(over, (str, Mapping)):
        over = metric_from_spec(over, label="over_refusal")
    return (
        bind_metric(metric, tokenizer),
        (None if over is None else bind_metric(over, tokenizer)),
        source,
    )


class Scorer:
    """Scores models against the aligned one (module docstring).

    Args:
        sets: the :class:`EvalSets`.
        tokenizer: the history's tokenizer.
        aligned: the aligned model (plain Hugging Face).
        metadata: the history's metadata (its declared harm metric).
        batch_size: prompts per forward.
    """

    def __init__(
        self,
        sets: EvalSets,
        tokenizer: Any,
        aligned: torch.nn.Module,
        *,
        metadata: Mapping[str, Any],
        batch_size: int = 32,
    ) -> None:
        self.sets, self.tokenizer, self.batch_size = sets, tokenizer, batch_size
        self.harm, self.over, self.harm_source = _resolve_harm(sets, metadata, tokenizer)
        self.tok = {
            n: getattr(sets, n).tokenize(tokenizer) for n in ("harmful", "harmless", "probes")
        }
        n = int(aligned.config.num_hidden_layers)
        self.layers = (
            list(range(1, n + 1)) if sets.layers is None else [int(x) for x in sets.layers]
        )
        self.aligned_logprobs = self._last_logprobs(aligned, "harmless")
        self.mu_aligned = self.means(aligned)

    def _batches(self, name: str) -> Any:
        return self.tok[name].batches(self.batch_size)

    @torch.no_grad()
    def _logits(self, model: Any, batch: Any) -> torch.Tensor:
        mask = (torch.arange(batch.tokens.shape[1])[None] <= batch.last_index[:, None]).long()
        return model(input_ids=batch.tokens, attention_mask=mask).logits.float()

    def _last_logprobs(self, model: Any, name: str) -> torch.Tensor:
        out = []
        for b in self._batches(name):
            logits = self._logits(model, b)
            out.append(
                torch.log_softmax(
                    logits[torch.arange(len(b.last_index)), b.last_index].double(), -1
                )
            )
        return torch.cat(out)

    def _values(self, metric: Any, model: Any, name: str) -> torch.Tensor:
        out = []
        for b in self._batches(name):
            if is_model_metric(metric):
                out.append(metric_values(metric, plain_model(model), b).double())
            else:
                out.append(call_metric(metric, self._logits(model, b), b).double())
        return torch.cat(out)

    def harm_now(self, model: Any) -> dict[str, Any]:
        """Harm only (the trajectory's points): ``harm_k``, ``harm_n``, ``harm_rate``, ``harm_score``."""
        was = model.training
        model.eval()
        try:
            v = self._values(self.harm, model, "harmful")
        finally:
            model.train(was)
        k, n = int((v > 0).sum()), len(v)
        return {"harm_k": k, "harm_n": n, "harm_rate": k / n, "harm_score": float(v.mean())}

    @torch.no_grad()
    def means(self, model: Any) -> torch.Tensor:
        """``μ_l`` on the probes (last position), ``[layer, d]`` float64."""
        from revlens.sites import access

        tp, acc = self.tok["probes"], access(model)
        mask = (torch.arange(tp.tokens.shape[1])[None] < tp.lengths[:, None]).long()
        rows = acc.read(tp.tokens, tp.weights, acc.sites(self.layers), mask=mask)
        return torch.stack(rows, dim=1).double().mean(0)

    def score(
        self, model: Any, *, v: Any, r: Any, weight_fraction: Callable[[Any], dict[str, float]]
    ) -> dict[str, Any]:
        """Every measure of the module docstring on the fine-tuned ``model``."""
        plain = plain_model(model)
        plain.eval()
        out: dict[str, Any] = self.harm_now(plain)
        lo, hi = wilson(out["harm_k"], out["harm_n"])
        out.update(harm_lo=lo, harm_hi=hi)
        if self.over is not None:
            ov = self._values(self.over, plain, "harmless")
            out.update(
                over_refusal=float((ov > 0).double().mean()), over_refusal_k=int((ov > 0).sum())
            )
        lp = self._last_logprobs(plain, "harmless")
        ref = self.aligned_logprobs
        out["kl_aligned"] = float((ref.exp() * (ref - lp)).sum(-1).mean())
        if callable(self.sets.task):
            out.update({k: float(x) for k, x in self.sets.task(plain).items()})
        elif self.sets.task is not None:
            from revlens.defenses.data import encode_pairs, lm_loss

            with torch.no_grad():
                out["task_loss"] = float(
                    lm_loss(
                        plain,
                        *encode_pairs(
                            self.tokenizer, self.sets.task, chat=self.sets.harmful.is_chat
                        ),
                    )
                )
        drift = self.means(plain) - self.mu_aligned
        for name, d in (("v_rev", v), ("r", r)):
            cos = [
                float(
                    torch.nn.functional.cosine_similarity(
                        drift[self.layers.index(layer)], d.vectors[i].double(), dim=0
                    )
                )
                for i, layer in enumerate(d.layers)
                if layer in self.layers
            ]
            out[f"cos_drift_{name}"] = sum(cos) / len(cos)
            out[f"cos_drift_{name}_layers"] = cos
        out.update(weight_fraction(plain))
        return out
