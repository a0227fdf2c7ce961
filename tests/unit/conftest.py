"""Fixtures shared by the unit tests of directions and drift: synthetic HistoryStats with a planted direction."""

from collections.abc import Mapping

import pytest
import torch

from revlens.collect.stats import CheckpointStats, HistoryStats


def build_stats(
    acts: Mapping[str, torch.Tensor],
    *,
    runs: Mapping[str, Mapping[int, str]] | None = None,
    controls: Mapping[str, Mapping[int, str]] | None = None,
    n_bootstrap: int = 20,
    keep: bool = True,
    second: bool = True,
    layers: list[int] | None = None,
) -> HistoryStats:
    """``acts``: name -> ``[prompt, layer, d]``; names ``base*`` are bases, ``aligned`` the anchor."""
    roles: dict[str, tuple] = {}
    for name in acts:
        if name.startswith("base"):
            roles[name] = ("base", None, None)
        elif name == "aligned":
            roles[name] = ("aligned", None, 0)
    starts = {}
    for group, start in (
        (runs or {}, "aligned"),
        (controls or {}, next(n for n in acts if n.startswith("base"))),
    ):
        for run, steps in group.items():
            starts[run] = start
            for step, name in steps.items():
                roles[name] = ("run", run, step)
    cks = {}
    for name, x in acts.items():
        ref = roles[name][0] != "run" or name in starts.values()
        st = CheckpointStats(name, layers or list(range(x.shape[1])))
        st.update(
            x,
            torch.arange(x.shape[0]),
            n_bootstrap=n_bootstrap,
            seed=0,
            second=second and ref,
            keep=keep and roles[name][0] != "run",
        )
        cks[name] = st.finalize()
    first = next(iter(acts.values()))
    return HistoryStats(
        layers=layers or list(range(first.shape[1])),
        site="resid_post",
        position="last",
        d_model=first.shape[2],
        checkpoints=cks,
        roles=roles,
        run_starts=starts,
        controls=list((controls or {}).keys()),
        meta={"n_prompts": first.shape[0]},
    )


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


@pytest.fixture
def planted():
    """aligned ~ N(0, I); base = aligned + 3u + noise, at 2 layers of d=16 (u, stats)."""
    g = torch.Generator().manual_seed(0)
    n, d = 40, 16
    u = unit(torch.randn(d, generator=g, dtype=torch.float64))
    aligned = torch.randn(n, 2, d, generator=g, dtype=torch.float64)
    base = aligned + 3.0 * u + 0.3 * torch.randn(n, 2, d, generator=g, dtype=torch.float64)
    return u, build_stats({"base": base, "aligned": aligned})


@pytest.fixture
def make_stats():
    """The :func:`build_stats` builder."""
    return build_stats


@pytest.fixture
def unit_vec():
    """The :func:`unit` helper."""
    return unit
