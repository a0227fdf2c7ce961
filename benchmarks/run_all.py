"""Run every benchmark (``make bench``), then refresh the benchmark table of the docs site.

Every ``benchmarks/bench_*.py`` is run in its own process (sorted by name; ``--only`` picks some).
Each writes ``benchmarks/results/<name>.json``; a result that carries ``"readme"`` rows (a list of
``{"benchmark", "measured", "target"}``) is shown in the table between the
``<!-- bench-table:start -->`` / ``<!-- bench-table:end -->`` markers of
``docs/results/benchmarks.md`` (the README links there), under a
line with the command, the date and the machine (CPU count, load average before and after: the
numbers are side-by-side ratios, but say when the machine was shared).

Adding a benchmark: write ``benchmarks/bench_<name>.py`` that saves its JSON with
``_common.write(name, payload)`` (or any ``results/*.json``) with ``payload["readme"]`` rows.
Nothing here needs to change.

    python benchmarks/run_all.py [--quick] [--only collect references] [--table-only]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "docs" / "results" / "benchmarks.md"  # the table's page (was README.md)
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
NOT_BENCHMARKS = {"gpu_check.py"}  # run on demand (make gpu-check), not by make bench


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(p for p in HERE.glob("bench_*.py") if p.name not in NOT_BENCHMARKS)
    if only:
        found = [p for p in found if p.stem.removeprefix("bench_") in only or p.stem in only]
    return found


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def table(results: Path, header: str) -> tuple[str, list[str]]:
    """The markdown table of every result's ``readme`` rows, and the results without rows."""
    rows, missing = [], []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            missing.append(path.name)
            continue
        entries = data.get("readme") if isinstance(data, dict) else None
        if not entries:
            missing.append(path.name)
            continue
        for r in entries:
            rows.append(f"| {r['benchmark']} | {r['measured']} | {r['target']} |")
    body = "\n".join([header, "", "| benchmark | measured | target |", "|---|---|---|", *rows])
    return body, missing


def refresh_readme(body: str) -> bool:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{README} has no {START} ... {END} markers: table not written")
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{body}\n{END}{tail}", encoding="utf-8")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings for every benchmark")
    ap.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these (e.g. collect references)"
    )
    ap.add_argument(
        "--table-only", action="store_true", help="only rebuild the README table from results/"
    )
    args = ap.parse_args()
    load_before, t0, failed = _load(), time.time(), []
    if not args.table_only:
        for script in scripts(args.only):
            print(f"== {script.name}", flush=True)
            cmd = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
            if subprocess.run(cmd, check=False).returncode != 0:
                failed.append(script.name)
    minutes = (time.time() - t0) / 60
    header = (
        f"Command: `make bench`{' (--quick)' if args.quick else ''} · {time.strftime('%Y-%m-%d')} · "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} · load average "
        f"{load_before} before, {_load()} after ({minutes:.0f} min) · ratios measured side by side"
    )
    body, missing = table(HERE / "results", header)
    if refresh_readme(body):
        print(f"README benchmark table refreshed ({len(body.splitlines()) - 4} rows)")
    if missing:
        print(f"results without README rows: {', '.join(missing)}")
    print(f"results in {HERE / 'results'}; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
