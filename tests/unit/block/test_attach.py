"""What the blocker corrects: only what is trained (a PEFT LoRA's adapters), narrowed by name or by
hand; its per-layer gradients are stored at that size, and the drift along v is still held."""

import copy

import pytest
import torch
from unit.block import tinyrev
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import tiny
from revlens.block import ReversionBlocker
from revlens.errors import ConfigError

TOK = tiny.tiny_tokenizer()


def blocker(**kw) -> ReversionBlocker:
    return ReversionBlocker(
        tinyrev.direction(),
        tinyrev.probes(),
        tinyrev.pair()[1],
        tokenizer=TOK,
        refresh_every=1,
        **kw,
    )


def lora_run(b: ReversionBlocker | None, steps: int = 10):
    """A PEFT LoRA (r=4 on c_attn and c_fc, AdamW) of the tiny GPT-2 on the reverting loss."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)  # PEFT draws lora_A from the global generator: fixed, whatever ran before
    model = peft.get_peft_model(
        copy.deepcopy(tinyrev.pair()[1]),
        peft.LoraConfig(
            r=4,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["c_attn", "c_fc"],
            fan_in_fan_out=True,
        ),
    ).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    if b is not None:
        b.attach(model, opt)
    loss = tinyrev.loss_fn("revert", 1)
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss(model, step).backward()
        opt.step()
    if b is not None:
        b.detach()
    return model.eval()


def test_lora_update_blocking_corrects_only_the_adapters_and_holds_s():
    free = blocker().projection(lora_run(None)).abs()
    b = blocker()
    model = lora_run(b)
    held = blocker().projection(model).abs()
    assert free.min() > 0.1  # the LoRA fine-tune reverts along v
    assert (held / free).max() < 0.05  # per layer: under 5 % of the unblocked run's drift along v
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert b.cost_["trained_parameters"] == sum(p.numel() for p in lora)
    assert b.cost_["trained_parameters"] < 0.2 * sum(p.numel() for p in model.parameters())


def test_params_patterns_and_tensors_narrow_what_is_corrected():
    model = copy.deepcopy(tinyrev.pair()[1]).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    block0 = [p for n, p in model.named_parameters() if n.startswith("transformer.h.0.")]
    b = blocker(params=["transformer.h.0.*"]).attach(model, opt)
    assert b.cost_["trained_parameters"] == sum(p.numel() for p in block0)
    b.attach(model, opt, params=[{"params": block0[:2]}])  # an optimizer-style param group
    assert b.cost_["trained_parameters"] == sum(p.numel() for p in block0[:2])
    # correcting block 0 only: what the uncorrected parameters (embeddings, block 1) move is caught
    # only by the restoring term one step late, so s is held less tightly, most at layer 2
    b.detach()
    free = copy.deepcopy(model)
    loss = tinyrev.loss_fn("revert", 1)
    free_opt = torch.optim.SGD(free.parameters(), lr=0.1)
    with b.attached(model, opt):
        for step in range(1, 6):
            for m, o in ((model, opt), (free, free_opt)):
                o.zero_grad()
                loss(m, step).backward()
                o.step()
    assert b.step_ == 5 and b.active_["rows"].eq(2).all()
    s_free, s_held = (
        blocker().projection(free.eval()).abs(),
        blocker().projection(model.eval()).abs(),
    )
    assert s_free.min() > 0.3 and s_held[0] < 0.05 * s_free[0] and s_held[1] < 0.25 * s_free[1]
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        blocker(params="*lora_*").attach(model, opt)
    with pytest.raises(ConfigError, match="not trainable parameters"):
        blocker().attach(model, opt, params=[torch.nn.Parameter(torch.zeros(3))])
    frozen = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ConfigError, match="in the optimizer"):
        blocker().attach(model, frozen)
