"""The blocker and the monitor as callbacks of TRL's ``SFTTrainer`` on a PEFT LoRA fine-tune of a
tiny Llama (CPU): the blocker corrects only the adapters and holds the drift along ``v`` at ~0,
the monitor checks on schedule, and both log through the Trainer (``state.log_history``)."""

import copy
import functools
import warnings

import pytest
import torch
import trl
from unit.block.tinyrev import one_thread  # noqa: F401 (autouse fixture)

import families
from revlens.block import ReversionBlocker, add_to_trainer
from revlens.directions import Directions
from revlens.monitor import ReversionMonitor
from revlens.sites import access

pytestmark = pytest.mark.xdist_group("family-lora")

TOK = families.tokenizer()
LAYERS = [1, 2]
PROBES = [
    TOK.apply_chat_template(
        [{"role": "user", "content": f"w{i} w{i + 3} w{i + 7}"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    for i in range(20, 36)
]
LORA = dict(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


def _data(seed: int):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    words = lambda k: " ".join(f"w{int(i)}" for i in torch.randint(40, 60, (k,), generator=g))  # noqa: E731
    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": words(4)}, {"role": "assistant", "content": words(6)}]
                for _ in range(32)
            ]
        }
    )


def _start():
    return families.build("llama", 0)[0]


def _means(model) -> torch.Tensor:
    enc = TOK(PROBES, return_tensors="pt", padding=True, add_special_tokens=False)
    acc = access(model)
    last = enc["attention_mask"].sum(1) - 1
    weights = torch.nn.functional.one_hot(last, enc["input_ids"].shape[1]).float()
    with torch.no_grad():
        return (
            torch.stack(
                acc.read(enc["input_ids"], weights, acc.sites(LAYERS), mask=enc["attention_mask"]),
                1,
            )
            .double()
            .mean(0)
        )


def sft(tmp_path, seed: int, tools=()):
    """6 SFTTrainer steps of a LoRA from the start model; returns the trainer."""
    from peft import LoraConfig

    args = trl.SFTConfig(
        output_dir=str(tmp_path / f"sft{seed}"),
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        max_length=32,
        packing=False,
        bf16=False,
        fp16=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Trainer / PEFT / TRL chatter
        trainer = trl.SFTTrainer(
            model=copy.deepcopy(_start()),
            args=args,
            train_dataset=_data(seed),
            processing_class=TOK,
            peft_config=LoraConfig(**LORA),
        )
        add_to_trainer(trainer, *tools)
        trainer.train()
    return trainer


@functools.cache
def _direction(root) -> Directions:
    """The drift of a pilot SFT run (another data seed)."""
    pilot = sft(root, 100).model
    return Directions.from_tensor(_means(pilot) - _means(_start()), LAYERS, method="pilot")


def test_sft_trainer_blocks_lora_and_logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    v = _direction(root)

    def tools(blocked: bool):
        mon = ReversionMonitor(v, PROBES, _start(), tokenizer=TOK, every=2, probe_batch_size=None)
        if not blocked:
            return mon, None
        return mon, ReversionBlocker(
            v,
            PROBES,
            _start(),
            tokenizer=TOK,
            refresh_every=1,
            probe_batch_size=None,
            params="*lora_*",
        )

    free_mon, _ = tools(False)
    sft(root, 1, [free_mon])
    mon, blocker = tools(True)
    held = sft(root, 1, [blocker, mon])
    f, h = free_mon.history_, mon.history_
    assert (
        h.step.unique().tolist() == [2, 4, 6] == f.step.unique().tolist()
    )  # the monitor checked on schedule
    last = f[f.step == 6]
    assert (last.proj > 0.05).all() and (
        last.cos > 0.5
    ).all()  # the free run drifts along the pilot's direction
    assert h.proj.abs().max() < 0.05 * f.proj.abs().max()  # blocked: held at ~0
    # only the adapters were corrected (their size, not the model's)
    lora = sum(p.numel() for n, p in held.model.named_parameters() if "lora_" in n)
    assert (
        blocker.cost_["trained_parameters"]
        == lora
        < 0.1 * sum(p.numel() for p in held.model.parameters())
    )
    # the measurements went through the Trainer's log
    logs = held.state.log_history
    blocked_steps = [e["step"] for e in logs if "revlens/block_s_layer1" in e]
    checks = [e for e in logs if "revlens/cos_layer2" in e]
    assert blocked_steps == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in checks] == [2, 4, 6]
    assert [e["revlens/proj_layer2"] for e in checks] == pytest.approx(
        h[h.layer == 2].proj.tolist()
    )
    assert any(
        "loss" in e for e in logs if "revlens/block_s_layer2" in e
    )  # merged into the Trainer's own log
