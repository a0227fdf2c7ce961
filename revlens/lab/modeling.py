"""Build, initialise, save and load the lab's tiny GPT-2."""

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from revlens.lab.errors import LabAssetsError
from revlens.lab.language import BOS, EOS, PAD, VOCAB

__all__ = ["build_model", "load_checkpoint", "save_checkpoint"]


def build_model(
    *,
    n_layer: int = 4,
    d_model: int = 128,
    n_head: int = 4,
    n_ctx: int = 24,
    generator: torch.Generator,
) -> GPT2LMHeadModel:
    """A fresh GPT-2 (no dropout) initialised from ``generator`` only (GPT-2's init scheme),
    so two calls with equally seeded generators give identical weights."""
    vocab = {w: i for i, w in enumerate(VOCAB)}
    cfg = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
    )
    model = GPT2LMHeadModel(cfg)
    std = cfg.initializer_range
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name or name.startswith("transformer.ln_f"):
                if ".ln_" in name or "ln_f" in name:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.zero_()
            elif name.endswith("c_proj.weight"):
                p.normal_(0.0, std / math.sqrt(2 * n_layer), generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)
    model.eval()
    return model


def save_checkpoint(
    model: torch.nn.Module, path: Path, tokenizer: PreTrainedTokenizerFast | None = None
) -> None:
    """A ``save_pretrained``-compatible dir (config.json + model.safetensors), plus the tokenizer
    files if given. Written with safetensors directly (quiet and fast); ``from_pretrained`` and
    ``TransformerBridge.boot_transformers`` read it. A PEFT model is saved adapter-only
    (``adapter_config.json`` + ``adapter_model.safetensors``, as a Trainer + PEFT run writes)."""
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(path), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        return
    state = model.state_dict()
    if model.config.tie_word_embeddings:  # stored once, as save_pretrained does
        state.pop("lm_head.weight", None)
    save_file(
        {k: v.detach().contiguous() for k, v in state.items()},
        path / "model.safetensors",
        metadata={"format": "pt"},
    )
    model.config.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def load_checkpoint(path: Path) -> GPT2LMHeadModel:
    """Load a lab checkpoint saved by :func:`save_checkpoint` (CPU, float32, eval mode)."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise LabAssetsError(
            f"no lab checkpoint at {path} (expected config.json + model.safetensors)"
        )
    try:
        config = GPT2Config.from_pretrained(path)
        model = GPT2LMHeadModel(config)
        state = load_file(path / "model.safetensors")
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise LabAssetsError(f"cannot read the lab checkpoint at {path}: {exc}") from exc
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise LabAssetsError(
            f"checkpoint at {path} does not match its config: missing {missing}, "
            f"unexpected {unexpected}"
        )
    model.tie_weights()
    model.eval()
    return model
