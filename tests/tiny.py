"""Tiny real GPT-2 histories written with ``save_pretrained`` (test fixtures' workhorse)."""

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

WORDS = ["<pad>", "<eos>", *[f"w{i}" for i in range(30)]]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<eos>",
        unk_token="<pad>",
    )


def tiny_config(n_layer: int = 2, d: int = 32) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(WORDS),
        n_positions=16,
        n_embd=d,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )


def tiny_model(seed: int, n_layer: int = 2, d: int = 32) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config(n_layer, d)).eval()


def save(model: GPT2LMHeadModel, path: Path, tokenizer: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer:
        tiny_tokenizer().save_pretrained(path)
    return path


def perturbed(model: GPT2LMHeadModel, scale: float, seed: int) -> GPT2LMHeadModel:
    out = GPT2LMHeadModel(model.config).eval()
    out.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def write_history(
    root: Path, *, n_runs: int = 2, steps: tuple[int, ...] = (1, 2, 3), trainer: bool = False
) -> dict:
    """base, aligned (= base perturbed) and runs drifting from aligned; returns the dirs."""
    base = tiny_model(0)
    aligned = perturbed(base, 0.05, 1)
    out = {
        "base": save(base, root / "base"),
        "aligned": save(aligned, root / "aligned"),
        "runs": {},
    }
    for r in range(n_runs):
        run_dir = root / f"run{r}"
        steps_map = {}
        for s in steps:
            m = perturbed(aligned, 0.01 * s, 100 * r + s)
            d = run_dir / (f"checkpoint-{s}" if trainer else f"step-{s}")
            save(m, d, tokenizer=False)
            steps_map[s] = d
        out["runs"][f"seed{r}"] = run_dir if trainer else steps_map
    return out


PROMPTS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9 w10", "w11", "w12 w13 w14 w15", "w3 w3 w2"]
