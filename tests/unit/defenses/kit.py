"""Helpers of the defense tests: the tiny GPT-2 aligned model ``base + V`` (files from the ``pair``
fixture), PEFT LoRA models on it, ``V`` read by hand, a token dataset and Trainer arguments."""

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

import tiny


def aligned_model(pair: dict, n_layer: int = 2) -> torch.nn.Module:
    m = tiny.tiny_model(0, n_layer=n_layer)
    sd = load_file(str(Path(pair["aligned"]) / "model.safetensors"))
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    m.load_state_dict(sd)
    return m


def v_of(pair: dict, name: str) -> torch.Tensor:
    """``V`` of a GPT-2 Conv1D weight, oriented ``[out, in]``, read by hand from the files."""
    a = load_file(str(Path(pair["aligned"]) / "model.safetensors"))[name].double()
    b = load_file(str(Path(pair["base"]) / "model.safetensors"))[name].double()
    return (a - b).T


def lora_model(pair: dict, *, init: bool = False) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(
            aligned_model(pair),
            LoraConfig(
                r=4,
                lora_alpha=8,
                target_modules=["c_attn", "c_fc"],
                fan_in_fan_out=True,
                init_lora_weights=init,
                lora_dropout=0.0,
            ),
        )


LORA_NAMES = [
    "transformer.h.0.attn.c_attn.weight",
    "transformer.h.0.mlp.c_fc.weight",
    "transformer.h.1.attn.c_attn.weight",
    "transformer.h.1.mlp.c_fc.weight",
]


def lora_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule("base_model.model." + name.removesuffix(".weight"))


class Seqs(torch.utils.data.Dataset):
    """32 random token rows (language-model labels = inputs)."""

    def __init__(self) -> None:
        self.ids = torch.randint(2, 32, (32, 8), generator=torch.Generator().manual_seed(5))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def args(tmp_path: Path, steps: int = 4, lr: float = 0.05, optim: str = "sgd") -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=lr,
        optim=optim,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


TOKENS = torch.randint(2, 30, (8, 10), generator=torch.Generator().manual_seed(0))


def train_plain(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    model.train()
    for _ in range(steps):
        model(TOKENS, labels=TOKENS).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
