"""The test environment's lock: every package revlens and its extras need, at the version installed.

``python .ci/lock.py --out constraints.txt`` (``make lock``) writes ``name==version`` for the whole
dependency closure of ``pyproject.toml`` (dependencies and every optional extra), read from the
packages installed in the running interpreter's environment, so ``pip install -c constraints.txt
-e ".[dev]"`` (``make install``, ``.ci/run``) installs what the suite last passed with. The library
itself keeps its ranges in ``pyproject.toml``. Rules:

- revlens itself is left out; torch is written without its local build tag (``2.13.0+cpu`` ->
  ``torch==2.13.0``, which the CPU build satisfies; the Makefile installs the CPU build first);
- a package installed from a local file or a URL (not from an index) is listed as a comment only;
- a requirement that is not installed is an error (install it first, then lock).

``python .ci/lock.py --compare constraints.txt`` (``make test-latest``) prints what the running
environment has that moved against the lock (newer, older, added, gone).
"""

import argparse
import datetime
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _top_level() -> list[tuple[Requirement, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [(Requirement(r), "") for r in project.get("dependencies", [])]
    for extra, items in project.get("optional-dependencies", {}).items():
        reqs += [(Requirement(r), extra) for r in items]
    return reqs


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure() -> tuple[dict[str, metadata.Distribution], list[str]]:
    """Installed distributions of the dependency closure (canonical name -> dist), and the
    requirements that are not installed."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    missing: list[str] = []
    todo = [req for req, extra in _top_level() if _applies(req, {extra} if extra else set())]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if name == "revlens" or key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        found[name] = dist
        for r in dist.requires or []:
            sub = Requirement(r)
            if _applies(sub, set(req.extras)):
                todo.append(sub)
    return found, missing


def _from_file(dist: metadata.Distribution) -> str | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    url = json.loads(text).get("url", "")
    return url or None


def pins() -> tuple[dict[str, str], list[str], list[str]]:
    """``name -> version`` to pin, comment lines (local installs), missing requirements."""
    found, missing = closure()
    out, notes = {}, []
    for name, dist in sorted(found.items()):
        version = dist.version
        if name == "torch":
            version = version.split("+")[0]
        url = _from_file(dist)
        if url is not None:  # a local wheel or a URL: no index serves it under this name
            notes.append(f"# {name}=={version} installed from {url} (not pinned)")
            continue
        out[name] = version
    return out, notes, missing


def write(out: Path) -> None:
    versions, notes, missing = pins()
    if missing:
        sys.exit(f"lock: not installed, install them first: {', '.join(sorted(missing))}")
    head = [
        "# The test environment's lock (constraints, not requirements): `make lock` regenerates it",
        "# from the packages installed in .venv (.ci/lock.py); pyproject.toml keeps the library's ranges.",
        f"# {datetime.date.today().isoformat()}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.machine()}; {len(versions)} packages (revlens' dependencies and every extra, closed).",
    ]
    body = [f"{n}=={v}" for n, v in sorted(versions.items())]
    out.write_text("\n".join(head + notes + body) + "\n")
    print(f"lock: wrote {out} ({len(versions)} packages)")


def read(path: Path) -> dict[str, str]:
    pinned = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if m:
            pinned[canonicalize_name(m.group(1))] = m.group(2)
    return pinned


def compare(path: Path) -> int:
    from packaging.version import Version

    locked, (now, _, missing) = read(path), pins()
    moved = []
    for name in sorted(set(locked) | set(now)):
        a, b = locked.get(name), now.get(name)
        if a == b:
            continue
        if a is None:
            moved.append(f"  + {name} {b} (not in the lock)")
        elif b is None:
            moved.append(f"  - {name} {a} (locked, not installed now)")
        else:
            moved.append(f"  {'↑' if Version(b) > Version(a) else '↓'} {name} {a} -> {b}")
    print(
        f"test-latest: {len(moved)} package(s) moved against {path.name}"
        + (":" if moved else " (the newest releases are the locked ones)")
    )
    print("\n".join(moved))
    if missing:
        print(f"test-latest: not installed: {', '.join(missing)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=Path, help="write the lock here")
    g.add_argument("--compare", type=Path, help="print what moved against this lock")
    args = p.parse_args()
    if args.out is not None:
        write(args.out)
        return 0
    return compare(args.compare)


if __name__ == "__main__":
    sys.exit(main())
