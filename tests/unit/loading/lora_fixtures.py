"""Real PEFT adapters on the tiny families (random non-zero B), and their merge_and_unload references."""

import warnings
from pathlib import Path
from typing import Any

import torch

import families


def make_adapter(family: str, path: Path, seed: int = 0, **lora: Any) -> torch.nn.Module:
    """Save a PEFT LoRA adapter of ``family`` (base seed 0) with random non-zero factors into
    ``path``; returns ``merge_and_unload()`` of it (the reference model)."""
    from peft import LoraConfig, get_peft_model

    model, _ = families.build(family, 0)
    peft_model = get_peft_model(model, LoraConfig(**lora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if (
                "lora_" in name
                or "modules_to_save" in name
                or (lora.get("bias") == "all" and name.endswith("bias"))
            ):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    with warnings.catch_warnings():
        # Known upstream noise: PEFT 0.21.2 flags legitimate 1-D lora_B.bias tensors (lora_bias=True)
        # as "invalid shape" ZeRO-3 shards, and announces save_embedding_layers for embedding targets.
        warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape.*")
        warnings.filterwarnings("ignore", message=".*save_embedding_layers.*")
        peft_model.save_pretrained(path)
    return peft_model.merge_and_unload().eval()


def train_adapter(run_dir: Path, steps: int = 2) -> Path:
    """A couple of real ``transformers.Trainer`` steps of a LoRA on the tiny llama, writing
    adapter-only ``checkpoint-N`` folders into ``run_dir``; returns ``run_dir``."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model, _ = families.build("llama", 0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"])
    )
    data = [{"input_ids": row, "labels": row} for row in families.token_batch(8, 6, seed=1)]
    args = TrainingArguments(
        output_dir=str(run_dir),
        max_steps=steps,
        save_steps=1,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        save_strategy="steps",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=peft_model, args=args, train_dataset=data).train()
    return run_dir


def merged_from_dir(family: str, adapter_dir: Path) -> torch.nn.Module:
    """PEFT's own answer: ``PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()``."""
    from peft import PeftModel

    model, _ = families.build(family, 0)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()
