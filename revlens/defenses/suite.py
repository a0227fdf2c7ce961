"""The defenses :func:`~revlens.defenses.compare_defenses` runs, each as published and as its **random
control**, with their settings as one validated config (:class:`CompareConfig`, defaults fixed in
``docs/defenses.md`` before any result was seen).

==================== ===================================================== ===============================================
name                 the defense                                           its control
==================== ===================================================== ===============================================
``safelora``         SafeLoRA, the paper's ``C = V Vᵀ/‖V‖_F``, 10 weights  a Gaussian ``V`` per weight (same shape, norm)
``safelora_projector`` SafeLoRA with the true projector onto ``V``'s top-k  the same, random ``V``
``asft``             AsFT, ``λ Σ ‖(I − C)ΔW‖²``                            the same, random ``V``
``safety_freeze``    freeze the located safety layers                      another block range of the same length
``procon``           penalise each probe's projection change on ``r``      random unit directions
``lisa``             Lisa: alignment states + proximal term                the 'alignment' state trains on fine-tuning
                                                                           pairs (same steps, same proximal term)
``update``           revlens' update projection along ``v_rev``            random unit directions
``update_r``         the update projection along the refusal direction ``r`` random unit directions
``subspace``         the same along the rank-k reversion subspace          random k-subspaces
``weights``          ``WeightBlocker``: updates off ``V``'s top-k          random subspaces of the same rank
==================== ===================================================== ===============================================
"""

from dataclasses import dataclass, field
from typing import Any, no_type_check

import torch

from revlens._config import Config, as_float, as_int, as_str_tuple, option
from revlens._seeds import generator
from revlens.directions import Directions
from revlens.errors import ConfigError

__all__ = ["DEFENSES", "CompareConfig", "Context", "build_defense"]

DEFENSES = (
    "safelora",
    "safelora_projector",
    "asft",
    "safety_freeze",
    "procon",
    "lisa",
    "update",
    "update_r",
    "subspace",
    "weights",
)
"""Every defense :func:`~revlens.defenses.compare_defenses` knows, in table order."""


@no_type_check  # validates its own fields (typed errors)
@dataclass
class CompareConfig(Config):
    """Settings of a comparison: which defenses, seeds, and each defense's hyper-parameters."""

    defenses: tuple[str, ...] = option(
        DEFENSES, "defenses to run (each beside its random control)", choices=DEFENSES, nargs="+"
    )
    seeds: tuple[int, ...] = option(
        (0, 1, 2),
        "fine-tuning seeds (>= 3 for mean ± std)",
        nargs="+",
        parse=lambda flag, raw: tuple(int(x) for x in raw),
    )
    skip_controls: bool = option(
        False, "skip every defense's random control (a quick look, not a result)"
    )
    trajectory_points: int = option(
        5, "harm measured at this many evenly spaced steps (0: only at T)"
    )
    safelora_n_layers: int = option(
        10, "SafeLoRA: weights projected (the authors' released default)"
    )
    safelora_k: int = option(8, "SafeLoRA with the true projector: the subspace's rank")
    asft_lam: float = option(1.0, "AsFT: λ")
    procon_strength: float = option(1.0, "ProCon-style penalty: its weight")
    lisa_rho: float = option(1.0, "Lisa: ρ, the proximal intensity")
    lisa_align_steps: int = option(1, "Lisa: alignment steps per cycle (K_a)")
    lisa_user_steps: int = option(
        9, "Lisa: user steps per cycle (K_u; one alignment step in ten, as the paper's ratio)"
    )
    subspace_k: int = option(4, "revlens' subspace blocking: the reversion subspace's rank")
    weights_k: int = option(16, "WeightBlocker: the rank of V's blocked singular subspace")
    control_seed: int = option(
        0, "offset of the controls' random draws (each run also mixes in its seed)"
    )

    def validate(self) -> None:
        """Check every field."""
        self.defenses = as_str_tuple("defenses", self.defenses, DEFENSES)
        if not self.defenses:
            raise ConfigError("defenses: name at least one")
        seeds = (self.seeds,) if isinstance(self.seeds, int) else tuple(self.seeds)
        self.seeds = tuple(as_int("seeds", s) for s in seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and non-empty, got {self.seeds}")
        self.trajectory_points = as_int("trajectory_points", self.trajectory_points, min=0)
        for name in (
            "safelora_n_layers",
            "safelora_k",
            "lisa_align_steps",
            "lisa_user_steps",
            "subspace_k",
            "weights_k",
        ):
            setattr(self, name, as_int(name, getattr(self, name), min=1))
        for name in ("asft_lam", "procon_strength", "lisa_rho"):
            setattr(self, name, as_float(name, getattr(self, name), min=0.0))
        self.control_seed = as_int("control_seed", self.control_seed)

    def settings(self, name: str) -> dict[str, Any]:
        """The hyper-parameters a defense's result depends on (part of its resume key)."""
        keys = {
            "safelora": ("safelora_n_layers",),
            "safelora_projector": ("safelora_n_layers", "safelora_k"),
            "asft": ("asft_lam",),
            "procon": ("procon_strength",),
            "lisa": ("lisa_rho", "lisa_align_steps", "lisa_user_steps"),
            "subspace": ("subspace_k",),
            "weights": ("weights_k",),
        }.get(name, ())
        return {k: getattr(self, k) for k in keys}


@dataclass
class Context:
    """What the builders need: the checkpoints, the aligned model, directions, located layers."""

    base: Any
    aligned_dir: Any
    aligned: torch.nn.Module
    tokenizer: Any
    probes: Any
    v: Directions
    subspace: Directions
    r: Directions
    safety: tuple[int, int] | None
    n_layers: int
    recipe: Any
    alignment: Any
    lora: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _random_dirs(like: Directions, seed: int, key: str) -> Directions:
    g = generator(seed, "compare-control", key)
    shape = (len(like.layers), like.rank, like.basis.shape[-1])
    return Directions.from_tensor(
        torch.randn(shape, generator=g, dtype=torch.float64), like.layers, method="random"
    )


def _other_range(first: int, last: int, n_layers: int, seed: int) -> tuple[int, int]:
    width = last - first
    starts = [s for s in range(n_layers - width) if s != first] or [first]
    pick = int(torch.randint(0, len(starts), (1,), generator=generator(seed, "freeze-control")))
    return starts[pick], starts[pick] + width


def _activation(ctx: Context, directions: Directions, method: str, **kw: Any) -> Any:
    from revlens.block import ReversionBlocker

    extra = {"params": "*lora_*"} if ctx.lora else {}
    return ReversionBlocker(
        directions, ctx.probes, ctx.aligned, tokenizer=ctx.tokenizer, method=method, **extra, **kw
    )


def _delta(cls_name: str, **fixed: Any) -> Any:
    def build(ctx: Context, cfg: CompareConfig, control: bool, rs: int) -> list[Any]:
        import revlens.defenses as d
        from revlens.weights.blocker import WeightBlocker

        cls = WeightBlocker if cls_name == "WeightBlocker" else getattr(d, cls_name)
        kw = {
            k: (getattr(cfg, v) if isinstance(v, str) and hasattr(cfg, v) else v)
            for k, v in fixed.items()
        }
        return [cls(ctx.base, ctx.aligned_dir, random=control, seed=rs, **kw)]

    return build


def _freeze(ctx: Context, cfg: CompareConfig, control: bool, rs: int) -> list[Any]:
    from revlens.defenses import SafetyLayerFreeze

    if ctx.safety is None:
        raise ConfigError(
            "safety_freeze: the safety layers could not be located on these prompts (no layer where "
            "harmful and harmless prompts separate); leave the defense out"
        )
    first, last = _other_range(*ctx.safety, ctx.n_layers, rs) if control else ctx.safety
    return [SafetyLayerFreeze(first, last)]


def _procon(ctx: Context, cfg: CompareConfig, control: bool, rs: int) -> list[Any]:
    from revlens.defenses import ProConPenalty

    r = _random_dirs(ctx.r, rs, "procon") if control else ctx.r
    extra = {"params": "*lora_*"} if ctx.lora else {}
    return [
        ProConPenalty(
            r,
            ctx.probes,
            ctx.aligned,
            tokenizer=ctx.tokenizer,
            strength=cfg.procon_strength,
            **extra,
        )
    ]


def _lisa(ctx: Context, cfg: CompareConfig, control: bool, rs: int) -> list[Any]:
    from revlens.defenses import Lisa
    from revlens.defenses.lisa import OPTIMIZERS

    if ctx.alignment is None:
        raise ConfigError(
            "lisa needs alignment data: EvalSets(alignment=...) (prompt, answer) pairs"
        )
    pairs = ctx.recipe.example_pairs(len(ctx.alignment), rs) if control else ctx.alignment
    opt = ctx.recipe.optimizer if ctx.recipe.optimizer in OPTIMIZERS else OPTIMIZERS[0]
    return [
        Lisa(
            ctx.tokenizer,
            alignment=pairs,
            rho=cfg.lisa_rho,
            align_steps=cfg.lisa_align_steps,
            user_steps=cfg.lisa_user_steps,
            align_lr=ctx.recipe.lr,
            align_optimizer=opt,
            batch_size=ctx.recipe.batch_size,
            chat=ctx.recipe.chat,
            seed=rs,
        )
    ]


def _blocking(attr: str) -> Any:
    def build(ctx: Context, cfg: CompareConfig, control: bool, rs: int) -> list[Any]:
        d = getattr(ctx, attr)
        return [_activation(ctx, _random_dirs(d, rs, attr) if control else d, "update")]

    return build


BUILDERS = {
    "safelora": _delta("SafeLoRA", n_layers="safelora_n_layers"),
    "safelora_projector": _delta(
        "SafeLoRA", n_layers="safelora_n_layers", projection="projector", k="safelora_k"
    ),
    "asft": _delta("AsFT", lam="asft_lam"),
    "safety_freeze": _freeze,
    "procon": _procon,
    "lisa": _lisa,
    "update": _blocking("v"),
    "update_r": _blocking("r"),
    "subspace": _blocking("subspace"),
    "weights": _delta("WeightBlocker", k="weights_k"),
}


def build_defense(
    name: str, ctx: Context, cfg: CompareConfig, *, control: bool, seed: int
) -> list[Any]:
    """The strategies of one run: defense ``name`` (``control``: its random control) for ``seed``.

    Raises:
        ConfigError: an unknown name; Lisa without alignment data.
    """
    if name not in BUILDERS:
        raise ConfigError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    return BUILDERS[name](ctx, cfg, control, cfg.control_seed * 1_000_003 + seed)
