"""Multi-token phrases scored teacher-forced, against a hand computation one prompt at a time."""

import pytest
import torch
from chatkit import chat_batch, unit

from revlens.causal import clamp
from revlens.errors import MetricError
from revlens.metrics import phrase_logodds, phrase_logprob, phrase_rate
from revlens.metrics.continuation import score_phrases

POS, NEG = ["w40 w41 w42", "w43"], ["w50 w51"]


def _hand(lm, batch, phrase_ids):
    """log p(phrase | prompt) for each prompt alone: sum of log-softmax at the predicting positions."""
    out = torch.empty(len(batch), len(phrase_ids), dtype=torch.float64)
    for i in range(len(batch)):
        prompt = batch.tokens[i, : int(batch.last_index[i]) + 1].tolist()
        for j, ph in enumerate(phrase_ids):
            with torch.no_grad():
                lp = torch.log_softmax(lm.bridge(torch.tensor([prompt + ph])).double(), -1)[0]
            out[i, j] = sum(lp[len(prompt) - 1 + t, tok] for t, tok in enumerate(ph))
    return out


def test_phrase_scores_equal_the_hand_computation(chat_lm):
    tok = chat_lm.tokenizer
    batch = chat_batch(chat_lm)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in POS + NEG]
    hand = _hand(chat_lm, batch, ids)
    got = score_phrases(
        chat_lm, batch, ids, max_rows=5
    )  # chunks of rows: one prompt x 3 phrases each
    assert torch.allclose(got, hand, atol=1e-4)
    m = phrase_logodds(POS, NEG).bind(tok)
    expect = torch.logsumexp(hand[:, :2], -1) - hand[:, 2]
    assert torch.allclose(m.score(chat_lm, batch), expect, atol=1e-4)
    assert torch.allclose(
        phrase_logprob(POS).bind(tok).score(chat_lm, batch),
        torch.logsumexp(hand[:, :2], -1),
        atol=1e-4,
    )
    assert (
        phrase_rate(POS, NEG).bind(tok).score(chat_lm, batch).tolist()
        == (expect > 0).double().tolist()
    )


def test_interventions_act_at_the_phrase_positions(llama_lm):
    batch = chat_batch(llama_lm)
    ids = [llama_lm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in POS]
    v, mu = unit(llama_lm.d_model, 3), torch.zeros(llama_lm.d_model)
    with clamp(llama_lm, v, [1], mu[None]):
        got = score_phrases(llama_lm, batch, ids)
        hand = _hand(llama_lm, batch, ids)  # the clamp is on for the reference forwards too
    assert torch.allclose(got, hand, atol=1e-4)
    assert not torch.allclose(got, score_phrases(llama_lm, batch, ids), atol=1e-3)


def test_bad_phrases(llama_lm):
    with pytest.raises(MetricError, match="non-empty list"):
        phrase_logprob([])
    with pytest.raises(MetricError, match="does not know"):
        phrase_logprob(["definitely-unknown-word"]).bind(llama_lm.tokenizer)
