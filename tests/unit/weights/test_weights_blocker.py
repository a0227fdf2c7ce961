"""WeightBlocker on real training: full fine-tuning (AdamW) and PEFT LoRA, in a plain loop and in a
Hugging Face Trainer; after training, ΔW has no energy left in V's subspace (off), or all of it
there (onto); the random control leaves V's subspace alone."""

import warnings

import pytest
import torch

import tiny
from revlens.errors import ConfigError, NotFittedError
from revlens.weights import WeightBlocker, subspace_projector
from revlens.weights.catalog import build_catalog
from revlens.weights.readers import FullReader

TOKENS = torch.randint(2, 30, (8, 10), generator=torch.Generator().manual_seed(0))


def _aligned(planted):
    m = tiny.tiny_model(0)
    m.load_state_dict(_state(planted["aligned"]))
    return m


def _state(path):
    from safetensors.torch import load_file

    sd = load_file(str(path / "model.safetensors"))
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    return sd


def _train(model, opt, steps=3):
    model.train()
    for _ in range(steps):
        loss = model(TOKENS, labels=TOKENS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _v(planted, name):
    cat = build_catalog(planted["aligned"])
    p = cat.params[name]
    a, b = FullReader(planted["aligned"], "a", cat), FullReader(planted["base"], "b", cat)
    return p, a.read(p).double() - b.read(p).double()


@pytest.mark.parametrize(
    ("side", "mode"), [("left", "off"), ("both", "off"), ("direction", "off"), ("right", "onto")]
)
def test_full_finetune_updates_stay_off_or_on_the_subspace(planted, side, mode):
    model = _aligned(planted)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    blocker = WeightBlocker(planted["base"], planted["aligned"], k=4, side=side, mode=mode)
    with blocker.attached(model, opt):
        assert blocker.is_attached
        _train(model, opt)
    assert not blocker.is_attached and "step" not in vars(opt)  # optimizer.step restored
    assert len(blocker.history_) == 3 and (blocker.history_["removed"] > 0).all()
    for name in (
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.mlp.c_proj.weight",
        "transformer.wte.weight",
    ):
        p, v = _v(planted, name)
        dw = p.orient(dict(model.named_parameters())[name].detach().double() - start[name].double())
        proj = subspace_projector(v, 4, side)
        inside = float(proj(dw).norm() ** 2) / float(dw.norm() ** 2)
        assert dw.norm() > 0
        if mode == "off":
            assert inside < 1e-10, (name, inside)
        else:
            assert inside > 1 - 1e-6, (name, inside)
    # 1-d parameters are not blocked
    assert not torch.equal(model.transformer.h[0].ln_1.weight, start["transformer.h.0.ln_1.weight"])


def test_random_control_blocks_a_random_subspace_not_vs(planted):
    model = _aligned(planted)
    start = model.transformer.h[1].mlp.c_fc.weight.detach().double().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    blocker = WeightBlocker(
        planted["base"], planted["aligned"], k=4, side="left", random=True, seed=3
    )
    with blocker.attached(model, opt):
        _train(model, opt)
    p, v = _v(planted, "transformer.h.1.mlp.c_fc.weight")
    dw = p.orient(model.transformer.h[1].mlp.c_fc.weight.detach().double() - start)
    t = next(t for t in blocker.targets_ if t.name == p.name)
    assert float(t.projector(dw).norm()) < 1e-6 * float(dw.norm())
    assert float(subspace_projector(v, 4, "left")(dw).norm() ** 2) > 0.01 * float(dw.norm() ** 2)


def _peft(planted):
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(
            _aligned(planted),
            LoraConfig(
                r=4,
                lora_alpha=8,
                target_modules=["c_attn", "c_fc"],
                fan_in_fan_out=True,
                init_lora_weights=False,
            ),
        )


def test_lora_factors_are_projected_exactly(planted):
    model = _peft(planted)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    blocker = WeightBlocker(planted["base"], planted["aligned"], k=4, side="left")
    with blocker.attached(model, opt):
        _train(model, opt)
    assert blocker.lora_ and len(blocker.targets_) == 4
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    b, a = layer.lora_B["default"].weight.double(), layer.lora_A["default"].weight.double()
    _p, v = _v(planted, "transformer.h.0.attn.c_attn.weight")
    dw = (layer.scaling["default"] * b @ a).detach()
    assert float(subspace_projector(v, 4, "left")(dw).norm()) < 1e-6 * float(dw.norm())
    with pytest.raises(ConfigError, match="LoRA"):
        WeightBlocker(planted["base"], planted["aligned"], side="both").attach(model, opt)


@pytest.mark.slow
def test_trainer_callback_blocks_inside_trainer(planted, tmp_path):
    from transformers import Trainer, TrainingArguments

    from revlens.weights import WeightBlockerCallback

    model = _peft(planted)
    blocker = WeightBlocker(planted["base"], planted["aligned"], k=2, side="right")
    data = [{"input_ids": row, "labels": row} for row in TOKENS]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(
        model=model, args=args, train_dataset=data, callbacks=[WeightBlockerCallback(blocker)]
    ).train()
    assert blocker.step_ == 2
    layer = model.base_model.model.transformer.h[1].mlp.c_fc
    a = layer.lora_A["default"].weight.double()
    _, v = _v(planted, "transformer.h.1.mlp.c_fc.weight")
    r = subspace_projector(v, 2, "right").r
    assert float((a @ r).norm()) < 1e-6 * float(a.norm())


def test_protocol_errors(planted):
    model = _aligned(planted)
    blocker = WeightBlocker(planted["base"], planted["aligned"])
    with pytest.raises(NotFittedError):
        blocker.after_step()
    with pytest.raises(ConfigError, match="optimizer"):
        blocker.attach(model)
    with pytest.raises(ConfigError, match="no trainable"):
        WeightBlocker(planted["base"], planted["aligned"], params="nothing").attach(
            model, wrap_step=False
        )
    with pytest.raises(ConfigError, match="side"):
        WeightBlocker(planted["base"], planted["aligned"], side="up")
    assert "WeightBlocker(side='left'" in repr(blocker)


def test_fields_are_spelled_out_and_an_unknown_keyword_is_named(planted):
    import inspect

    params = inspect.signature(WeightBlocker.__init__).parameters
    assert {"k", "side", "mode", "params", "random", "seed", "svd"} <= set(params)
    assert "settings" not in params  # the config convention: spelled-out fields (as analyze)
    cfg = WeightBlocker(planted["base"], planted["aligned"], k=3, side="right", seed=5).config
    assert (cfg.k, cfg.side, cfg.seed, cfg.mode) == (3, "right", 5, "off")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['rank'\]"):
        WeightBlocker(planted["base"], planted["aligned"], rank=3)
