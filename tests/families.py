"""Tiny random-initialised models of real transformer families, for family-matrix tests.

Every family is built from its own ``transformers`` config: 2 layers, d_model 64, small heads,
small MLPs, a 100-word vocabulary. Models are random (seeded), never downloaded. A word-level
tokenizer with a chat template goes with them.

Example:
    >>> import families
    >>> model, tok = families.build("llama", seed=0)
    >>> d = families.save(model, tok, tmp_path / "base")
    >>> dirs = families.write_history(tmp_path / "h", "gpt_neox", trainer=True)

Caching: :func:`build` caches the initial weights per ``(family, seed)`` and returns a fresh module
loaded from them; :func:`checkpoint_dir` caches saved dirs per process (one temporary root).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import transformers as tf

__all__ = [
    "FAMILIES",
    "MOE_FAMILIES",
    "SPECIALS",
    "VOCAB",
    "boot",
    "build",
    "checkpoint_dir",
    "config",
    "logits",
    "perturbed",
    "save",
    "token_batch",
    "tokenizer",
    "write_history",
]

SPECIALS = ["<pad>", "<bos>", "<eos>", "<eot>", "<unk>"]
ROLE_WORDS = ["user", "assistant", "system", ":"]
VOCAB: list[str] = [
    *SPECIALS,
    *ROLE_WORDS,
    *[f"w{i}" for i in range(100 - len(SPECIALS) - len(ROLE_WORDS))],
]
PAD, BOS, EOS = 0, 1, 2

CHAT_TEMPLATE = (
    "{% for m in messages %}<bos> {{ m['role'] }} : {{ m['content'] }} <eot> {% endfor %}"
    "{% if add_generation_prompt %}<bos> assistant :{% endif %}"
)

D, L, H = 64, 2, 4  # d_model, layers, heads (d_head 16)
_COMMON: dict[str, Any] = dict(
    vocab_size=len(VOCAB), bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD
)
_DECODER = dict(
    _COMMON,
    hidden_size=D,
    num_hidden_layers=L,
    num_attention_heads=H,
    intermediate_size=96,
    max_position_embeddings=64,
)


def _llama_like(cls: type, **extra: Any) -> Callable[[], Any]:
    return lambda: cls(
        **{**_DECODER, "num_key_value_heads": 2, "tie_word_embeddings": False, **extra}
    )


# family -> (config factory, model class). Configs: 2 layers, d_model 64, 4 heads of 16.
_SPECS: dict[str, tuple[Callable[[], Any], str]] = {
    "gpt2": (
        lambda: tf.GPT2Config(**_COMMON, n_embd=D, n_layer=L, n_head=H, n_positions=64, n_inner=96),
        "GPT2LMHeadModel",
    ),
    "llama": (_llama_like(tf.LlamaConfig), "LlamaForCausalLM"),
    "qwen2": (_llama_like(tf.Qwen2Config), "Qwen2ForCausalLM"),
    "qwen3": (_llama_like(tf.Qwen3Config, head_dim=16), "Qwen3ForCausalLM"),
    "mistral": (_llama_like(tf.MistralConfig, sliding_window=None), "MistralForCausalLM"),
    "gemma2": (
        _llama_like(
            tf.Gemma2Config,
            head_dim=16,
            tie_word_embeddings=True,
            sliding_window=32,
            query_pre_attn_scalar=16,
        ),
        "Gemma2ForCausalLM",
    ),
    "olmo2": (_llama_like(tf.Olmo2Config), "Olmo2ForCausalLM"),
    "phi3": (_llama_like(tf.Phi3Config, pad_token_id=PAD), "Phi3ForCausalLM"),
    "phi": (lambda: tf.PhiConfig(**_DECODER, partial_rotary_factor=0.5), "PhiForCausalLM"),
    "gpt_neox": (
        lambda: tf.GPTNeoXConfig(**_DECODER, rotary_pct=0.25, tie_word_embeddings=False),
        "GPTNeoXForCausalLM",
    ),
    "opt": (
        lambda: tf.OPTConfig(
            **_COMMON,
            hidden_size=D,
            num_hidden_layers=L,
            num_attention_heads=H,
            ffn_dim=96,
            word_embed_proj_dim=D,
            max_position_embeddings=64,
        ),
        "OPTForCausalLM",
    ),
    "gptj": (
        lambda: tf.GPTJConfig(
            **_COMMON,
            n_embd=D,
            n_layer=L,
            n_head=H,
            n_positions=64,
            rotary_dim=8,
            n_inner=96,
            tie_word_embeddings=False,
        ),
        "GPTJForCausalLM",
    ),
    "bloom": (
        lambda: tf.BloomConfig(**_COMMON, hidden_size=D, n_layer=L, n_head=H),
        "BloomForCausalLM",
    ),
    "falcon": (
        lambda: tf.FalconConfig(
            **_COMMON,
            hidden_size=D,
            num_hidden_layers=L,
            num_attention_heads=H,
            new_decoder_architecture=False,
            multi_query=True,
            parallel_attn=True,
            bias=False,
            alibi=False,
        ),
        "FalconForCausalLM",
    ),
    "mixtral": (
        _llama_like(
            tf.MixtralConfig, num_local_experts=4, num_experts_per_tok=2, sliding_window=None
        ),
        "MixtralForCausalLM",
    ),
    "qwen2_moe": (
        _llama_like(
            tf.Qwen2MoeConfig,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        ),
        "Qwen2MoeForCausalLM",
    ),
}

FAMILIES: tuple[str, ...] = tuple(_SPECS)
MOE_FAMILIES: tuple[str, ...] = ("mixtral", "qwen2_moe")


def config(family: str) -> Any:
    """A fresh ``transformers`` config of ``family`` (2 layers, d_model 64, vocab 100)."""
    if family not in _SPECS:
        raise KeyError(f"unknown family {family!r}; families: {list(_SPECS)}")
    return _SPECS[family][0]()


@functools.cache
def _initial_state(family: str, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = getattr(tf, _SPECS[family][1])(config(family))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build(family: str, seed: int = 0) -> tuple[torch.nn.Module, tf.PreTrainedTokenizerFast]:
    """A random-initialised model of ``family`` (eval mode, float32) and the shared tokenizer.

    The same ``(family, seed)`` always gives the same weights (cached per process).
    """
    model = getattr(tf, _SPECS[family][1])(config(family))
    model.load_state_dict(_initial_state(family, seed))
    return model.eval(), tokenizer()


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok.to_str()


def tokenizer() -> tf.PreTrainedTokenizerFast:
    """Word-level tokenizer over :data:`VOCAB` with bos/eos/pad/unk and a chat template.

    ``apply_chat_template([{"role": "user", "content": "w1 w2"}], add_generation_prompt=True)``
    renders ``<bos> user : w1 w2 <eot> <bos> assistant :``.
    """
    from tokenizers import Tokenizer

    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<eot>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save(
    model: torch.nn.Module, tok: Any, path: Path, *, tokenizer: bool = True, **kwargs: Any
) -> Path:
    """``save_pretrained`` the model (and the tokenizer unless ``tokenizer=False``) into ``path``.

    ``kwargs`` go to ``model.save_pretrained`` (e.g. ``max_shard_size="50KB"``,
    ``safe_serialization=False``).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, **kwargs)
    if tokenizer and tok is not None:
        tok.save_pretrained(path)
    return path


def perturbed(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with ``scale * N(0, 1)`` noise added to every parameter (seeded)."""
    out = type(model)(model.config).eval()
    out.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return out


def write_history(
    root: Path,
    family: str = "gpt2",
    *,
    n_runs: int = 2,
    steps: Iterable[int] = (1, 2, 3),
    trainer: bool = False,
    seed: int = 0,
    **save_kwargs: Any,
) -> dict[str, Any]:
    """Write base → aligned (base + noise) → runs (aligned + growing noise) with ``save_pretrained``.

    Returns ``{"base": dir, "aligned": dir, "runs": {"seed0": ...}}`` where each run is
    ``{step: dir}`` (``step-N`` layout) or, with ``trainer=True``, the run dir holding
    ``checkpoint-N`` folders (Trainer layout). Base and aligned carry the tokenizer.
    """
    root = Path(root)
    base, tok = build(family, seed)
    aligned = perturbed(base, 0.05, seed + 1)
    out: dict[str, Any] = {
        "base": save(base, tok, root / "base", **save_kwargs),
        "aligned": save(aligned, tok, root / "aligned", **save_kwargs),
        "runs": {},
    }
    for r in range(n_runs):
        run_dir = root / f"run{r}"
        steps_map = {}
        for s in steps:
            m = perturbed(aligned, 0.01 * s, 1000 * (seed + 1) + 100 * r + s)
            d = run_dir / (f"checkpoint-{s}" if trainer else f"step-{s}")
            save(m, tok, d, tokenizer=False, **save_kwargs)
            steps_map[s] = d
        out["runs"][f"seed{r}"] = run_dir if trainer else steps_map
    return out


@functools.lru_cache(maxsize=1)
def _cache_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="revlens-families-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.cache
def checkpoint_dir(family: str, variant: str = "base") -> Path:
    """A cached ``save_pretrained`` dir of ``family``: ``"base"`` (seed 0) or ``"other"`` (base
    perturbed by 0.05 noise, as a fine-tuned checkpoint). Written once per process."""
    base, tok = build(family, 0)
    if variant == "base":
        model = base
    elif variant == "other":
        model = perturbed(base, 0.05, 1)
    else:
        raise KeyError(f"unknown variant {variant!r}; expected 'base' or 'other'")
    return save(model, tok, _cache_root() / family / variant)


def token_batch(batch: int = 2, seq: int = 7, seed: int = 0) -> torch.Tensor:
    """A fixed ``[batch, seq]`` batch of ordinary word ids (no specials), for logit comparisons."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(len(SPECIALS) + len(ROLE_WORDS), len(VOCAB), (batch, seq), generator=g)


def boot(path: Path, **kwargs: Any) -> Any:
    """A freshly booted ``TransformerBridge`` (eval mode) on a ``save_pretrained`` dir."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(path), **kwargs)
    bridge.eval()
    return bridge


@torch.no_grad()
def logits(model: Any, x: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a bridge or a HF model on ``x`` (default: :func:`token_batch`)."""
    x = token_batch() if x is None else x
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits
