"""Run every benchmark (``make bench``); each writes ``benchmarks/results/<name>.json``.

    python benchmarks/run_all.py [--quick]
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ("bench_collect.py", "bench_memory.py", "bench_causal.py", "bench_training.py", "bench_weights.py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings for every benchmark")
    args = ap.parse_args()
    failed = []
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        cmd = [sys.executable, str(HERE / script), *(["--quick"] if args.quick else [])]
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(script)
    print(f"results in {HERE / 'results'}; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
