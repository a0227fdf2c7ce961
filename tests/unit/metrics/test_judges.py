"""Judge adapters on tiny random judge models built here (never downloaded)."""

import pytest
import torch
import transformers as tf
from chatkit import chat_batch

import families
from revlens.errors import MetricError
from revlens.metrics import CausalLMJudge, ClassifierJudge, greedy_generate, judge_metric

PROMPTS = ["w10 w11", "w12", "w13 w14 w15"]
RESPONSES = ["w20 w21 w22", "w23", "w24 w25"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    tok = families.tokenizer()
    cfg = tf.GPT2Config(
        vocab_size=len(families.VOCAB),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=64,
        pad_token_id=0,
        num_labels=2,
        id2label={0: "safe", 1: "unsafe"},
        label2id={"safe": 0, "unsafe": 1},
    )
    torch.manual_seed(0)
    model = tf.GPT2ForSequenceClassification(cfg).eval()
    path = tmp_path_factory.mktemp("judge") / "cls"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_classifier_judge_scores_the_positive_label(classifier_dir):
    judge = ClassifierJudge(
        classifier_dir, batch_size=2
    )  # a local path: model and tokenizer loaded from it
    assert judge.positive == 1
    scores = judge(PROMPTS, RESPONSES)
    model, tok = judge.model, judge.tokenizer
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):  # one pair at a time, no padding
        enc = tok(p, r, return_tensors="pt")
        with torch.no_grad():
            expect = torch.softmax(model(**enc).logits.double(), -1)[0, 1]
        assert float(scores[i]) == pytest.approx(float(expect), abs=1e-6)
    formatted = ClassifierJudge(model, tok, template="{response}", positive="safe")
    assert formatted.positive == 0 and formatted(PROMPTS, RESPONSES).shape == (3,)
    with pytest.raises(MetricError, match="not among the judge's labels"):
        ClassifierJudge(model, tok, positive="harmless")


def test_causal_lm_judge_reads_yes_against_no():
    model, tok = families.build("llama", 3)
    judge = CausalLMJudge(
        model, tok, template="w1 {prompt} w2 {response} w3", yes=("w60",), no=("w61", "w62")
    )
    scores = judge(PROMPTS, RESPONSES)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        ids = tok(f"w1 {p} w2 {r} w3", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            prob = torch.softmax(model(ids).logits[0, -1].double(), -1)
        yes, no = (
            prob[tok.convert_tokens_to_ids("w60")],
            prob[tok.convert_tokens_to_ids(["w61", "w62"])].sum(),
        )
        assert float(scores[i]) == pytest.approx(float(yes / (yes + no)), abs=1e-6)
    chat = CausalLMJudge(model, tok, yes=("w60",), no=("w61",))  # the judge's own chat template
    assert chat(PROMPTS, RESPONSES).shape == (3,)


def test_judge_metric_generates_then_judges(llama_lm, classifier_dir):
    judge = ClassifierJudge(classifier_dir)
    metric = judge_metric(judge, max_new_tokens=4).bind(llama_lm.tokenizer)
    batch = chat_batch(llama_lm)
    scores = metric.score(llama_lm, batch)
    responses = greedy_generate(llama_lm, batch, max_new_tokens=4).texts
    assert metric.last_.texts == responses
    assert torch.allclose(scores, judge(batch.texts, responses))
    assert bool(((scores >= 0) & (scores <= 1)).all())
