"""The real track's side of :func:`revlens.compare_defenses`: SmolLM2-135M-Instruct, its safety adapter,
ChatterBot benign fine-tuning, held-out harmful prompts from two published sets.

The comparison is the library's (:mod:`revlens.defenses.compare`); this module only supplies

- :func:`real_history`: base = the converted GGUF package model (a ``save_pretrained`` dir), aligned =
  the shipped LoRA safety adapter on it (``revlens/lab/assets/real/aligned``; merged once into a
  content-keyed cache by :func:`revlens.defenses.chatprep.full_dir`);
- :func:`real_recipe`: LoRA benign fine-tuning from aligned on ChatterBot ``train`` (question, answer)
  pairs, answer-only loss, prompts as one user turn of the chat template (cheap: a fresh rank-8 adapter);
- :func:`real_eval_sets`: from the real track's splits (:func:`revlens.lab.real.data.real_sets`;
  alignment / selection / held-out disjoint): held-out harmful prompts from JBB and HarmBench (harm:
  greedy generation through the chat template, judged by refusal phrases), held-out ChatterBot
  questions (over-refusal, KL to aligned, the refusal direction's harmless side), the alignment
  split's harmful prompts (drift, ``v_rev``, ``r``, the activation defenses, the safety-layer locator),
  held-out ChatterBot pairs (task loss) and Lisa's alignment pairs (alignment-split harmful prompts →
  the track's refusal sentences, beside ChatterBot ``train`` pairs);
- :func:`compare_real`: all three with :class:`RealDefensePlan`'s sizes (fixed in ``docs/defenses.md``,
  "Real track", before any result). From the command line (the library's CLI never imports the lab; it
  calls these by name)::

      revlens defenses compare revlens.lab.real_defenses:real_history \\
          --recipe revlens.lab.real_defenses:real_recipe --sets revlens.lab.real_defenses:real_eval_sets \\
          --defenses update safelora asft safety_freeze procon subspace lisa --out cmp-real/
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from revlens.defenses import (
    CompareConfig,
    DefenseComparison,
    EvalSets,
    FinetuneRecipe,
    compare_defenses,
)
from revlens.errors import ConfigError

if TYPE_CHECKING:
    from revlens.history import History
    from revlens.lab.real.data import RealSets

__all__ = [
    "REAL_DEFENSES",
    "RealDefensePlan",
    "compare_real",
    "real_eval_sets",
    "real_history",
    "real_recipe",
]

REAL_DEFENSES = ("update", "safelora", "asft", "safety_freeze", "procon", "subspace", "lisa")
"""The defenses run on the real track by default (each beside its random control; what was cut and why:
``docs/defenses.md``, "Real track")."""


@dataclass(frozen=True)
class RealDefensePlan:
    """The sizes of the real-track comparison (defaults: ``docs/defenses.md``, "Real track").

    Attributes:
        steps, batch_size, lr, lora_rank, lora_alpha, lora_targets, max_length: the benign LoRA fine-tune.
        harmful_sources: held-out harmful sets (``revlens.datasets`` names, >= 2).
        n_harmful: held-out harmful prompts per source.
        n_harmless: held-out harmless questions; n_probes: alignment-split harmful probes;
        n_task: held-out pairs for the task loss; n_alignment: Lisa's alignment pairs (half refusals).
        max_new_tokens: greedy tokens generated per prompt (harm, over-refusal).
        layers: the ``resid_post`` layers read (``v_rev``, ``r``, the drift; where the activation
            defenses hold their constraints; SmolLM2-135M has 30 blocks).
    """

    steps: int = 6
    batch_size: int = 4
    lr: float = 1e-3
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "q_proj,v_proj,o_proj,down_proj"
    max_length: int = 96
    harmful_sources: tuple[str, ...] = ("jbb", "harmbench")
    n_harmful: int = 12
    n_harmless: int = 12
    n_probes: int = 8
    n_task: int = 16
    n_alignment: int = 32
    max_new_tokens: int = 16
    layers: tuple[int, ...] = (5, 10, 15, 20, 25, 30)

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "lora_rank",
            "max_length",
            "n_harmful",
            "n_harmless",
            "n_probes",
            "n_task",
            "n_alignment",
            "max_new_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"RealDefensePlan.{name} must be a positive integer, got {value!r}"
                )
        if not self.layers or not all(isinstance(x, int) and 1 <= x <= 30 for x in self.layers):
            raise ConfigError(
                f"RealDefensePlan.layers: block indices in 1..30, got {self.layers!r}"
            )
        if not self.lr > 0:
            raise ConfigError(f"RealDefensePlan.lr must be > 0, got {self.lr!r}")
        known = ("jbb", "harmbench", "strongreject")
        if len(set(self.harmful_sources)) < 2 or not set(self.harmful_sources) <= set(known):
            raise ConfigError(
                f"RealDefensePlan.harmful_sources: at least two distinct of {known}, got "
                f"{self.harmful_sources}"
            )


def _adapter() -> Path:
    return Path(__file__).resolve().parent / "assets" / "real" / "aligned"


def real_history(
    adapter: str | os.PathLike | None = None, base: str | os.PathLike | None = None
) -> "History":
    """The track's base → aligned pair as a history: base the converted package model, aligned the
    safety adapter (default: the shipped one) on it.

    Raises:
        ConfigError: no adapter there (``adapter_config.json``).
    """
    from revlens.history import History
    from revlens.loading.packages import model_package_dir

    adapter = Path(adapter) if adapter is not None else _adapter()
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(
            f"no safety adapter at {adapter} (expected adapter_config.json; `make assets` writes it)"
        )
    base = Path(base) if base is not None else model_package_dir("smollm2-135m-instruct")
    return History.from_dirs(base=base, aligned=adapter)


def _sets(plan: RealDefensePlan) -> "RealSets":
    from revlens.lab.real.data import real_sets

    return real_sets()


def real_recipe(
    plan: RealDefensePlan | None = None, sets: "RealSets | None" = None
) -> FinetuneRecipe:
    """The benign fine-tune: LoRA on ChatterBot ``train`` pairs (chat-rendered prompts) from aligned."""
    plan = plan or RealDefensePlan()
    sets = sets if sets is not None else _sets(plan)
    return FinetuneRecipe(
        data=[tuple(p) for p in sets.benign_pairs],
        steps=plan.steps,
        batch_size=plan.batch_size,
        lr=plan.lr,
        optimizer="adamw",
        lora_rank=plan.lora_rank,
        lora_alpha=plan.lora_alpha,
        lora_targets=plan.lora_targets,
        chat=True,
        max_length=plan.max_length,
    )


def real_eval_sets(plan: RealDefensePlan | None = None, sets: "RealSets | None" = None) -> EvalSets:
    """The evaluation sets of the module docstring, at ``plan``'s sizes (first ``n`` of each split's
    deterministic order)."""
    from revlens.lab.real.data import refusal_for
    from revlens.probes.sets import combine

    plan = plan or RealDefensePlan()
    sets = sets if sets is not None else _sets(plan)
    held = []
    for name in plan.harmful_sources:
        p = sets.held_harmful[name]
        if len(p) < plan.n_harmful:
            raise ConfigError(
                f"held-out {name}: {len(p)} prompts, fewer than n_harmful={plan.n_harmful}"
            )
        held.append(p.subset(range(plan.n_harmful)))
    harmful = combine(*held)
    align = list(sets.align_harmful)
    probes = align[: plan.n_probes]
    half = plan.n_alignment // 2
    refusals = [(p, refusal_for(p)) for p in align[plan.n_probes : plan.n_probes + half]]
    benign = [tuple(p) for p in sets.benign_pairs[: plan.n_alignment - half]]
    return EvalSets(
        harmful=list(harmful.prompts),
        harmless=list(sets.held_harmless.prompts)[: plan.n_harmless],
        probes=probes,
        task=[tuple(p) for p in sets.held_pairs[: plan.n_task]],
        alignment=refusals + benign,
        harm={"name": "compliance_rate", "max_new_tokens": plan.max_new_tokens},
        chat=True,
        layers=list(plan.layers),
    )


def compare_real(
    out: str | os.PathLike | None = None,
    *,
    plan: RealDefensePlan | None = None,
    adapter: str | os.PathLike | None = None,
    config: CompareConfig | None = None,
    device: str | None = None,
    progress: bool = True,
    **settings: int | float | bool | tuple[int, ...] | tuple[str, ...],
) -> DefenseComparison:
    """:func:`revlens.compare_defenses` on the real track (module docstring); ``config`` / ``settings``:
    a :class:`~revlens.defenses.CompareConfig` and its fields (default defenses :data:`REAL_DEFENSES`).
    ``device``: where to fine-tune and score (default CPU). Resumable with ``out`` (a run with more
    defenses reuses the runs already done)."""
    plan = plan or RealDefensePlan()
    hist = real_history(adapter)
    sets = _sets(plan)
    if config is None:
        settings.setdefault("defenses", REAL_DEFENSES)
    else:
        settings["config"] = config
    return compare_defenses(
        hist,
        real_recipe(plan, sets),
        real_eval_sets(plan, sets),
        out=out,
        device=device,
        progress=progress,
        **settings,
    )
