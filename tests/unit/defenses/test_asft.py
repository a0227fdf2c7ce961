"""AsFT (arXiv 2506.08473): the regulariser ``λ Σ ‖(I − C)ΔW‖²_F`` and its gradient against a hand
computation on a real PEFT LoRA model; through the Hugging Face Trainer (it shrinks the update's
part off the alignment direction compared with the same run undefended); full fine-tuning in a
plain loop; bad inputs."""

import pytest
import torch
from transformers import Trainer
from unit.defenses.kit import (
    LORA_NAMES,
    Seqs,
    aligned_model,
    args,
    lora_layer,
    lora_model,
    train_plain,
    v_of,
)

from revlens.block import add_to_trainer, method_names
from revlens.defenses import AsFT
from revlens.errors import CheckpointError, ConfigError

SCALE = 8 / 4


def _c(pair, name):
    v = v_of(pair, name)
    return v @ v.T / torch.linalg.norm(v)


def test_penalty_and_its_gradient_equal_the_hand_computation(pair):
    model = lora_model(pair)  # B ≠ 0: ΔW ≠ 0 from the start
    lam = 0.3
    asft = AsFT(pair["base"], pair["aligned"], lam=lam).prepare(model)
    for p in model.parameters():
        p.grad = None
    asft.before_step()
    total = 0.0
    for n in LORA_NAMES:
        layer = lora_layer(model, n)
        b, a = (
            layer.lora_B["default"].weight.detach().double(),
            layer.lora_A["default"].weight.detach().double(),
        )
        m = torch.eye(b.shape[0], dtype=torch.float64) - _c(pair, n)  # I − C
        r = m @ (SCALE * b @ a)
        total += float((r**2).sum())
        # d/dB λ‖M s B A‖² = 2λ s Mᵀ(M s B A) Aᵀ ;  d/dA = 2λ s Bᵀ Mᵀ (M s B A)
        torch.testing.assert_close(
            layer.lora_B["default"].weight.grad.double(),
            2 * lam * SCALE * m.T @ r @ a.T,
            rtol=1e-4,
            atol=1e-7,
        )
        torch.testing.assert_close(
            layer.lora_A["default"].weight.grad.double(),
            2 * lam * SCALE * b.T @ m.T @ r,
            rtol=1e-4,
            atol=1e-7,
        )
    assert asft.records_[-1].quantity == "penalty"
    assert asft.records_[-1].value == pytest.approx(lam * total, rel=1e-5)


def _off_part(pair, model):
    out = 0.0
    for n in LORA_NAMES:
        layer = lora_layer(model, n)
        dw = (
            SCALE
            * layer.lora_B["default"].weight.detach().double()
            @ layer.lora_A["default"].weight.detach().double()
        )
        out += float(((dw - _c(pair, n) @ dw) ** 2).sum())
    return out


def test_lora_through_the_hf_trainer_shrinks_the_off_alignment_part(pair, tmp_path):
    free = Trainer(
        model=lora_model(pair, init=True),
        args=args(tmp_path, steps=6, lr=0.05),
        train_dataset=Seqs(),
    )
    free.train()
    asft = AsFT(pair["base"], pair["aligned"], lam=2.0)
    trainer = Trainer(
        model=lora_model(pair, init=True),
        args=args(tmp_path, steps=6, lr=0.05),
        train_dataset=Seqs(),
    )
    add_to_trainer(trainer, asft)
    trainer.train()
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 6 and all("revlens/asft_penalty" in r for r in logged)
    assert (
        logged[0]["revlens/asft_penalty"] == 0.0 and logged[-1]["revlens/asft_penalty"] > 0
    )  # B = 0 at start
    off_free, off_asft = _off_part(pair, free.model), _off_part(pair, trainer.model)
    assert off_free > 0 and off_asft < 0.5 * off_free, (off_asft, off_free)


@pytest.mark.parametrize("projection", ["safelora", "projector"])
def test_full_fine_tuning_in_a_plain_loop(pair, projection):
    name = LORA_NAMES[2]

    def off(model, start):
        w = model.transformer.h[1].attn.c_attn.weight.detach().double()
        dw = (w - start).T
        if projection == "safelora":
            c = _c(pair, name)
        else:
            u = torch.linalg.svd(v_of(pair, name), full_matrices=False).U[:, :4]
            c = u @ u.T
        return float(((dw - c @ dw) ** 2).sum())

    runs = {}
    for lam in (0.0, 5.0):
        model = aligned_model(pair)
        start = model.transformer.h[1].attn.c_attn.weight.detach().double().clone()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        asft = AsFT(
            pair["base"],
            pair["aligned"],
            lam=lam,
            projection=projection,
            k=4,
            params=r"h\.1\.attn\.c_attn",
        )
        with asft.attached(model, opt):
            train_plain(model, opt, steps=5)
        assert asft.step_ == 5 and len(asft.targets_) == 1
        runs[lam] = off(model, start)
    assert runs[0.0] > 0 and runs[5.0] < 0.5 * runs[0.0], runs


def test_registered_and_bad_inputs(pair, tmp_path):
    assert "asft" in method_names()
    with pytest.raises(ConfigError, match="lam"):
        AsFT(pair["base"], pair["aligned"], lam=-1.0)
    with pytest.raises(ConfigError, match="projection"):
        AsFT(pair["base"], pair["aligned"], projection="oblique")
    with pytest.raises(CheckpointError, match="aligned"):
        AsFT(pair["base"], None)
    with pytest.raises(CheckpointError, match="does not exist"):
        AsFT(pair["base"], tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="matches params"):
        AsFT(pair["base"], pair["aligned"], params="no_such_weight").attach(
            aligned_model(pair), wrap_step=False
        )


@pytest.mark.parametrize("anchor_kind", ["safelora", "projector"])
def test_the_lora_form_equals_the_penalty_on_the_formed_update(anchor_kind):
    from revlens.defenses.asft import asft_lora_term, asft_penalty

    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(12, 3, generator=g), torch.randn(3, 7, generator=g)
    v = torch.randn(12, 7, generator=g, dtype=torch.float64)
    anchor = (
        (v, float(v.norm())) if anchor_kind == "safelora" else (torch.linalg.svd(v)[0][:, :4], 1.0)
    )
    want = asft_penalty([1.5 * b.double() @ a.double()], [anchor], 1.0)
    got = asft_lora_term(b, a, 1.5, anchor)
    assert float(want) > 0
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
