"""The lab's side of :func:`revlens.compare_defenses`: its fine-tuning recipe and evaluation sets.

The comparison itself is the library's (:mod:`revlens.defenses.compare`, history-agnostic); the lab
only supplies

- :class:`LabRecipe`: a :class:`~revlens.defenses.FinetuneRecipe` whose batches, optimizer and LoRA
  adapters are exactly the lab track's benign fine-tune (``revlens.lab.train.finetune``: same seed, same
  batches, same optimizer);
- :func:`lab_sets`: the held-out harmful prompts with the history's declared harm metric (``harm``:
  log-odds of a compliance over a refusal first token), the held-out benign-task prompts (KL,
  over-refusal: a refusal token winning the greedy first token), the alignment-split harmful prompts
  (drift, ``v_rev``, ``r`` and the activation defenses), the task (the lab evaluator's ``task_acc`` /
  ``task_loss``) and 256 alignment exchanges for Lisa (the lab's own alignment data: refusals of
  training-split harmful requests and benign exchanges);
- :func:`compare_lab`: both, on a base/aligned pair dir (default: the shipped ``pair0``).

From the command line: ``revlens defenses compare --history <pair dir> --recipe
revlens.lab.defenses:lab_recipe --sets revlens.lab.defenses:lab_sets``.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, no_type_check

import torch

from revlens._config import option
from revlens._types import PathLike
from revlens.defenses import DefenseComparison, EvalSets, FinetuneRecipe, compare_defenses
from revlens.errors import ConfigError

__all__ = ["LabRecipe", "LabTask", "compare_lab", "lab_recipe", "lab_sets"]


@no_type_check  # validates its own fields (typed errors)
@dataclass
class LabRecipe(FinetuneRecipe):
    """The lab track's benign fine-tune as a recipe; ``steps``, ``batch_size``, ``lr``, ``optimizer``,
    ``momentum``, ``lora_rank`` and ``lora_alpha`` are taken from the track (set them to override)."""

    track: str = option("pretrain-like", "the lab track (revlens.lab.tracks.TRACKS)")

    def validate(self) -> None:
        """Fill the training fields from the track, then check every field."""
        from revlens.lab import LabConfig
        from revlens.lab.tracks import TRACKS

        if self.track not in TRACKS:
            raise ConfigError(f"track={self.track!r}; lab tracks: {', '.join(TRACKS)}")
        c = LabConfig.for_track(self.track)
        defaults = FinetuneRecipe()
        for name, value in (
            ("steps", c.ft_steps),
            ("batch_size", c.ft_batch),
            ("lr", c.ft_lr),
            ("optimizer", c.ft_optimizer),
            ("momentum", c.ft_momentum if c.ft_optimizer == "sgd" else 0.0),
            ("lora_rank", c.ft_lora_rank),
            ("lora_alpha", c.ft_lora_alpha),
        ):
            if getattr(self, name) == getattr(defaults, name):
                setattr(self, name, value)
        super().validate()

    def lab_config(self) -> Any:
        """The track's ``LabConfig`` with this recipe's training fields."""
        from revlens.lab import LabConfig

        return LabConfig.for_track(
            self.track,
            ft_steps=self.steps,
            ft_batch=self.batch_size,
            ft_lr=self.lr,
            ft_optimizer=self.optimizer,
            ft_momentum=self.momentum or 0.9,
            ft_lora_rank=self.lora_rank,
            ft_lora_alpha=self.lora_alpha,
        )

    def batches(
        self, tokenizer: Any, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The lab's batches for ``seed`` (``finetune(seed=...)`` sees the same)."""
        from revlens.lab.tracks import sample_finetune
        from revlens.lab.train import _FT_DATA, _gen, encode_examples

        cfg, g = self.lab_config(), _gen(seed, _FT_DATA)
        for _ in range(self.steps):
            yield encode_examples(
                sample_finetune(cfg, cfg.ft_batch, g), answer_only=True, n_ctx=cfg.n_ctx
            )

    def example_pairs(self, n: int, seed: int) -> list[tuple[str, str]]:
        """``n`` fine-tuning exchanges that have a prompt (Lisa's control)."""
        from revlens.lab.tracks import sample_finetune
        from revlens.lab.train import _FT_DATA, _gen

        g, out = _gen(seed + 104_729, _FT_DATA), []
        while len(out) < n:
            out += [
                (e.prompt, e.answer) for e in sample_finetune(self.lab_config(), n, g) if e.prompt
            ]
        return out[:n]

    def wrap(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        """The lab's LoRA adapters (seeded as ``finetune`` seeds them), or the model itself."""
        from revlens.lab.train import with_lora

        return with_lora(model, self.lab_config(), seed=seed) if self.lora_rank else model

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The lab's fine-tuning optimizer."""
        from revlens.lab.train import make_optimizer

        return make_optimizer(model, self.lab_config())


class LabTask:
    """The lab evaluator's task columns (``task_acc``, ``task_loss``) under the track's rule."""

    def __init__(self, track: str = "pretrain-like") -> None:
        from revlens.lab import LabConfig, build_tokenizer
        from revlens.lab.metrics import Evaluator
        from revlens.lab.tracks import task_shift

        self.track = track
        self.evaluator = Evaluator(
            build_tokenizer(), task_shift=task_shift(LabConfig.for_track(track))
        )

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        m = self.evaluator(model)
        return {"task_acc": m["task_acc"], "task_loss": m["task_loss"]}

    def __repr__(self) -> str:
        return f"LabTask({self.track!r})"


def lab_recipe(track: str = "pretrain-like", **fields: Any) -> LabRecipe:
    """The track's recipe (``fields`` override it, e.g. ``steps=30``)."""
    return LabRecipe(track=track, **fields)


def lab_sets(
    track: str = "pretrain-like", *, n_alignment: int = 256, alignment_seed: int = 0
) -> EvalSets:
    """The lab's evaluation sets (module docstring)."""
    from revlens.lab import LabConfig, probe_prompts
    from revlens.lab.language import sample_align
    from revlens.lab.runner import METRICS_SPEC
    from revlens.lab.train import _ALIGN_DATA, _gen

    cfg = LabConfig.for_track(track)
    align = [
        (e.prompt, e.answer)
        for e in sample_align(
            n_alignment, _gen(alignment_seed, _ALIGN_DATA), refusal_share=cfg.refusal_share
        )
        if e.prompt
    ]
    return EvalSets(
        harmful=probe_prompts("harmful", "heldout"),
        harmless=probe_prompts("benign", "heldout"),
        probes=probe_prompts("harmful", "train"),
        task=LabTask(track),
        alignment=align,
        harm=METRICS_SPEC["harm"],
    )


def compare_lab(
    pair_dir: PathLike | None = None,
    *,
    track: str = "pretrain-like",
    steps: int | None = None,
    out: PathLike | None = None,
    progress: bool = True,
    **settings: Any,
) -> DefenseComparison:
    """:func:`revlens.compare_defenses` on a lab pair (default: the shipped ``pair0``) with the track's
    recipe and the lab's sets; ``settings``: :class:`~revlens.defenses.CompareConfig` fields."""
    from revlens.history import History
    from revlens.lab.runner import asset_dir

    pair = Path(pair_dir) if pair_dir is not None else asset_dir() / "pair0"
    if not (pair / "base").is_dir() or not (pair / "aligned").is_dir():
        raise ConfigError(f"{pair} is not a base/aligned pair dir (expected base/ and aligned/)")
    hist = History.from_dirs(base=pair / "base", aligned=pair / "aligned")
    recipe = lab_recipe(track) if steps is None else lab_recipe(track, steps=steps)
    return compare_defenses(hist, recipe, lab_sets(track), out=out, progress=progress, **settings)
