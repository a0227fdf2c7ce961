"""Lisa (arXiv 2405.18641): the Bi-State Optimization written out by hand on a tiny GPT-2 (user steps
with the proximal pull toward the last alignment state, alignment steps toward the last user state);
LoRA through the Hugging Face Trainer; bad inputs refused before training."""

import json

import pytest
import torch
from transformers import Trainer
from unit.defenses.kit import TOKENS, Seqs, aligned_model, args, lora_model

import tiny
from revlens.block import add_to_trainer, method_names
from revlens.defenses import Lisa, LisaConfig
from revlens.errors import ConfigError, DatasetError, NotFittedError

PAIR = ("w1 w2", "w3 w4")
# the tiny tokenizer adds no special token: prompt [w1 w2], answer [w3 w4] + <eos>
ALIGN_IDS = torch.tensor([[3, 4, 5, 6, 1]])
ALIGN_LABELS = torch.tensor([[-100, -100, 5, 6, 1]])


def _user_loss(model):
    return model(TOKENS, labels=TOKENS).loss


def _align_loss(model):
    logits = model(ALIGN_IDS).logits
    return torch.nn.functional.cross_entropy(logits[0, :-1], ALIGN_LABELS[0, 1:], ignore_index=-100)


def _grads(model, loss_fn):
    params = list(model.parameters())
    return torch.autograd.grad(loss_fn(model), params)


def _sgd(model, loss_fn, lr, rho, anchor):
    grads = _grads(model, loss_fn)
    with torch.no_grad():
        for p, g, a in zip(model.parameters(), grads, anchor, strict=True):
            p.sub_(lr * (g + rho * (p - a)))


def _snap(model):
    return [p.detach().clone() for p in model.parameters()]


def test_bi_state_steps_equal_the_hand_computation(pair):
    rho, lr_u, lr_a = 0.7, 0.05, 0.03
    model = aligned_model(pair)
    hand = aligned_model(pair)
    model.eval()  # no dropout: the two computations see the same function
    hand.eval()
    opt = torch.optim.SGD(model.parameters(), lr=lr_u)
    lisa = Lisa(
        tiny.tiny_tokenizer(),
        alignment=[PAIR],
        rho=rho,
        align_steps=2,
        user_steps=2,
        align_lr=lr_a,
        align_optimizer="sgd",
        batch_size=1,
    )
    with lisa.attached(model, opt):
        for _ in range(3):
            opt.zero_grad()
            _user_loss(model).backward()
            opt.step()
    # by hand: w̄_a = w0; two user steps; two alignment steps pulled to w̄_u = w2; w̄_a = w4; one user step
    w0 = _snap(hand)
    _sgd(hand, _user_loss, lr_u, rho, w0)
    _sgd(hand, _user_loss, lr_u, rho, w0)
    w2 = _snap(hand)
    _sgd(hand, _align_loss, lr_a, rho, w2)
    _sgd(hand, _align_loss, lr_a, rho, w2)
    w4 = _snap(hand)
    _sgd(hand, _user_loss, lr_u, rho, w4)
    for p, q in zip(model.parameters(), hand.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    prox = [r.value for r in lisa.records_ if r.quantity == "proximal"]
    assert (
        len(prox) == 3
        and prox[0] == 0.0
        and prox[1] > 0
        and prox[2] == pytest.approx(0.0, abs=1e-12)
    )
    assert [r.value for r in lisa.records_ if r.quantity == "align_steps"] == [2.0]
    # the proximal term mattered: without it the result differs
    free = aligned_model(pair)
    z = _snap(free)
    for _ in range(2):
        _sgd(free, _user_loss, lr_u, 0.0, z)
    assert any(not torch.allclose(p, q) for p, q in zip(free.parameters(), w2, strict=True))


def test_lora_through_the_hf_trainer_runs_alignment_states(pair, tmp_path):
    tok = tiny.tiny_tokenizer()
    free = Trainer(
        model=lora_model(pair, init=True),
        args=args(tmp_path, steps=6, lr=0.05),
        train_dataset=Seqs(),
    )
    free.train()
    lisa = Lisa(
        tok,
        alignment=[PAIR, ("w5", "w6 w7")],
        rho=1.0,
        align_steps=3,
        user_steps=2,
        align_lr=0.05,
        align_optimizer="sgd",
        batch_size=2,
    )
    trainer = Trainer(
        model=lora_model(pair, init=True),
        args=args(tmp_path, steps=6, lr=0.05),
        train_dataset=Seqs(),
    )
    add_to_trainer(trainer, lisa)
    trainer.train()
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 6 and all("revlens/lisa_proximal" in r for r in logged)
    assert [r.value for r in lisa.records_ if r.quantity == "align_steps"] == [3.0, 6.0, 9.0]
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert lisa.params_ and all(id(p) in trainable for p in lisa.params_)  # only the adapters
    with torch.no_grad():
        assert float(_align_loss(trainer.model)) < float(_align_loss(free.model))
    assert "lisa" in method_names()


def test_full_fine_tuning_in_a_plain_loop_with_adamw(pair):
    model = aligned_model(pair)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lisa = Lisa(tiny.tiny_tokenizer(), alignment=[PAIR], align_steps=1, user_steps=1)
    with lisa.attached(model, opt):
        for _ in range(2):
            opt.zero_grad()
            _user_loss(model).backward()
            opt.step()
    assert lisa.align_done_ == 2 and not lisa.is_attached
    assert all(
        p.grad is None for p in lisa.params_
    )  # the alignment state leaves no gradient behind
    with torch.no_grad():
        assert float(_align_loss(model)) < float(_align_loss(aligned_model(pair)))


def test_bad_inputs_are_refused_before_training(pair, tmp_path):
    tok = tiny.tiny_tokenizer()
    with pytest.raises(ConfigError, match="alignment: required"):
        Lisa(tok)
    with pytest.raises(DatasetError, match="is not a file"):
        Lisa(tok, alignment=str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "w1", "answer": ""}) + "\n")
    with pytest.raises(DatasetError, match="bad.jsonl:1"):
        Lisa(tok, alignment=bad)
    with pytest.raises(DatasetError, match="no \\(prompt, answer\\) pair"):
        Lisa(tok, alignment=[])
    with pytest.raises(ConfigError, match="rho must be >= 0"):
        Lisa(tok, alignment=[PAIR], rho=-1.0)
    with pytest.raises(ConfigError, match="align_optimizer"):
        Lisa(tok, alignment=[PAIR], align_optimizer="lion")
    with pytest.raises(ConfigError, match="tokenizer"):
        Lisa(None, alignment=[PAIR])
    with pytest.raises(ConfigError, match="unknown setting"):
        Lisa(tok, alignment=[PAIR], lam=1.0)
    with pytest.raises(NotFittedError):
        Lisa(tok, alignment=[PAIR]).before_step()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "w1 w2", "answer": "w3"}) + "\n\n")
    assert LisaConfig(alignment=good).alignment == [("w1 w2", "w3")]
