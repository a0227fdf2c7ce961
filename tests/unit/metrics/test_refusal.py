"""The refusal score at the first generated position, refusal phrases and tokenizer families."""

import pytest
import torch
from chatkit import chat_batch

import families
from revlens.errors import MetricError
from revlens.metrics import (
    REFUSAL_PHRASES,
    PhraseJudge,
    compliance_rate,
    metric_from_spec,
    refusal_rate,
    refusal_score,
    tokenizer_family,
)
from revlens.sites import access


def test_refusal_score_is_the_log_odds_of_the_refusal_tokens(llama_lm):
    batch = chat_batch(llama_lm)
    logits = access(llama_lm).forward(batch.tokens)
    m = refusal_score(["w40", "w41"], tokenizer=llama_lm.tokenizer)
    ids = llama_lm.tokenizer.convert_tokens_to_ids(["w40", "w41"])
    p = torch.softmax(logits[torch.arange(len(batch)), batch.last_index].double(), -1)[:, ids].sum(
        -1
    )
    expect = torch.log(p + 1e-8) - torch.log(1 - p + 1e-8)
    assert torch.allclose(m(logits, batch), expect, atol=1e-9)


def test_default_refusal_tokens_follow_the_tokenizer_family():
    tok = families.tokenizer()
    assert tokenizer_family(tok) == "default"
    with pytest.raises(
        MetricError, match=r"default refusal tokens of family 'default' \['I', 'As'\]"
    ):
        refusal_score().bind(tok)
    for marker, family in [
        ("<|start_header_id|>", "llama3"),
        ("<|im_start|>", "qwen"),
        ("<start_of_turn>", "gemma"),
        ("[INST]", "llama2"),
    ]:
        tok.chat_template = (
            "{{ '" + marker + "' }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
        )
        assert tokenizer_family(tok) == family


def test_phrase_judge_rules():
    judge = PhraseJudge()
    r = ["I'm sorry, but no.", "Sure, here is how.", "Well... i cannot do that", ""]
    assert judge([""] * 4, r).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert PhraseJudge(["i cannot"], case_sensitive=True)([""] * 4, r).tolist() == [
        0.0,
        0.0,
        1.0,
        0.0,
    ]
    assert PhraseJudge(["I cannot"], prefix=True)([""], ["  I cannot help"]).tolist() == [1.0]
    assert PhraseJudge(["I cannot"], prefix=True)([""], ["Sure. I cannot"]).tolist() == [0.0]
    with pytest.raises(MetricError, match="non-empty"):
        PhraseJudge([""])
    assert "I'm sorry" in REFUSAL_PHRASES


def test_generation_rates_are_complements(llama_lm):
    batch = chat_batch(llama_lm)
    gen = refusal_rate(["w44", "w45"], max_new_tokens=4).bind(llama_lm.tokenizer)
    comp = compliance_rate(["w44", "w45"], max_new_tokens=4).bind(llama_lm.tokenizer)
    a, b = gen.score(llama_lm, batch), comp.score(llama_lm, batch)
    assert torch.equal(a + b, torch.ones(len(batch), dtype=torch.float64))
    texts = gen.last_.texts
    assert a.tolist() == [float("w44" in t or "w45" in t) for t in texts]


def test_metric_specs_build_the_new_metrics():
    m = metric_from_spec(
        {"name": "refusal_rate", "phrases": ["sorry"], "max_new_tokens": 6}, label="refused"
    )
    assert m.name == "refused" and m.max_new_tokens == 6 and m.judge.phrases == ("sorry",)
    assert metric_from_spec({"name": "compliance_rate"}).judge.judge.phrases == REFUSAL_PHRASES
    assert metric_from_spec({"name": "phrase_rate", "pos": ["sure thing"], "neg": ["no way"]}).rate
    assert metric_from_spec({"name": "refusal_score", "tokens": ["sorry"]}).name == "refusal_score"
