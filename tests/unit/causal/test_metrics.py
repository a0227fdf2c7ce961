"""Behaviour metrics: values against hand computation, token validation, output checks."""

import pytest
import torch

from revlens.causal import greedy_rate, kl_to, logit_diff, task_loss
from revlens.errors import MetricError
from revlens.metrics import check_metric_output


@pytest.fixture()
def logits_batch(tokens):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(tokens), tokens.tokens.shape[1], 32, generator=g)
    return logits, tokens


def _last_lp(logits, batch):
    return torch.log_softmax(logits[torch.arange(len(batch)), batch.last_index], -1)


def test_logit_diff_is_log_odds_of_two_sets_at_the_last_token(lm, logits_batch):
    logits, batch = logits_batch
    m = logit_diff(["w1", 3], "w4", tokenizer=lm.tokenizer)
    lp = _last_lp(logits, batch)
    ids = lm.tokenizer.convert_tokens_to_ids(["w1", "w4"])
    expected = torch.logsumexp(lp[:, [ids[0], 3]], -1) - lp[:, ids[1]]
    assert torch.allclose(m(logits, batch), expected, atol=1e-6)


def test_greedy_rate_task_loss_and_kl(lm, logits_batch):
    logits, batch = logits_batch
    lp = _last_lp(logits, batch)
    top = lp.argmax(-1)
    rate = greedy_rate([int(top[0])], tokenizer=lm.tokenizer)(logits, batch)
    assert rate[0] == 1.0 and torch.equal(rate, (top == top[0]).float())
    targets = [5] * len(batch)
    assert torch.allclose(task_loss(targets, tokenizer=lm.tokenizer)(logits, batch), -lp[:, 5])
    ref = logits[torch.arange(len(batch)), batch.last_index]
    kl = kl_to(ref)
    assert torch.allclose(kl(logits, batch), torch.zeros(len(batch)), atol=1e-6)
    assert bool((kl(logits * 2, batch) > 0).all())
    with pytest.raises(MetricError, match="no reference"):
        kl_to()(logits, batch)


def test_token_sets_are_validated(lm):
    with pytest.raises(MetricError, match="empty"):
        logit_diff([], ["w1"])
    with pytest.raises(MetricError, match="'banana'"):
        logit_diff(["banana"], ["w1"], tokenizer=lm.tokenizer)
    with pytest.raises(MetricError, match="token id 999"):
        greedy_rate([999], tokenizer=lm.tokenizer)
    with pytest.raises(MetricError, match="bind"):
        logit_diff(["w1"], ["w2"]).ids("pos")


def test_metric_output_checks_name_the_metric():
    def my_metric(logits, batch):
        return logits

    with pytest.raises(MetricError, match="my_metric.*shape"):
        check_metric_output(torch.zeros(3, 2), 3, my_metric)
    with pytest.raises(MetricError, match="my_metric.*NaN"):
        check_metric_output(torch.tensor([0.0, float("nan"), 1.0]), 3, my_metric)
    with pytest.raises(MetricError, match="my_metric.*float"):
        check_metric_output(1.0, 3, my_metric)
    assert check_metric_output(torch.ones(3), 3, my_metric).dtype == torch.float64
