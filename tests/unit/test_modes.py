"""Modes are chosen in one place: no comparison against a raw mode string outside its registry.

Behaviour must come from the object or table that owns a mode (an intervention kind asks its
:class:`~revlens.causal.kinds.Intervention`, a site kind lives in :mod:`revlens.sites`), not from
``== "steer"`` or ``in ("clamp", "patch")`` sprinkled through the package. These tests read the
package's source and fail on any new such comparison, naming file and line.
"""

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

import revlens
from revlens import modes

PACKAGE = Path(revlens.__file__).parent


def _comparisons(names: tuple[str, ...], *, skip: tuple[str, ...] = ()) -> list[str]:
    """``file:line`` of every comparison against one of ``names`` as a string literal: ``== "x"``,
    ``"x" != ...``, ``"x" in ...`` and ``in (..., "x", ...)`` (also spread over lines)."""
    alt = "|".join(map(re.escape, names))
    lit = rf"""["'](?:{alt})["']"""
    rx = re.compile(
        rf"[!=]=\s*{lit}|{lit}\s*[!=]=|{lit}\s+(?:not\s+)?in\b|\bin\s*[(\[{{][^)\]}}]*?{lit}", re.S
    )
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel.startswith(skip):
            continue
        text = path.read_text(encoding="utf-8")
        for m in rx.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            hits.append(f"{rel}:{line}: {text.splitlines()[line - 1].strip()}")
    return hits


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The pattern catches the forms it forbids (and not a plain argument)."""
    alt = "clamp|patch|steer"
    lit = rf"""["'](?:{alt})["']"""
    rx = re.compile(
        rf"[!=]=\s*{lit}|{lit}\s*[!=]=|{lit}\s+(?:not\s+)?in\b|\bin\s*[(\[{{][^)\]}}]*?{lit}", re.S
    )
    for bad in [
        'kind == "steer"',
        "'steer' != k",
        '"steer" in kinds',
        '"steer" not in kinds',
        'k in ("clamp", "patch")',
        'for k in [\n    "x",\n    "patch"]',
    ]:
        assert rx.search(bad), bad
    for fine in [
        'kinds=("clamp",)',
        'register_intervention("clamp", Clamp)',
        'rank_table("clamp")',
    ]:
        assert not rx.search(fine), fine


# (file, count, why): comparisons that stay, each with its reason
_ALLOWED_KIND_COMPARISONS = {
    # the lab's replication harness selects the clamp rows it tabulates (data, not dispatch);
    # it moves out of the core with the lab refactor of issue 27
    "revlens/lab/replicate_measure.py": 1,
}


def test_no_raw_intervention_kind_comparison_outside_the_registry():
    names = tuple(get_args(modes.InterventionKind))
    hits = _comparisons(names, skip=("revlens/causal/kinds.py",))
    counts: dict[str, int] = {}
    for h in hits:
        counts[h.split(":")[0]] = counts.get(h.split(":")[0], 0) + 1
    unexpected = [
        h
        for h in hits
        if counts[h.split(":")[0]] > _ALLOWED_KIND_COMPARISONS.get(h.split(":")[0], 0)
    ]
    assert not unexpected, (
        "ask the kind object (revlens.causal.kinds.intervention(name).test / .reference) "
        "instead of comparing to its name:\n" + "\n".join(unexpected)
    )


def test_no_raw_site_kind_comparison_outside_sites():
    """Site kinds are resolved in revlens/sites/ (hook names, HF targets); elsewhere they are data."""
    hits = _comparisons(
        tuple(get_args(modes.SiteKind)), skip=("revlens/sites/", "revlens/modes.py")
    )
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("literal", ["Strategy", "RankRule"])
def test_no_raw_comparison_of_the_causal_modes(literal):
    """The sweep's strategy and the rank rule dispatch through tables in their modules."""
    hits = _comparisons(tuple(get_args(getattr(modes, literal))), skip=("revlens/modes.py",))
    assert not hits, "\n".join(hits)


def test_tuples_are_derived_from_the_literals_and_the_registry():
    import revlens.causal.kinds as kinds

    pairs = {
        "SITE_KINDS": "SiteKind",
        "POSITION_RULES": "PositionRuleName",
        "DIRECTION_METHODS": "DirectionMethod",
        "WHICH": "Which",
        "INTERVENTION_POSITIONS": "InterventionPositions",
        "CONTROL_KINDS": "ControlKind",
        "STRATEGIES": "Strategy",
        "BLOCK_METHODS": "BlockMethod",
        "RANK_RULES": "RankRule",
    }
    for tup, lit in pairs.items():
        assert getattr(modes, tup) == get_args(getattr(modes, lit)), tup
    # the built-in kinds are the Literal's; the tuple is the registry's live view
    assert tuple(modes.INTERVENTION_KINDS)[:3] == get_args(modes.InterventionKind)
    assert list(modes.INTERVENTION_KINDS) == [k.name for k in kinds.interventions()]


def test_causal_signatures_use_the_literals():
    """In revlens/causal/, a ``site`` / ``strategy`` / ``rank_rule`` / ``rule`` argument or field is
    typed with its Literal, never ``str`` (``Literal | None`` for a spelled-out config field whose
    ``None`` means the config's value)."""
    typed = {
        "site": "SiteKind",
        "strategy": "Strategy",
        "rank_rule": "RankRule",
        "rule": "RankRule",
    }
    bad = []
    for path in sorted((PACKAGE / "causal").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            items = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                items = [(x.arg, x.annotation) for x in a.posonlyargs + a.args + a.kwonlyargs]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                items = [(node.target.id, node.annotation)]
            for name, ann in items:
                if (
                    name in typed
                    and ann is not None
                    and ast.unparse(ann)
                    not in (
                        typed[name],
                        f"{typed[name]} | None",
                    )
                ):
                    bad.append(
                        f"{path.name}:{getattr(node, 'lineno', '?')}: {name}: {ast.unparse(ann)}"
                    )
    assert not bad, "\n".join(bad)
