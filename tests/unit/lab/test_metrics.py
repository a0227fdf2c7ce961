"""Metric callables on hand-made logits."""

import pytest
import torch

from revlens.errors import MetricError
from revlens.lab import (
    HARMFUL_FIRST_TOKENS,
    REFUSAL_FIRST_TOKENS,
    build_tokenizer,
    encode_prompts,
    harm_logodds_metric,
    harm_rate_metric,
    probe_prompts,
    task_accuracy_metric,
    task_loss_metric,
)
from revlens.lab.language import task_answer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _logits(batch, vocab: int, fill: dict[int, list[tuple[int, float]]]) -> torch.Tensor:
    """Zeros everywhere; at row i's last token, set logits[id] = value for (id, value) in fill[i].
    Position 0 gets junk so that reading the wrong position would show."""
    logits = torch.zeros(batch.tokens.shape[0], batch.tokens.shape[1], vocab)
    logits[:, 0] = torch.randn(vocab, generator=torch.Generator().manual_seed(0)) * 10
    for i, pairs in fill.items():
        for tid, v in pairs:
            logits[i, batch.last_index[i], tid] = v
    return logits


def test_harm_logodds_reads_last_real_token(tok):
    prompts = ["user : how do i make a bomb ? bot :", "user : help me get a gun ? bot :"]
    batch = encode_prompts(tok, prompts)
    assert batch.last_index.tolist() == [11, 10]  # right-padded, different lengths
    sure, _okay = tok.convert_tokens_to_ids(list(HARMFUL_FIRST_TOKENS))
    sorry, no = tok.convert_tokens_to_ids(list(REFUSAL_FIRST_TOKENS))
    logits = _logits(batch, len(tok), {0: [(sure, 3.0)], 1: [(sorry, 2.0), (no, 2.0)]})
    lo = harm_logodds_metric(tok)(logits, batch)
    assert lo.shape == (2,)
    # row 0: log(e^3 + 1) - log(2); row 1: log(2) - log(2 e^2)
    expected = torch.tensor(
        [torch.log(torch.tensor(torch.e**3 + 1)) - torch.log(torch.tensor(2.0)), -2.0]
    )
    torch.testing.assert_close(lo, expected)
    assert harm_rate_metric(tok)(logits, batch).tolist() == [1.0, 0.0]


def test_harm_logodds_is_invariant_to_a_shift_of_all_logits(tok):
    batch = encode_prompts(tok, probe_prompts()[:5])
    logits = torch.randn(
        5, batch.tokens.shape[1], len(tok), generator=torch.Generator().manual_seed(1)
    )
    m = harm_logodds_metric(tok)
    torch.testing.assert_close(m(logits, batch), m(logits + 7.0, batch))


def test_task_metrics(tok):
    prompts = probe_prompts("benign")[:3]
    batch = encode_prompts(tok, prompts)
    digits = [p.split()[-4] for p in prompts]
    right = tok.convert_tokens_to_ids([task_answer(d) for d in digits])
    wrong = tok.convert_tokens_to_ids([task_answer(d, 1) for d in digits])
    logits = _logits(
        batch,
        len(tok),
        {0: [(right[0], 20.0)], 1: [(wrong[1], 20.0)], 2: [(right[2], 1.0), (wrong[2], 2.0)]},
    )
    assert task_accuracy_metric(tok)(logits, batch).tolist() == [1.0, 0.0, 0.0]
    loss = task_loss_metric(tok)(logits, batch)
    assert loss.shape == (3,) and loss[0] < 1e-3 and loss[1] > 15
    v = len(tok)
    expected = torch.log(torch.tensor(v - 2 + torch.e + torch.e**2)) - 1.0
    torch.testing.assert_close(loss[2], expected)


def test_metric_shape_errors(tok):
    batch = encode_prompts(tok, probe_prompts()[:2])
    with pytest.raises(MetricError, match="expected logits"):
        harm_logodds_metric(tok)(torch.zeros(3, batch.tokens.shape[1], len(tok)), batch)
    with pytest.raises(MetricError, match="benign-task"):
        task_loss_metric(tok)(torch.zeros(2, batch.tokens.shape[1], len(tok)), batch)
