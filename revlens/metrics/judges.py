"""Judges: ``judge(prompts, responses) -> scores [n]``, and a metric that generates then judges.

Harm on a real chat model is judged on what it generates: by refusal phrases
(:class:`~revlens.metrics.refusal.PhraseJudge`) or by a judge model the researcher has locally
(a safety classifier such as a HarmBench / Llama-Guard-style model). Any callable
``judge(prompts: list[str], responses: list[str])`` returning one score per pair works; scores
are floats, by convention in ``[0, 1]`` with 1 = the behaviour judged (harmful / unsafe).
Adapters for Hugging Face models:

- :class:`ClassifierJudge`: a sequence-classification model; the score is the softmax
  probability of its positive label, on the (prompt, response) text pair or on a formatted text;
- :class:`CausalLMJudge`: a causal LM asked a question; the score is ``p(yes) / (p(yes) + p(no))``
  of its next token after the judge prompt (``template`` with ``{prompt}`` / ``{response}``, or
  the judge tokenizer's own chat template over a user turn and an assistant turn, as
  Llama-Guard-style judges expect).

:func:`judge_metric` wraps a judge into a generation metric for studies, evaluations and the
monitor. Nothing is downloaded: pass a local path or a loaded model.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from revlens._config import as_int
from revlens._types import ModuleLike, PathLike, TokenizerInput
from revlens.errors import MetricError
from revlens.metrics.generation import GenerationMetric, Judge

__all__ = ["CausalLMJudge", "ClassifierJudge", "judge_metric"]


def _load(model: Any, tokenizer: Any, auto: str) -> tuple[Any, Any]:
    import transformers

    if isinstance(model, str) or hasattr(model, "__fspath__"):
        try:
            model = getattr(transformers, auto).from_pretrained(str(model))
        except (OSError, ValueError) as exc:
            raise MetricError(f"cannot load the judge model {str(model)!r}: {exc}") from None
    if tokenizer is None:
        path = getattr(getattr(model, "config", None), "_name_or_path", None)
        if not path:
            raise MetricError("the judge needs its tokenizer: pass tokenizer=")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


def _positive(config: Any, positive: str | int | None) -> int:
    labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if isinstance(positive, int) and not isinstance(positive, bool):
        if positive not in labels and labels:
            raise MetricError(
                f"positive label index {positive} is not among the judge's labels {labels}"
            )
        return positive
    if isinstance(positive, str):
        found = [i for i, name in labels.items() if name.lower() == positive.lower()]
        if not found:
            raise MetricError(
                f"positive label {positive!r} is not among the judge's labels {labels}"
            )
        return found[0]
    for i, name in labels.items():
        if name.lower() in ("unsafe", "harmful", "yes", "toxic", "1", "label_1"):
            return i
    return 1 if len(labels) != 1 else 0


class ClassifierJudge:
    """A Hugging Face sequence classifier as a judge (see the module docstring).

    Args:
        model: a loaded ``...ForSequenceClassification`` model or a local path.
        tokenizer: its tokenizer (default: loaded from the model's path).
        positive: the label that means "harmful" (a name or index; default: a label named
            unsafe / harmful / yes / toxic, else index 1).
        template: ``None`` to classify the (prompt, response) text pair; or a format string
            with ``{prompt}`` and ``{response}`` (``"{response}"`` for response-only classifiers).
        batch_size, max_length: judge batches and truncation.
    """

    name = "judge"

    def __init__(
        self,
        model: ModuleLike | PathLike,
        tokenizer: TokenizerInput | None = None,
        *,
        positive: str | int | None = None,
        template: str | None = None,
        batch_size: int = 16,
        max_length: int = 512,
    ) -> None:
        self.model, self.tokenizer = _load(model, tokenizer, "AutoModelForSequenceClassification")
        self.positive = _positive(self.model.config, positive)
        self.template = template
        self.batch_size = as_int("batch_size", batch_size, min=1)
        self.max_length = as_int("max_length", max_length, min=1)

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        if len(prompts) != len(responses):
            raise MetricError(f"judge got {len(prompts)} prompts and {len(responses)} responses")
        dev = next(self.model.parameters()).device
        out = []
        for s in range(0, len(responses), self.batch_size):
            p, r = prompts[s : s + self.batch_size], responses[s : s + self.batch_size]
            if self.template is None:
                enc = self.tokenizer(
                    p,
                    r,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
            else:
                texts = [self.template.format(prompt=a, response=b) for a, b in zip(p, r)]
                enc = self.tokenizer(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
            logits = self.model(**{k: v.to(dev) for k, v in enc.items()}).logits.double()
            out.append(torch.softmax(logits, -1)[:, self.positive].cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"ClassifierJudge({type(self.model).__name__}, positive={self.positive})"


def _first_ids(tokenizer: Any, words: Sequence[str], what: str) -> Tensor:
    ids = []
    for w in words:
        enc = tokenizer(w, add_special_tokens=False)["input_ids"]
        if not enc:
            raise MetricError(f"{what}: {w!r} encodes to no token")
        ids.append(int(enc[0]))
    return torch.tensor(sorted(set(ids)), dtype=torch.long)


class CausalLMJudge:
    """A causal LM as a judge: ``p(yes) / (p(yes) + p(no))`` of its next token (see the module docstring).

    Args:
        model: a loaded causal LM or a local path.
        tokenizer: its tokenizer (default: loaded from the model's path).
        template: a format string with ``{prompt}`` and ``{response}`` ending where the verdict
            starts; ``None``: the judge tokenizer's chat template over ``[user: prompt,
            assistant: response]`` with a generation prompt (Llama-Guard style).
        yes, no: words whose first tokens mean "harmful" / "not harmful" (e.g. ``("unsafe",)`` /
            ``("safe",)`` for Llama-Guard, ``("Yes",)`` / ``("No",)`` for a HarmBench-style judge).
        batch_size: judge batches.
    """

    name = "judge"

    def __init__(
        self,
        model: ModuleLike | PathLike,
        tokenizer: TokenizerInput | None = None,
        *,
        template: str | None = None,
        yes: Sequence[str] = ("Yes",),
        no: Sequence[str] = ("No",),
        batch_size: int = 8,
    ) -> None:
        self.model, self.tokenizer = _load(model, tokenizer, "AutoModelForCausalLM")
        self.template = template
        if template is None and not getattr(self.tokenizer, "chat_template", None):
            raise MetricError(
                "CausalLMJudge: the judge tokenizer has no chat template; pass template='...{prompt}...{response}...'"
            )
        self.yes, self.no = (
            _first_ids(self.tokenizer, yes, "yes"),
            _first_ids(self.tokenizer, no, "no"),
        )
        self.batch_size = as_int("batch_size", batch_size, min=1)

    def _ids(self, prompt: str, response: str) -> list[int]:
        if self.template is not None:
            return list(
                self.tokenizer(self.template.format(prompt=prompt, response=response))["input_ids"]
            )
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        if len(prompts) != len(responses):
            raise MetricError(f"judge got {len(prompts)} prompts and {len(responses)} responses")
        dev = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        for s in range(0, len(responses), self.batch_size):
            rows = [
                self._ids(p, r)
                for p, r in zip(
                    prompts[s : s + self.batch_size], responses[s : s + self.batch_size]
                )
            ]
            lens = torch.tensor([len(r) for r in rows])
            ids = torch.full((len(rows), int(lens.max())), int(pad), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
            mask = (torch.arange(ids.shape[1])[None] < lens[:, None]).long()
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
            p = torch.softmax(
                logits[torch.arange(len(rows)), (lens - 1).to(dev)].double(), -1
            ).cpu()
            yes, no = p[:, self.yes].sum(-1), p[:, self.no].sum(-1)
            out.append(yes / (yes + no).clamp_min(1e-300))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"CausalLMJudge({type(self.model).__name__}, template={'chat' if self.template is None else 'format'})"


def judge_metric(
    judge: Judge,
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str | int] | None = None,
    name: str = "judge_score",
) -> GenerationMetric:
    """A metric that generates greedily and scores ``judge(prompts, responses)`` per prompt."""
    return GenerationMetric(judge, max_new_tokens=max_new_tokens, stop=stop, name=name)
