"""The ProCon-style projection penalty (``"procon"``, arXiv 2509.06795 in spirit): its gradient equals
the hand-written ``strength · Σ_l Σ_x (r_l·h_l(θ,x) − r_l·h_l(aligned,x))²`` on a tiny GPT-2; in the
HF Trainer with PEFT LoRA it keeps the per-prompt projections nearer their aligned values than the
undefended run; bad inputs."""

import copy
import warnings

import pytest
import torch
from transformers import Trainer
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)
from unit.defenses.kit import Seqs, args

import tiny
from revlens.block import METHODS, ReversionBlocker, add_to_trainer
from revlens.defenses import ProConPenalty
from revlens.errors import ConfigError
from revlens.sites import access

TOK = tiny.tiny_tokenizer()


def procon(**kw) -> ProConPenalty:
    return ReversionBlocker(
        tinyrev.direction(),
        tinyrev.probes(),
        tinyrev.pair()[1],
        tokenizer=TOK,
        method="procon",
        probe_batch_size=None,
        **kw,
    )


def projections(model) -> torch.Tensor:
    """``r_l·h_l(x)`` per prompt and blocked layer ``[prompt, layer]``, read by hand."""
    r = tinyrev.direction()  # (cached; the first call trains a pilot: never under no_grad)
    enc = tinyrev.probes().tokenize(TOK)
    acc = access(model)
    hs = acc.read(enc.tokens, enc.weights, acc.sites(list(r.layers)), stop=False)
    return torch.stack([h @ r.vectors[i].to(h.dtype) for i, h in enumerate(hs)], dim=1)


def test_gradient_equals_the_hand_written_penalty():
    aligned = tinyrev.pair()[1]
    model = tiny.perturbed(aligned, 0.02, 9)
    tinyrev.no_dropout(model)
    strength = 0.7
    p = procon(strength=strength).prepare(model)
    assert type(p) is ProConPenalty and p.per_prompt
    for q in model.parameters():
        q.grad = None
    p.before_step()
    got = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    with torch.no_grad():
        ref = projections(aligned)
    model.zero_grad()
    with torch.enable_grad():
        pen = strength * ((projections(model) - ref) ** 2).sum()
        pen.backward()
    assert float(pen.detach()) > 0
    for n, q in model.named_parameters():
        if q.grad is not None and float(q.grad.abs().max()) > 0:
            torch.testing.assert_close(got[n], q.grad, rtol=2e-3, atol=1e-6)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(
            model,
            LoraConfig(
                r=4,
                lora_alpha=8,
                target_modules=["c_attn", "c_fc"],
                fan_in_fan_out=True,
                lora_dropout=0.0,
            ),
        )


def test_lora_in_the_trainer_holds_the_projections(tmp_path):
    tinyrev.direction()
    aligned = tinyrev.pair()[1]
    with torch.no_grad():
        ref = projections(aligned)
    moved = {}
    for strength in (0.0, 1.0):
        model = _lora(copy.deepcopy(aligned).train())
        trainer = Trainer(model=model, args=args(tmp_path, steps=6, lr=0.05), train_dataset=Seqs())
        p = procon(strength=strength, params="*lora_*")
        add_to_trainer(trainer, p)
        trainer.train()
        with torch.no_grad():
            moved[strength] = float(((projections(trainer.model.eval()) - ref) ** 2).sum())
        if strength > 0:
            assert all(
                "revlens/block_s_layer1" in r for r in trainer.state.log_history if "loss" in r
            )
    assert moved[0.0] > 0 and moved[1.0] < 0.5 * moved[0.0], moved


def test_registered_and_bad_inputs():
    assert "procon" in METHODS
    with pytest.raises(ConfigError, match="per_prompt"):
        procon(per_prompt=False)
    with pytest.raises(ConfigError, match="constraint"):
        procon(constraint="one_sided")
    with pytest.raises(ConfigError, match="strength"):
        procon(strength=-1.0)
