"""What :func:`~revlens.defenses.compare_defenses` does before any training on a chat model.

- **Prompts through the chat template.** An aligned chat model refuses what it reads inside its template;
  the same request as raw text is another input (SmolLM2-135M-Instruct's refusals are conditioned on
  ``<|im_start|>user ... <|im_end|>\\n<|im_start|>assistant\\n``). :func:`render_sets` turns every set
  given as plain strings into chat probes (one user turn each) when the tokenizer has a chat template
  (``EvalSets.chat=None``, the default), always (``chat=True``; a typed error where the tokenizer has
  no template) or never (``False``). Sets given as :class:`~revlens.probes.Probes` are used as given.
  Every measure then reads the rendered prompts: generation (harm, over-refusal), the KL on harmless
  prompts, the drift, the refusal direction (at the last post-instruction token,
  :func:`refusal_probes`), and the safety-layer locator (:func:`locator_texts`: the rendered texts).
- **Adapter checkpoints.** A history whose aligned checkpoint is a PEFT adapter on its base is merged
  once (``merge_and_unload`` + ``save_pretrained``) into a cache dir keyed by the merged model's content
  fingerprint (:func:`full_dir`); the weight-space defenses (SafeLoRA, AsFT, ``WeightBlocker``) read
  that dir.
"""

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revlens.defenses.bench import EvalSets
from revlens.errors import CheckpointError, ConfigError
from revlens.probes import Probes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from revlens.history.checkpoint import Checkpoint

__all__ = [
    "full_dir",
    "has_template",
    "locator_texts",
    "merged_cache_root",
    "refusal_probes",
    "render_sets",
]

SETS = ("harmful", "harmless", "probes")


def has_template(tokenizer: "PreTrainedTokenizerBase") -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_sets(sets: EvalSets, tokenizer: "PreTrainedTokenizerBase") -> EvalSets:
    """``sets`` with its plain-string prompt sets turned into chat probes where the template applies
    (module docstring); ``sets`` itself where nothing changes.

    Raises:
        ConfigError: ``chat=True`` and the tokenizer has no chat template.
    """
    chat = sets.chat
    if chat is None:
        chat = has_template(tokenizer)
    elif chat and not has_template(tokenizer):
        raise ConfigError(
            "EvalSets(chat=True): the history's tokenizer has no chat template; pass chat=False "
            "(raw text) or a tokenizer with a template"
        )
    if not chat:
        return sets
    changed = {n: Probes.from_chat(list(getattr(sets, n).prompts)) for n in SETS if n in sets.plain}
    if not changed:
        return sets
    out = dataclasses.replace(sets, **changed)
    out.plain = set()
    out.chat = True
    return out


def refusal_probes(sets: EvalSets) -> tuple[Probes, Any]:
    """Labelled probes for the refusal direction and the position to read: chat probes at the last
    post-instruction token (Arditi et al.'s positions; ``("post_instruction", 1)``), else ``"last"``."""
    bad, good = sets.probes, sets.harmless
    labels = ["harmful"] * len(bad) + ["harmless"] * len(good)
    if bad.is_chat and good.is_chat:
        return Probes.from_chat(bad.conversations + good.conversations, labels=labels), (
            "post_instruction",
            1,
        )
    if bad.is_chat or good.is_chat:
        raise ConfigError(
            "EvalSets: probes and harmless must both be chat probes or both plain text (the refusal "
            "direction contrasts them at the same positions)"
        )
    return Probes(list(bad.prompts) + list(good.prompts), labels=labels), "last"


def locator_texts(probes: Probes, tokenizer: "PreTrainedTokenizerBase") -> list[str]:
    """The prompts as the safety-layer locator reads them: the rendered chat text for chat probes."""
    if probes.is_chat:
        return list(probes.tokenize(tokenizer).rendered or [])
    return [str(p) for p in probes.prompts]


def merged_cache_root() -> Path:
    """Where merged adapter checkpoints live: ``$REVLENS_CACHE_DIR/merged``, else
    ``$XDG_CACHE_HOME/revlens/merged`` (``~/.cache/revlens/merged``)."""
    if os.environ.get("REVLENS_CACHE_DIR"):
        return Path(os.environ["REVLENS_CACHE_DIR"]) / "merged"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "revlens" / "merged"


def full_dir(
    ck: "Checkpoint",
    what: str,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    cache: str | os.PathLike | None = None,
) -> Path:
    """A full ``save_pretrained`` dir holding ``ck``'s weights: its own dir, or (a PEFT adapter) the
    adapter merged into its start checkpoint, written once into ``cache`` (default
    :func:`merged_cache_root`) under the merged model's fingerprint, atomically.

    Raises:
        CheckpointError: an in-memory checkpoint or a missing dir.
        HistoryError: an adapter without a full start checkpoint.
    """
    path = ck.local_path()
    if path is None or not path.is_dir():
        raise CheckpointError(
            f"compare_defenses needs the {what} checkpoint {ck.name!r} as a save_pretrained dir "
            f"or a PEFT adapter dir; got {path}"
        )
    if ck.kind == "full":
        return Path(path)
    start = ck.require_start()
    key = hashlib.blake2b(ck.model_fingerprint().encode(), digest_size=12).hexdigest()
    final = Path(cache) if cache is not None else merged_cache_root()
    final = final / key
    if (final / "config.json").is_file():
        return final
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    start_dir = full_dir(start, f"{what}'s start")
    model = AutoModelForCausalLM.from_pretrained(str(start_dir))
    merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload().eval()
    tmp = final.with_name(f"{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        final.parent.mkdir(parents=True, exist_ok=True)
        if (final / "config.json").is_file():  # written meanwhile by another process
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
