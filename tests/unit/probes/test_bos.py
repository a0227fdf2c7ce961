"""A conversation rendered to a string by the chat template and given as a *text* probe gets no
second BOS (issue 32; TransformerLens #1418): a text that already starts with the tokenizer's BOS
token is tokenized as it is, so its ids equal ``apply_chat_template(tokenize=True)`` — on the tiny
Llama, GPT-2 and Gemma-2 families, with a tokenizer that adds a BOS (Llama / Gemma style) and one
that adds none (GPT-2 style)."""

import pytest
import torch
from tokenizers import processors

import families
from revlens import Probes
from revlens.model import LensModel

CONV = [{"role": "user", "content": "w10 w11 w12"}]


def _tokenizer(adds_bos: bool):
    tok = families.tokenizer()
    if adds_bos:  # what Llama's and Gemma's own tokenizers do: "<bos> $A"
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", families.BOS)]
        )
    return tok


@pytest.mark.parametrize("adds_bos", [True, False], ids=["adds-bos", "no-bos"])
def test_rendered_chat_as_text_has_the_templates_ids(adds_bos):
    tok = _tokenizer(adds_bos)
    rendered = tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    template_ids = list(
        tok.apply_chat_template(CONV, tokenize=True, add_generation_prompt=True)["input_ids"]
    )
    assert (
        rendered.startswith("<bos>")
        and template_ids[0] == families.BOS
        and template_ids[1] != families.BOS
    )
    naive = tok(rendered)[
        "input_ids"
    ]  # what a text probe got before: a second BOS where the tokenizer adds one
    assert (naive[:2] == [families.BOS, families.BOS]) == adds_bos
    got = Probes([rendered]).tokenize(tok)
    assert got.tokens[0, : got.lengths[0]].tolist() == template_ids
    chat = Probes.from_chat([CONV]).tokenize(tok)
    assert chat.tokens[0, : chat.lengths[0]].tolist() == template_ids
    # a plain text still gets the tokenizer's own special tokens
    plain = Probes(["w10 w11"]).tokenize(tok)
    assert plain.tokens[0, : plain.lengths[0]].tolist() == ([families.BOS] if adds_bos else []) + [
        tok.convert_tokens_to_ids("w10"),
        tok.convert_tokens_to_ids("w11"),
    ]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_a_rendered_chat_text_probe_runs_the_same_forward_as_the_chat_probe(family, tmp_path):
    model, _ = families.build(family, 0)
    tok = _tokenizer(adds_bos=True)
    lm = LensModel.boot(families.save(model, tok, tmp_path / family))
    assert lm.tokenizer("w10")["input_ids"] == [
        families.BOS,
        tok.convert_tokens_to_ids("w10"),
    ]  # adds a BOS
    rendered = tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    as_text = Probes([rendered]).tokenize(lm.tokenizer)
    as_chat = Probes.from_chat([CONV]).tokenize(lm.tokenizer)
    assert torch.equal(as_text.tokens, as_chat.tokens)
    with torch.no_grad():
        a, b = lm.bridge(as_text.tokens), lm.bridge(as_chat.tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
