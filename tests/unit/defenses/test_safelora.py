"""SafeLoRA (arXiv 2405.16833) against the paper's equations written out here, on a real PEFT LoRA
model of a tiny GPT-2 whose ``V = W_aligned − W_base`` is read by hand from the saved files; through
the Hugging Face Trainer; on full fine-tuning; and its bad inputs."""

import copy

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
from revlens.defenses import SafeLoRA, SafeLoRAConfig
from revlens.errors import CheckpointError, ConfigError, ShapeMismatchError

SCALE = 8 / 4  # lora_alpha / r


def _paper(pair, model, name, projector_k=None):
    """C (or the true projector), ΔW = s·B·A, and the similarity, by hand."""
    v = v_of(pair, name)
    if projector_k is None:
        c = v @ v.T / torch.linalg.norm(v)  # C = V Vᵀ / ‖V‖_F
    else:
        u = torch.linalg.svd(v, full_matrices=False).U[:, :projector_k]
        c = u @ u.T
    layer = lora_layer(model, name)
    b, a = (
        layer.lora_B["default"].weight.detach().double(),
        layer.lora_A["default"].weight.detach().double(),
    )
    dw = SCALE * b @ a
    cdw = c @ dw
    sim = float(torch.sum(dw * cdw) / (torch.linalg.norm(dw) * torch.linalg.norm(cdw)))
    return c, b, a, sim


@pytest.mark.parametrize(
    ("select", "projection"),
    [("number", "safelora"), ("threshold", "safelora"), ("number", "projector")],
)
def test_projection_and_layer_selection_equal_the_papers_equations(pair, select, projection):
    model = lora_model(pair)
    k = 8 if projection == "projector" else None
    hand = {n: _paper(pair, model, n, k) for n in LORA_NAMES}
    sims = [hand[n][3] for n in LORA_NAMES]
    if select == "number":
        chosen = sorted(LORA_NAMES, key=lambda n: hand[n][3])[:2]  # the 2 least similar modules
        settings = {"n_layers": 2}
    else:
        tau = sorted(sims)[2]  # '< τ' is strict: the two lowest similarities
        chosen = [n for n in LORA_NAMES if hand[n][3] < tau]
        settings = {"tau": tau}
    assert len(set(sims)) == 4 and 0 < len(chosen) < 4
    s = SafeLoRA(
        pair["base"], pair["aligned"], select=select, projection=projection, k=8, **settings
    )
    s.prepare(model).finish()
    table = s.table_.set_index("name")
    for n in LORA_NAMES:
        c, b, a, sim = hand[n]
        assert table.loc[n, "similarity"] == pytest.approx(sim, rel=1e-6)
        assert bool(table.loc[n, "projected"]) == (n in chosen)
        layer = lora_layer(model, n)
        got_b, got_a = (
            layer.lora_B["default"].weight.double(),
            layer.lora_A["default"].weight.double(),
        )
        assert torch.equal(got_a.float(), a.float())  # A untouched
        want = c @ b if n in chosen else b  # ΔW ← C ΔW  ⇔  B ← C B
        torch.testing.assert_close(got_b, want, rtol=1e-5, atol=1e-6)
    assert s.measurements()[0].quantity == "projected" and s.measurements()[0].value == len(chosen)


def test_the_papers_c_is_not_a_projector_the_variant_is(pair):
    """Both maps side by side: the true projector is idempotent and keeps ΔW's norm at most; the
    paper's C rescales by V's singular values (C² ≠ C)."""
    v = v_of(pair, LORA_NAMES[0])
    model = lora_model(pair)
    outs = {}
    for projection in ("safelora", "projector"):
        s = SafeLoRA(pair["base"], pair["aligned"], projection=projection, k=8).prepare(model)
        t = s.targets_[0]
        apply = s.matrix(t)
        x = torch.randn(
            v.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        outs[projection] = (apply(x), apply(apply(x)), x)
    px, ppx, x = outs["projector"]
    torch.testing.assert_close(ppx, px)
    assert float(px.norm()) <= float(x.norm())
    cx, ccx, _ = outs["safelora"]
    assert (ccx - cx).norm() > 0.1 * cx.norm()


def test_lora_through_the_hf_trainer_projects_at_the_end(pair, tmp_path):
    model = lora_model(pair, init=True)  # B = 0 at start, as PEFT trains it
    s = SafeLoRA(pair["base"], pair["aligned"], n_layers=2)
    trainer = Trainer(model=model, args=args(tmp_path, steps=3, lr=0.05), train_dataset=Seqs())
    add_to_trainer(trainer, s)
    trainer.train()
    assert not s.is_attached and s.table_["projected"].sum() == 2
    for n in LORA_NAMES:
        v = v_of(pair, n)
        q = torch.linalg.svd(v, full_matrices=False).U  # an orthonormal basis of col(V)
        layer = lora_layer(trainer.model, n)
        dw = (
            SCALE
            * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach().double()
        )
        off = float((dw - q @ (q.T @ dw)).norm() / dw.norm())
        row = s.table_.set_index("name").loc[n]
        assert dw.norm() > 0
        assert (off < 1e-5) == bool(row["projected"]), (n, off)  # C ΔW lies in V's column space


def test_full_fine_tuning_replaces_the_update_by_c_times_it(pair):
    model = aligned_model(pair)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    s = SafeLoRA(
        pair["base"], pair["aligned"], select="threshold", tau=1.0, params=r"h\.0\.attn\.c_attn"
    )  # τ = 1: every candidate weight is projected
    start = model.transformer.h[0].attn.c_attn.weight.detach().double().clone()
    s.attach(model, opt)
    train_plain(model, opt)
    before = model.transformer.h[0].attn.c_attn.weight.detach().double().clone()
    s.finish()
    s.detach()
    v = v_of(pair, LORA_NAMES[0])
    c = v @ v.T / torch.linalg.norm(v)
    want = start.T + c @ (before - start).T  # oriented [out, in]
    torch.testing.assert_close(model.transformer.h[0].attn.c_attn.weight.detach().double().T, want)
    assert list(s.table_["name"]) == [LORA_NAMES[0]] and bool(s.table_["projected"].iloc[0])


def test_registered_and_bad_inputs_are_typed_errors_before_training(pair, tmp_path):
    assert "safelora" in method_names()
    for tau in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="tau"):
            SafeLoRA(pair["base"], pair["aligned"], tau=tau)
    with pytest.raises(ConfigError, match="select"):
        SafeLoRAConfig(select="some")
    with pytest.raises(ConfigError, match="n_layers"):
        SafeLoRAConfig(n_layers=0)
    with pytest.raises(CheckpointError, match="base"):
        SafeLoRA(None, pair["aligned"])
    with pytest.raises(CheckpointError, match="does not exist"):
        SafeLoRA(tmp_path / "no-such-base", pair["aligned"])
    # a base that lacks a weight the model trains: refused when training starts, nothing changed
    from safetensors.torch import load_file

    partial = load_file(str(pair["base"] / "model.safetensors"))
    partial.pop("transformer.h.1.mlp.c_fc.weight")
    model = lora_model(pair, init=True)
    start = copy.deepcopy(model.state_dict())
    trainer = Trainer(model=model, args=args(tmp_path, steps=2), train_dataset=Seqs())
    add_to_trainer(trainer, SafeLoRA(partial, pair["aligned"]))
    with pytest.raises((CheckpointError, ShapeMismatchError), match="base lacks .*c_fc"):
        trainer.train()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())


def test_random_control_has_vs_shape_and_norm_not_its_direction(pair):
    model = lora_model(pair)
    real = SafeLoRA(pair["base"], pair["aligned"]).prepare(model).targets_
    ctrl = SafeLoRA(pair["base"], pair["aligned"], random=True, seed=1).prepare(model).targets_
    again = SafeLoRA(pair["base"], pair["aligned"], random=True, seed=1).prepare(model).targets_
    for r, c, a in zip(real, ctrl, again, strict=True):
        assert c.v.shape == r.v.shape and float(c.v.norm()) == pytest.approx(float(r.v.norm()))
        assert abs(float((c.v * r.v).sum() / (c.v.norm() * r.v.norm()))) < 0.2
        assert torch.equal(c.v, a.v)  # seeded per weight
    with pytest.raises(ConfigError, match="random"):
        SafeLoRAConfig(random="yes")
