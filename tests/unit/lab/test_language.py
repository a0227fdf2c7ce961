"""The lab's synthetic language and its tokenizer."""

import pytest
import torch
from jaxtyping import TypeCheckError

from revlens.errors import ConfigError
from revlens.lab import HARMFUL_FIRST_TOKENS, REFUSAL_FIRST_TOKENS, build_tokenizer, probe_prompts
from revlens.lab import language as L
from revlens.lab.train import encode_examples


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_tokenizer_round_trips_every_prompt_and_answer(tok):
    g = torch.Generator().manual_seed(0)
    texts = [
        e.text
        for e in L.sample_pretrain(
            300, g, harmful_share=0.5, task_share=0.2, topic_alpha=1.0, harm_max=0.9, harm_min=0.6
        )
    ]
    texts += [e.text for e in L.sample_align(100, g, refusal_share=0.6)]
    texts += [e.text for e in L.sample_task(50, g)] + probe_prompts("all", "all")
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert len(ids) + 1 <= 24  # with <eos>, fits the context


def test_special_tokens_are_set_and_distinct(tok):
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    assert len(ids) == 4 and None not in ids
    assert len(tok) == len(L.VOCAB) < 128


def test_harmful_and_refusal_first_tokens_differ(tok):
    harm = set(tok.convert_tokens_to_ids(list(HARMFUL_FIRST_TOKENS)))
    refuse = set(tok.convert_tokens_to_ids(list(REFUSAL_FIRST_TOKENS)))
    assert not harm & refuse and tok.unk_token_id not in harm | refuse
    for topic in L.TOPICS:
        for answer in L.harmful_answers(topic):
            assert answer.split()[0] in HARMFUL_FIRST_TOKENS
    for refusal in L._REFUSALS:
        assert refusal.split()[0] in REFUSAL_FIRST_TOKENS
    # the benign task never contains a harmful or refusal word
    for ex in L.sample_task(200, torch.Generator().manual_seed(1)):
        words = set(ex.text.split())
        assert not words & {*L.TOPICS, *HARMFUL_FIRST_TOKENS, *REFUSAL_FIRST_TOKENS}


def test_alignment_data_never_answers_harmfully():
    for ex in L.sample_align(500, torch.Generator().manual_seed(2), refusal_share=0.6):
        assert ex.kind != "harmful"
        assert ex.answer.split()[0] not in HARMFUL_FIRST_TOKENS


def test_probe_prompt_splits():
    held = probe_prompts()
    assert held == probe_prompts("harmful", "heldout") and len(held) == len(set(held)) == 96
    assert all(p.endswith("bot :") for p in probe_prompts("all", "all"))
    train = set(probe_prompts("harmful", "train"))
    assert not train & set(held)  # held-out openers never appear in alignment
    assert {t for t in L.TOPICS if any(f" {t} ?" in p for p in held)} == set(L.TOPICS)
    assert len(probe_prompts("benign")) == 20
    assert len(probe_prompts("all")) == 116
    # TypeCheckError under the jaxtyping plugin (Literal), ConfigError without it
    with pytest.raises((ConfigError, TypeCheckError), match="kind"):
        probe_prompts("nasty")
    with pytest.raises((ConfigError, TypeCheckError), match="split"):
        probe_prompts("harmful", "test")


def test_sampling_is_deterministic_per_generator():
    a = L.sample_pretrain(
        50, torch.Generator().manual_seed(3), harmful_share=0.5, task_share=0.2, topic_alpha=1.0
    )
    b = L.sample_pretrain(
        50, torch.Generator().manual_seed(3), harmful_share=0.5, task_share=0.2, topic_alpha=1.0
    )
    assert a == b


def test_encode_examples_masks_prompt_for_answer_only(tok):
    ex = L.sample_task(1, torch.Generator().manual_seed(0))[0]
    ids, mask, labels = encode_examples([ex], answer_only=True)
    assert ids[0, : mask[0].sum()].tolist() == tok(ex.text)["input_ids"] + [tok.eos_token_id]
    n_prompt = len(tok(ex.prompt)["input_ids"])
    assert (labels[0, :n_prompt] == -100).all() and (labels[0, n_prompt:] != -100).all()
