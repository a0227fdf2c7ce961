"""``AblationConfig``: the settings of :func:`~revlens.causal.ablation_study`, validated up front."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import no_type_check

from revlens._config import (
    Config,
    as_float,
    as_int,
    as_layers,
    as_ranks,
    as_str_tuple,
    option,
    parse_floats,
    parse_ints,
    parse_steps,
)
from revlens.causal.kinds import interventions
from revlens.errors import ConfigError
from revlens.modes import (
    CONTROL_KINDS,
    DIRECTION_METHODS,
    INTERVENTION_KINDS,
    INTERVENTION_POSITIONS,
    RANK_RULES,
    SITE_KINDS,
    STRATEGIES,
    ControlKind,
    RankRule,
    SiteKind,
    Strategy,
    check_mode,
    check_modes,
)

__all__ = ["AblationConfig"]


def _ranks(value: object) -> tuple[int, ...]:
    ks = as_ranks("ranks", value)
    if not ks:
        raise ConfigError("ranks is empty; give subspace ranks k >= 1 (1 = one direction)")
    return ks


def _steps(value: object) -> str | tuple[int, ...]:
    if value is None or value in ("all", "last", "auto"):
        return "all" if value is None else str(value)
    spec = as_layers(value, "steps")
    if spec == "all":
        return "all"
    bad = [s for s in spec if s < 1]
    if bad:
        raise ConfigError(f"steps: step {bad[0]} must be >= 1 (step 0 is the aligned checkpoint)")
    return spec


def _parse_steps(flag: str, raw: Sequence[str]) -> str | tuple[int, ...]:
    if list(raw) == ["auto"]:
        return "auto"
    return parse_steps(flag, raw)


def _parse_layers(flag: str, raw: Sequence[str]) -> str | tuple[int, ...]:
    if list(raw) in (["auto"], ["all"]):
        return raw[0]
    try:
        return tuple(int(v) for v in raw)
    except ValueError:
        raise ConfigError(f"{flag} takes integers, 'auto' or 'all', got {' '.join(raw)}") from None


@no_type_check  # validates its own fields (typed errors), also under the test type-checker
@dataclass
class AblationConfig(Config):
    """Settings of a layer-wise causal ablation study (saved in ``CausalReport.config``).

    Every field is a plain value (the direction *objects*, position masks, the metric and a model
    are passed to :func:`~revlens.causal.ablation_study` beside the config).

    The defaults answer the question in about a minute on the lab instead of sweeping everything
    (:mod:`revlens.causal.plan`): ``steps="auto"`` (``auto_steps`` log-spaced steps per run, the
    last included), ``layers="auto"`` (the ``auto_layers`` layers that moved furthest along v_rev
    by the last step), v_rev with 16 + 16 controls, clamp. ``steps="all", layers="all",
    kinds=("clamp", "patch")`` is the full sweep of revlens 0.1.
    """

    directions: str = option("mean_diff", "direction method", choices=DIRECTION_METHODS)
    layers: str | tuple[int, ...] = option(
        "auto",
        "layer indices (0 = embeddings), 'all', or 'auto': the --auto-layers layers that moved furthest "
        "along v_rev by the last step",
        parse=_parse_layers,
        nargs="+",
        metavar="L",
    )
    steps: str | tuple[int, ...] = option(
        "auto",
        "fine-tuning steps per run: integers, 'last', 'all' (the full sweep), or 'auto': --auto-steps "
        "log-spaced steps incl. the first and the last",
        parse=_parse_steps,
        nargs="+",
        metavar="STEP",
    )
    auto_layers: int = option(2, "how many layers --layers auto studies")
    auto_steps: int = option(
        3, "how many log-spaced steps per run --steps auto studies (first and last included)"
    )
    runs: tuple[str, ...] = option(
        (), "runs to intervene on (default: every ordinary run)", metavar="RUN"
    )
    kinds: tuple[str, ...] = option(
        ("clamp",),
        "interventions (patch: per-prompt sources from the aligned model; steer needs --alphas)",
        choices=INTERVENTION_KINDS,
        metavar="KIND",
    )
    controls: int = option(16, "random control directions per layer and control kind")
    control_kinds: tuple[ControlKind, ...] = option(
        ("iso", "cov"), "control direction kinds", choices=CONTROL_KINDS, metavar="KIND"
    )
    alphas: tuple[float, ...] = option(
        (),
        "steering strengths (needed with --kinds steer)",
        parse=parse_floats,
        nargs="+",
        metavar="A",
    )
    seed: int = option(0, "seed of the control directions")
    batch_size: int = option(32, "prompts per batch")
    positions: str = option(
        "all", "intervene at every position or the last token", choices=INTERVENTION_POSITIONS
    )
    strategy: Strategy = option(
        "grow", "how interventions share forward passes", choices=STRATEGIES
    )
    max_rows: int = option(2048, "most rows in one forward pass")
    gap_tol: float = option(
        1e-6, "mediation is NaN where |M(θ_t) − M(aligned)| <= gap_tol·max(1, |M|)"
    )
    site: SiteKind = option("resid_post", "site kind", choices=SITE_KINDS)
    ranks: tuple[int, ...] = option(
        (1,),
        "subspace ranks k: clamp / patch the first k rows of the directions "
        "(1 = v_rev alone), each against random k-dim subspaces",
        parse=parse_ints,
        nargs="+",
        metavar="K",
    )
    select_fraction: float = option(
        0.5,
        "with several ranks: share of the probe prompts on which k and the layer "
        "are chosen; the others report them (0: no split)",
    )
    rank_rule: RankRule = option(
        "margin",
        "choose k (and the layer) by mediation minus the controls' p95 ('margin') or "
        "by mediation alone ('max')",
        choices=RANK_RULES,
    )

    def validate(self) -> None:
        """Check every field (typed errors naming the field) before any forward pass."""
        if not isinstance(self.directions, str):
            raise ConfigError(
                f"AblationConfig.directions records a method name; got {self.directions!r}"
            )
        self.layers = (
            "auto"
            if isinstance(self.layers, str) and self.layers == "auto"
            else as_layers(self.layers)
        )
        self.steps = _steps(self.steps)
        self.auto_layers = as_int("auto_layers", self.auto_layers, min=1)
        self.auto_steps = as_int("auto_steps", self.auto_steps, min=1)
        self.runs = as_str_tuple("runs", self.runs)
        self.kinds = tuple(check_modes("kinds", self.kinds, INTERVENTION_KINDS))
        self.control_kinds = tuple(check_modes("control_kinds", self.control_kinds, CONTROL_KINDS))
        self.controls = as_int("controls", self.controls, min=1)
        alphas = (self.alphas,) if isinstance(self.alphas, (int, float)) else tuple(self.alphas)
        self.alphas = tuple(as_float("alphas", a) for a in alphas)
        scaled = [
            k.name for k in interventions(self.kinds, test="sufficiency")
        ]  # run once per alpha
        if scaled and not self.alphas:
            raise ConfigError(
                f"kind {scaled[0]!r} needs alphas, a grid of step sizes along v (e.g. "
                "np.linspace(0, 8, 17); --alphas A [A ...] on the command line)"
            )
        self.seed = as_int("seed", self.seed)
        self.batch_size = as_int("batch_size", self.batch_size, min=1)
        self.max_rows = as_int("max_rows", self.max_rows, min=1)
        self.gap_tol = as_float("gap_tol", self.gap_tol, min=0.0)
        if self.positions != "mask":
            check_mode("positions", self.positions, INTERVENTION_POSITIONS)
        check_mode("strategy", self.strategy, STRATEGIES)
        check_mode("site", self.site, SITE_KINDS)
        self.ranks = _ranks(self.ranks)
        self.select_fraction = as_float("select_fraction", self.select_fraction, min=0.0, max=0.9)
        check_mode("rank_rule", self.rank_rule, RANK_RULES)
