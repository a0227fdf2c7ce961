"""Position rules: which token positions of each prompt a statistic reads (see :mod:`revlens.probes`)."""

from typing import Any, no_type_check

import torch
from jaxtyping import Bool
from torch import Tensor

from revlens.errors import ProbeError, SiteError
from revlens.modes import POSITION_RULES, PositionRuleName

__all__ = ["PositionRule", "check_position", "parse_position", "position_name", "position_weights"]

PositionRule = PositionRuleName | str | Bool[Tensor, "prompt pos"] | tuple[str, int | None]
"""``"last"``, ``"mean"``, ``"post_instruction"`` / ``"post_instruction:k"`` / ``("post_instruction", k)``,
or a bool mask ``[n_prompts, n_pos]`` (validated by :func:`parse_position`)."""


@no_type_check  # validates its own arguments (typed errors)
def parse_position(position: PositionRule) -> Any:
    """A position rule in canonical form: ``"last"``, ``"mean"``, a bool mask, or
    ``("post_instruction", k | None)`` (also written ``"post_instruction"`` / ``"post_instruction:k"``).

    Raises:
        SiteError: anything else (lists the valid rules).
    """
    valid = "'last', 'mean', ('post_instruction', k), 'post_instruction[:k]' or a bool mask tensor"
    if isinstance(position, Tensor):
        return position
    if isinstance(position, str) and position.startswith("post_instruction"):
        rest = position[len("post_instruction") :]
        if rest == "":
            return ("post_instruction", None)
        if rest.startswith(":") and rest[1:].isdigit() and int(rest[1:]) >= 1:
            return ("post_instruction", int(rest[1:]))
        raise SiteError(f"unknown position rule {position!r}; valid: {valid}")
    if isinstance(position, str) and position in POSITION_RULES:
        return position
    if (
        isinstance(position, (tuple, list))
        and len(position) == 2
        and position[0] == "post_instruction"
    ):
        k = position[1]
        if k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            return ("post_instruction", k)
    raise SiteError(f"unknown position rule {position!r}; valid: {valid}")


@no_type_check  # validates its own argument (typed errors)
def position_name(position: PositionRule) -> str:
    """The rule as a string (``"last"``, ``"mask"``, ``"post_instruction:3"``...)."""
    if isinstance(position, Tensor):
        return "mask"
    if isinstance(position, tuple):
        return "post_instruction" if position[1] is None else f"post_instruction:{position[1]}"
    return str(position)


@no_type_check  # validates its own argument (typed errors)
def check_position(position: PositionRule, n: int, chat: bool) -> Any:
    """The rule in canonical form, checked against ``n`` prompts (chat or not)."""
    position = parse_position(position)
    if isinstance(position, Tensor):
        if position.dtype != torch.bool or position.ndim != 2 or position.shape[0] != n:
            raise SiteError(
                f"a position mask must be a bool tensor [n_prompts={n}, n_pos]; "
                f"got {position.dtype} {tuple(position.shape)}"
            )
    elif isinstance(position, tuple) and not chat:
        raise SiteError(
            "position ('post_instruction', k) needs chat probes (Probes.from_chat, or JSONL lines "
            "with 'messages' / 'prompt'): only a chat template says where the instruction ends"
        )
    return position


def position_weights(
    position: PositionRule, lengths: Tensor, n_post: Tensor | None
) -> dict[str, Tensor]:
    """Position label -> weights ``[prompt, pos]`` (rows sum to 1) of a rule for prompts of ``lengths``
    (``n_post``: post-instruction tokens per prompt, chat probes)."""
    n, width = len(lengths), int(lengths.max())
    real = torch.arange(width)[None, :] < lengths[:, None]
    rows = torch.arange(n)
    if isinstance(position, Tensor):
        mask = torch.zeros_like(real)
        w = min(width, position.shape[1])
        mask[:, :w] = position[:, :w]
        mask &= real
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise SiteError(f"position mask selects no real token of prompt {empty[0]}")
        out = {"mask": mask.to(torch.float64)}
    elif isinstance(position, tuple):
        out = {}
        for j in range(_post_k(position[1], n_post), 0, -1):
            w = torch.zeros(n, width, dtype=torch.float64)
            w[rows, lengths - j] = 1.0
            out[str(-j)] = w
    elif position == "last":
        w = torch.zeros(n, width, dtype=torch.float64)
        w[rows, lengths - 1] = 1.0
        out = {"last": w}
    else:
        out = {"mean": real.to(torch.float64)}
    return {k: v / v.sum(dim=1, keepdim=True) for k, v in out.items()}


def _post_k(k: int | None, n_post: Tensor | None) -> int:
    """The number of post-instruction positions read (validated against every prompt)."""
    assert n_post is not None  # chat probes only (checked on construction)
    unknown = (n_post < 0).nonzero().flatten().tolist()
    if unknown:
        raise ProbeError(
            f"prompt {unknown[0]}: the user's text was not found in the rendered template, so where "
            "the instruction ends is unknown; use position='last' or a mask"
        )
    fewest = int(n_post.min())
    if fewest < 1:
        raise ProbeError(
            f"prompt {int(n_post.argmin())}: the template writes no token after the user's text "
            "(no post-instruction position)"
        )
    if k is None:
        return fewest
    if k > fewest:
        raise ProbeError(
            f"position ('post_instruction', {k}): prompt {int(n_post.argmin())} has only {fewest} "
            f"post-instruction template token(s); use k <= {fewest}"
        )
    return k
