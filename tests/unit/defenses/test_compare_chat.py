"""compare_defenses on a tiny chat model (tests/families.py's template ``<bos> user : ... <eot> <bos>
assistant :``): plain-string prompts reach every measure rendered through the template (harm, the
refusal direction at the last post-instruction token, the safety-layer locator, the fine-tuning pairs),
``chat=False`` keeps raw text, ``chat=True`` without a template is refused; an aligned checkpoint given
as a PEFT adapter is merged once into a content-keyed cache."""

import os

import pytest
import torch

import families
from revlens.defenses import EvalSets, FinetuneRecipe, compare_defenses
from revlens.defenses.data import encode_pairs
from revlens.errors import ConfigError
from revlens.history import History
from revlens.probes import Probes

W = [f"w{i}" for i in range(40)]
DATA = [(f"{W[i]} {W[i + 1]}", f"{W[i + 2]}") for i in range(20)]
HARMFUL = [f"{W[i]} {W[i + 3]} {W[i + 7]}" for i in range(6)]
HARMLESS = [f"{W[i + 2]} {W[i + 1]}" for i in range(6)]
PROBES = [f"{W[i + 5]} {W[i]} {W[i + 9]}" for i in range(8)]


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("chatpair")
    base, tok = families.build("llama", 0)
    aligned = families.perturbed(base, 0.05, 1)
    torch.manual_seed(3)
    lora = get_peft_model(
        families.build("llama", 0)[0],
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    (root / "adapter").mkdir()
    lora.save_pretrained(root / "adapter")
    return {
        "base": families.save(base, tok, root / "base"),
        "aligned": families.save(aligned, tok, root / "aligned"),
        "adapter": root / "adapter",
        "tok": tok,
    }


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


class Spy:
    """A harm metric (log-odds of w5 over w0 at the last position) that records the prompt tokens it sees."""

    def __init__(self):
        self.rows = []

    def __call__(self, logits, batch):
        for i, last in enumerate(batch.last_index.tolist()):
            self.rows.append(batch.tokens[i, : last + 1].tolist())
        lp = torch.log_softmax(
            logits[torch.arange(len(batch.last_index)), batch.last_index].float(), -1
        )
        return lp[:, 5] - lp[:, 0]


def _run(chat_pair, monkeypatch, chat=None, history=None):
    import revlens.defenses as d
    import revlens.defenses.data as data
    import revlens.directions as dirs

    seen = {"task_chat": []}
    real_encode = data.encode_pairs

    def encode(tok, pairs, **kw):
        if [tuple(p) for p in pairs] == DATA[:4]:
            seen["task_chat"].append(kw.get("chat", False))
        return real_encode(tok, pairs, **kw)

    monkeypatch.setattr(data, "encode_pairs", encode)
    real_refusal, real_locate = dirs.refusal_directions, d.locate_safety_layers

    def refusal(model, probes, **kw):
        seen["refusal"] = (probes.is_chat, kw["position"])
        return real_refusal(model, probes, **kw)

    def locate(model, tok, normal, malicious, **kw):
        seen["locator"] = list(normal) + list(malicious)
        return real_locate(model, tok, normal, malicious, **kw)

    monkeypatch.setattr(dirs, "refusal_directions", refusal)
    monkeypatch.setattr(d, "locate_safety_layers", locate)
    spy = Spy()
    sets = EvalSets(
        harmful=HARMFUL, harmless=HARMLESS, probes=PROBES, task=DATA[:4], harm=spy, chat=chat
    )
    hist = history or {"base": str(chat_pair["base"]), "aligned": str(chat_pair["aligned"])}
    recipe = FinetuneRecipe(
        data=DATA, steps=1, batch_size=4, lr=0.05, optimizer="sgd", chat=True, max_length=32
    )
    cmp = compare_defenses(
        hist,
        recipe,
        sets,
        defenses=("update",),
        seeds=(0,),
        skip_controls=True,
        trajectory_points=0,
        progress=False,
    )
    return cmp, spy, seen


def test_plain_strings_reach_every_measure_through_the_chat_template(chat_pair, monkeypatch):
    tok = chat_pair["tok"]
    cmp, spy, seen = _run(chat_pair, monkeypatch)
    head, tail = _ids(tok, "<bos> user :"), _ids(tok, "<eot> <bos> assistant :")
    harmful_rows = spy.rows[: len(HARMFUL)]
    assert len(harmful_rows) == len(HARMFUL)
    for row, text in zip(harmful_rows, HARMFUL, strict=True):
        assert (
            row == head + _ids(tok, text) + tail
        )  # the template's markers around the user's words
    assert seen["refusal"] == (True, ("post_instruction", 1))
    assert seen["task_chat"] and all(seen["task_chat"])  # the task loss reads chat-rendered pairs
    assert all(
        t.startswith("<bos> user :") and t.rstrip().endswith("<bos> assistant :")
        for t in seen["locator"]
    )
    assert cmp.meta["harm_metric"] == "EvalSets.harm" and len(cmp.table) == 2


def test_chat_false_keeps_the_raw_text(chat_pair, monkeypatch):
    tok = chat_pair["tok"]
    _, spy, seen = _run(chat_pair, monkeypatch, chat=False)
    assert spy.rows[: len(HARMFUL)] == [_ids(tok, t) for t in HARMFUL]
    assert seen["refusal"] == (False, "last") and seen["locator"][: len(HARMLESS)] == HARMLESS
    assert seen["task_chat"] and not any(seen["task_chat"])


def test_fine_tuning_pairs_are_rendered_like_the_probes(chat_pair):
    tok = chat_pair["tok"]
    ids, mask, labels = encode_pairs(tok, [("w1 w2", "w3 w4")], chat=True)
    assert mask.all()
    prompt = Probes.from_chat(["w1 w2"]).tokenize(tok).tokens[0].tolist()
    prompt = prompt[: len(_ids(tok, "<bos> user : w1 w2 <eot> <bos> assistant :"))]
    n = len(prompt)
    assert ids[0, :n].tolist() == prompt
    assert ids[0, n:].tolist() == [*_ids(tok, "w3 w4"), tok.eos_token_id]
    assert (labels[0, :n] == -100).all() and labels[0, n:].tolist() == ids[0, n:].tolist()


def test_chat_true_without_a_template_is_refused_before_training(pair, monkeypatch):
    import revlens.defenses.recipe as recipe_mod

    monkeypatch.setattr(recipe_mod.FinetuneRecipe, "train", lambda *a, **k: pytest.fail("trained"))
    sets = EvalSets(
        harmful=["w1 w2"], harmless=["w3 w4", "w5"], probes=["w6 w7"], harm="greedy_rate", chat=True
    )
    with pytest.raises(ConfigError, match="no chat template"):
        compare_defenses(
            {"base": str(pair["base"]), "aligned": str(pair["aligned"])},
            FinetuneRecipe(data=[("w1", "w2")], steps=1),
            sets,
            defenses=("update",),
            progress=False,
        )
    with pytest.raises(ConfigError, match="EvalSets.chat"):
        EvalSets(harmful=["w1"], harmless=["w2"], probes=["w3"], chat="yes")


def test_an_adapter_aligned_is_merged_once_into_a_content_keyed_cache(
    chat_pair, monkeypatch, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("REVLENS_CACHE_DIR", str(tmp_path / "cache"))
    hist = History.from_dirs(base=chat_pair["base"], aligned=chat_pair["adapter"])
    assert hist.aligned.kind == "adapter"
    cmp, _, _ = _run(chat_pair, monkeypatch, history=hist)
    merged = list((tmp_path / "cache" / "merged").iterdir())
    assert len(merged) == 1 and (merged[0] / "config.json").is_file()
    got = AutoModelForCausalLM.from_pretrained(str(merged[0])).state_dict()
    want = (
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(chat_pair["base"])), str(chat_pair["adapter"])
        )
        .merge_and_unload()
        .state_dict()
    )
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(
        got["model.layers.0.self_attn.q_proj.weight"],
        AutoModelForCausalLM.from_pretrained(str(chat_pair["base"])).state_dict()[
            "model.layers.0.self_attn.q_proj.weight"
        ],
    )
    stamp = os.stat(merged[0] / "config.json").st_mtime_ns
    again, _, _ = _run(
        chat_pair,
        monkeypatch,
        history=History.from_dirs(base=chat_pair["base"], aligned=chat_pair["adapter"]),
    )
    assert os.stat(merged[0] / "config.json").st_mtime_ns == stamp  # reused, not rewritten
    assert again.table["harm_score"].tolist() == cmp.table["harm_score"].tolist()
