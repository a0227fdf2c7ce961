"""Chat probes: rendered with the template, tokenized once (no doubled BOS), post-instruction positions."""

import json

import pytest
import torch
from tokenizers import processors

import families
from revlens.errors import ProbeError, SiteError
from revlens.probes import Probes
from revlens.probes.chat import ChatTemplate, template_from_dir


@pytest.fixture()
def bos_tok():
    """The families' word-level tokenizer made Llama-like: encoding prepends <bos>."""
    tok = families.tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", families.BOS)]
    )
    assert tok("w10")["input_ids"] == [families.BOS, tok.convert_tokens_to_ids("w10")]
    return tok


def test_chat_probes_are_tokenized_once_as_the_template_does(bos_tok):
    msgs = [{"role": "user", "content": "w10 w11 w12"}]
    own = bos_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"]
    rendered = bos_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    # the trap of issues 18 / 32: a rendered string given as text no longer gets a second BOS
    assert bos_tok(rendered)["input_ids"][:2] == [
        families.BOS,
        families.BOS,
    ]  # what the tokenizer does
    assert Probes([rendered]).tokenize(bos_tok).tokens[0].tolist() == own
    tp = Probes.from_chat(["w10 w11 w12"]).tokenize(bos_tok)
    assert tp.tokens[0].tolist() == own
    assert own[0] == families.BOS and own[1] != families.BOS
    assert tp.texts == ["w10 w11 w12"] and tp.rendered == [rendered]
    assert tp.template["origin"] == "tokenizer" and len(tp.template["sha"]) == 16


def test_conversations_system_prompts_and_prefills(bos_tok):
    conv = [
        {"role": "user", "content": "w1"},
        {"role": "assistant", "content": "w2"},
        {"role": "user", "content": "w3 w4"},
    ]
    tp = Probes.from_chat([conv, "w5"], system="w9").tokenize(bos_tok)
    assert tp.texts == ["w3 w4", "w5"]
    own = bos_tok.apply_chat_template(
        [{"role": "system", "content": "w9"}, *conv], add_generation_prompt=True
    )["input_ids"]
    assert tp.tokens[0, : tp.lengths[0]].tolist() == own
    assert tp.rendered[1].startswith("<bos> system : w9 <eot> <bos> user : w5")
    prefill = Probes.from_chat(
        [[{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2 w3"}]]
    )
    assert (
        prefill.tokenize(bos_tok).rendered[0].endswith("assistant : w2 w3")
    )  # continued, no new header


def test_post_instruction_positions(bos_tok):
    tp = Probes.from_chat(["w10 w11 w12", "w20"], position=("post_instruction", None)).tokenize(
        bos_tok
    )
    assert tp.n_post.tolist() == [4, 4]  # "<eot> <bos> assistant :"
    assert list(tp.positions) == ["-4", "-3", "-2", "-1"] and tp.multi
    for j, w in enumerate(tp.positions.values()):
        picked = w.argmax(1)
        assert picked.tolist() == (tp.lengths - 4 + j).tolist() and bool((w.sum(1) == 1).all())
    assert torch.equal(tp.weights, tp.positions["-1"])
    assert tp.stacked().shape == (2, 4, int(tp.lengths.max()))
    two = Probes.from_chat(["w10"], position="post_instruction:2").tokenize(bos_tok)
    assert list(two.positions) == ["-2", "-1"]
    assert (
        two.view("-2").position == "post_instruction:2@-2"
        and two.view("-2").fingerprint() != two.fingerprint()
    )
    with pytest.raises(ProbeError, match="has only 4 post-instruction template token"):
        Probes.from_chat(["w10"], position=("post_instruction", 5)).tokenize(bos_tok)
    with pytest.raises(SiteError, match="needs chat probes"):
        Probes(["w10"], position=("post_instruction", 2))
    with pytest.raises(SiteError, match="unknown position rule"):
        Probes.from_chat(["w10"], position="post_instruction:x")


def test_jsonl_chat_lines(tmp_path, bos_tok):
    f = tmp_path / "chat.jsonl"
    lines = [
        {"prompt": "w10 w11", "label": "harmful"},
        {"messages": [{"role": "user", "content": "w12"}], "label": "harmless", "system": "w9"},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    p = Probes.from_jsonl(f, position="post_instruction")
    assert p.is_chat and p.labels == ["harmful", "harmless"] and p.prompts == ["w10 w11", "w12"]
    assert p.conversations[1][0] == {"role": "system", "content": "w9"}
    assert repr(p) == "Probes(2 chat prompts, position='post_instruction', 2 labels)"
    assert p.where("harmless").prompts == ["w12"] and p.subset([0]).labels == ["harmful"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"text": "w1"}) + "\n" + json.dumps({"prompt": "w2"}) + "\n")
    with pytest.raises(ProbeError, match="mixes plain 'text' lines with chat lines"):
        Probes.from_jsonl(mixed)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "robot", "content": "w1"}]}) + "\n")
    with pytest.raises(ProbeError, match="bad.jsonl:1: message 0 has role 'robot'"):
        Probes.from_jsonl(bad)
    with pytest.raises(ProbeError, match="no user turn"):
        Probes.from_chat([[{"role": "system", "content": "w1"}]])


def test_templates_resolve_from_text_files_dirs_and_tokenizers(tmp_path, bos_tok):
    other = (
        "{{ bos_token }}{% for m in messages %} user : {{ m['content'] }}{% endfor %} assistant :"
    )
    tp = Probes.from_chat(["w10"], template=other).tokenize(bos_tok)
    assert tp.rendered == ["<bos> user : w10 assistant :"] and tp.n_post.tolist() == [2]
    bos_tok.save_pretrained(tmp_path / "tok")
    found = template_from_dir(tmp_path / "tok")
    assert found == ChatTemplate(families.CHAT_TEMPLATE) and found.name == "tok/chat_template.jinja"
    assert ChatTemplate.resolve(tmp_path / "tok").sha == ChatTemplate.resolve(bos_tok).sha
    assert Probes.from_chat(["w1"]).with_template(other).template.text == other
    bare = families.tokenizer()
    bare.chat_template = None
    with pytest.raises(ProbeError, match="this tokenizer has none"):
        Probes.from_chat(["w10"]).tokenize(bare)
    with pytest.raises(ProbeError, match="failed"):
        Probes.from_chat(["w10"], template="{{ raise_exception('no system turn here') }}").tokenize(
            bos_tok
        )
