"""Build the real track's history: ``revlens lab --track real --out DIR``.

Writes a plain revlens history (``History.load(DIR)`` reads it)::

    history.json  base = base/ (the converted GGUF package model, copied with its package record),
                  aligned = aligned/ (base + the shipped safety adapter, merged),
                  runs {"full-seed<s>": {t: runs/full-seed<s>/step-<t>}, "lora-seed<s>": {...}},
                  controls {"control-full-seed<s0>": {...}}  (full fine-tuning from base),
                  metadata: the plan, the probe sets (declared as data: loader, split, n,
                  provenance), timings
    metrics.json  harm / over-refusal / loss records (:func:`revlens.evaluate.harm.harm_table`)
                  of base, aligned and each run's last checkpoint, when measured

Benign fine-tuning (settings fixed in ``docs/lab.md``, "Real track"): ChatterBot ``train``
question → answer pairs, answer-only loss, batches of :attr:`RealPlan.batch`, AdamW; full
fine-tuning (lr :attr:`RealPlan.full_lr`) and LoRA (the alignment adapter's shape, a fresh adapter on
the merged aligned model, lr :attr:`RealPlan.lora_lr`), one run per seed, log-spaced checkpoints.
A full-fine-tuning checkpoint is a 540 MB float32 ``save_pretrained`` dir; a LoRA one ≈ 5 MB.
"""

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from revlens._io import write_json
from revlens.errors import ConfigError
from revlens.history.spec import write_spec
from revlens.lab.real.data import RealSets, real_sets
from revlens.lab.real.sft import Cycler, deterministic, sft, with_lora

__all__ = [
    "DEVICE_TYPES",
    "RealPlan",
    "adapter_dir",
    "build_real",
    "check_device",
    "materialize_aligned",
    "probe_declarations",
]

log = logging.getLogger(__name__)
SOURCE = "revlens-lab-real"
DEVICE_TYPES = ("cpu", "cuda")
"""The device types :attr:`RealPlan.device` accepts (``cuda`` only where it is available)."""


EVAL_TOKENS = 32
"""Greedy tokens generated per held-out prompt (:func:`~revlens.evaluate.harm.harm_table`'s default;
the shipped adapter's manifest was measured with it)."""


@dataclass(frozen=True)
class RealPlan:
    """The benign fine-tuning runs of the real track (defaults: ``docs/lab.md``)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 16
    checkpoints: tuple[int, ...] = (1, 2, 4, 8, 16)
    modes: tuple[str, ...] = ("full", "lora")
    full_lr: float = 2e-5
    lora_lr: float = 2e-4
    batch: int = 8
    control: bool = True
    threads: int = 1
    eval_limit: int | None = (
        None  # at most this many prompts / pairs per held-out set (None: all; smoke runs)
    )
    eval_tokens: int = EVAL_TOKENS  # greedy tokens per held-out prompt (fewer: smoke runs)
    device: str = "cpu"  # where training and measurement run: "cpu" or "cuda[:i]" (when available)
    workers: int = 2  # runs trained and measured at once, in separate processes (one thread each)

    def __post_init__(self) -> None:
        if (
            self.steps < 1
            or not self.checkpoints
            or max(self.checkpoints) > self.steps
            or min(self.checkpoints) < 1
        ):
            raise ConfigError(
                f"RealPlan: checkpoints {self.checkpoints} must lie in 1..steps={self.steps}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(
                f"RealPlan: seeds must be distinct non-negative integers, got {self.seeds}"
            )
        if not set(self.modes) <= {"full", "lora"} or not self.modes:
            raise ConfigError(f"RealPlan: modes must be among 'full', 'lora'; got {self.modes}")
        if self.batch < 1:
            raise ConfigError(f"RealPlan: batch must be >= 1, got {self.batch}")
        for name in ("eval_tokens", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RealPlan: {name} must be an integer >= 1, got {value!r}")
        check_device(self.device)


def check_device(device: object) -> torch.device:
    """``device`` as a ``torch.device``: ``"cpu"``, or ``"cuda"`` / ``"cuda:i"`` where CUDA exists.

    Raises:
        ConfigError: anything else (named), or a CUDA device on a machine without one.
    """
    try:
        dev = torch.device(device) if isinstance(device, str) else None  # a string (history.json)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ConfigError(f"RealPlan: device must be 'cpu' or 'cuda' / 'cuda:<i>', got {device!r}")
    if dev.type != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"RealPlan: device {device!r} asked for, but no CUDA device is available")
    if dev.type != "cpu" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"RealPlan: device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here"
        )
    return dev


def adapter_dir() -> Path:
    """The shipped alignment adapter (``revlens/lab/assets/real/aligned``)."""
    return Path(__file__).resolve().parents[1] / "assets" / "real" / "aligned"


def _atomic_dir(final: Path, write: Any) -> None:
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def materialize_aligned(
    out: Path, *, converted: Path | None = None, adapter: Path | None = None
) -> Path:
    """Write base + the shipped adapter, merged, as a ``save_pretrained`` dir at ``out``."""
    from transformers import AutoTokenizer

    from revlens.loading.packages import model_package_dir

    converted = (
        Path(converted) if converted is not None else model_package_dir("smollm2-135m-instruct")
    )
    merged = _load_merged(Path(adapter or adapter_dir()), converted)
    tok = AutoTokenizer.from_pretrained(converted)

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    _atomic_dir(Path(out), write)
    return Path(out)


def probe_declarations(sets: RealSets) -> dict[str, Any]:
    """The probe sets as data: loader, split, n and the packages' provenance (nothing copied)."""
    out: dict[str, Any] = {}
    for name, p in sets.held_harmful.items():
        out[f"harmful-heldout-{name}"] = {
            "loader": f"revlens.datasets.{name}",
            "split": "held_out",
            "n": len(p),
            "filter": "standard behaviours" if name == "harmbench" else None,
            "provenance": p.provenance,
        }
    out["harmless-heldout"] = {
        "loader": "revlens.datasets.chatterbot_prompts",
        "split": "held_out",
        "n": len(sets.held_harmless),
        "provenance": sets.held_harmless.provenance,
    }
    out["pairs-heldout"] = {
        "loader": "revlens.datasets.chatterbot",
        "split": "held_out",
        "n": len(sets.held_pairs),
    }
    out["benign-train"] = {
        "loader": "revlens.datasets.chatterbot",
        "split": "train",
        "n": len(sets.benign_pairs),
    }
    return out


def _run(
    start_dir: Path,
    tok: Any,
    sets: RealSets,
    mode: str,
    seed: int,
    plan: RealPlan,
    out_dir: Path,
    progress: bool,
) -> tuple[dict[int, str], list[float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(start_dir, dtype=torch.float32)
    if mode == "lora":
        model = with_lora(model, seed=seed)
    model = model.to(
        plan.device
    )  # after the LoRA init (drawn on the CPU): the same on every device
    pairs = Cycler([(q, a, True) for q, a in sets.benign_pairs])
    saved: dict[int, str] = {}

    def on_step(step: int, loss: float) -> None:
        if step in plan.checkpoints:
            final = out_dir / f"step-{step}"

            def write(tmp: Path) -> None:
                model.save_pretrained(tmp)
                if mode == "lora":
                    (tmp / "README.md").unlink(missing_ok=True)
                else:
                    tok.save_pretrained(tmp)

            _atomic_dir(final, write)
            saved[step] = final.as_posix()

    lr = plan.full_lr if mode == "full" else plan.lora_lr
    losses = sft(
        model,
        tok,
        lambda g: pairs.take(plan.batch, g),
        plan.steps,
        lr=lr,
        seed=seed,
        on_step=on_step,
        progress=progress,
        desc=f"{mode}-seed{seed}",
    )
    return saved, losses


def build_real(
    out: Any,
    plan: RealPlan | None = None,
    *,
    measure: bool = True,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the real track's history into ``out`` (see the module docstring); returns its metadata.

    Raises:
        ConfigError: ``out`` exists and is not empty (without ``force``).
    """
    from transformers import AutoTokenizer

    from revlens.loading.packages import model_package_dir

    plan = plan or RealPlan()
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not force:
        raise ConfigError(f"--out {root} exists and is not empty; pass --force to overwrite")
    root.mkdir(parents=True, exist_ok=True)
    deterministic(plan.threads)
    t0 = time.perf_counter()
    sets = _limited_sets(plan)
    converted = model_package_dir("smollm2-135m-instruct")
    timings: dict[str, float] = {}
    _atomic_dir(root / "base", lambda tmp: shutil.copytree(converted, tmp))
    t = time.perf_counter()
    materialize_aligned(root / "aligned", converted=converted)
    timings["aligned_merge_s"] = round(time.perf_counter() - t, 1)
    tok = AutoTokenizer.from_pretrained(root / "aligned")
    spec: dict[str, Any] = {"runs": {}, "controls": {}}
    meta: dict[str, Any] = {
        "source": SOURCE,
        "plan": asdict(plan),
        "probe_sets": probe_declarations(sets),
        "adapter": str(adapter_dir()),
        "losses": {},
        "timings_s": timings,
        "harm_metric": "harm",
        "default_metric": "harm",
    }
    records: list[dict[str, Any]] = []

    def flush() -> None:
        write_json(root / "metrics.json", records)
        write_spec(
            root,
            base="base",
            aligned="aligned",
            runs=spec["runs"],
            controls=spec["controls"],
            metrics="metrics.json" if records else None,
            metadata=meta,
        )

    def measure_dir(name: str, path: Path) -> None:
        t = time.perf_counter()
        records.extend(_harm_records(name, path, None, tok, sets, plan))
        timings[f"measure {name}_s"] = round(time.perf_counter() - t, 1)
        flush()

    flush()
    jobs = [
        (m, s, "runs", f"{m}-seed{s}", root / "aligned") for m in plan.modes for s in plan.seeds
    ]
    if plan.control:
        s = plan.seeds[0]
        jobs.append(("full", s, "controls", f"control-full-seed{s}", root / "base"))
    for done in _map_jobs(jobs, root, plan, measure, progress):
        key, name = done["key"], done["name"]
        spec[key][name] = {
            str(k): Path(v).relative_to(root).as_posix() for k, v in sorted(done["saved"].items())
        }
        meta["losses"][name] = [round(x, 4) for x in done["losses"]]
        records.extend(done["records"])
        timings.update(done["timings"])
        flush()
    if measure:  # base and aligned last: the adapter's manifest holds them (made with these sets)
        _measure_start(records, plan, lambda name: measure_dir(name, root / name))
        flush()
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    flush()
    return meta


def _harm_records(
    name: str, path: Path, start: Path | None, tok: Any, sets: RealSets, plan: RealPlan
) -> list[dict[str, Any]]:
    """:func:`~revlens.evaluate.harm.harm_table` records of one checkpoint (a LoRA one merged on ``start``)."""
    from revlens.evaluate.harm import harm_table

    model = _load_merged(path, start).to(plan.device)
    table = harm_table(
        model,
        tok,
        sets.held_harmful,
        sets.held_harmless,
        sets.held_pairs,
        checkpoint=name,
        max_new_tokens=plan.eval_tokens,
    )
    return list(json.loads(table.to_json(orient="records")))


def _job(
    job: tuple[str, int, str, str, Path], root: Path, plan: RealPlan, measure: bool, progress: bool
) -> dict[str, Any]:
    """One benign run: train (checkpoints written atomically), then harm at its last step. Runs in
    this process or in a worker (it reloads the tokenizer and the sets: nothing unpicklable crosses)."""
    from transformers import AutoTokenizer

    mode, seed, key, name, start = job
    deterministic(plan.threads)
    tok = AutoTokenizer.from_pretrained(root / "aligned")
    sets = _limited_sets(plan)
    t = time.perf_counter()
    saved, losses = _run(start, tok, sets, mode, seed, plan, root / key / name, progress)
    timings = {f"train {name}_s": round(time.perf_counter() - t, 1)}
    records: list[dict[str, Any]] = []
    if measure:
        last = max(saved)
        t = time.perf_counter()
        lora_start = start if mode == "lora" else None
        records = _harm_records(
            f"{name}/step-{last}", Path(saved[last]), lora_start, tok, sets, plan
        )
        timings[f"measure {name}/step-{last}_s"] = round(time.perf_counter() - t, 1)
    return {
        "key": key,
        "name": name,
        "saved": saved,
        "losses": losses,
        "records": records,
        "timings": timings,
    }


def _map_jobs(jobs: list[Any], root: Path, plan: RealPlan, measure: bool, progress: bool) -> Any:
    """:func:`_job` over ``jobs``, yielded in job order: in this process with ``plan.workers == 1``,
    else in ``plan.workers`` spawned processes (one torch thread each; the results do not depend on
    the worker count: every run is seeded by its own seed)."""
    if plan.workers == 1 or len(jobs) == 1:
        for job in jobs:
            yield _job(job, root, plan, measure, progress)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    with ProcessPoolExecutor(plan.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_job, job, root, plan, measure, False) for job in jobs]
        bar = tqdm(
            total=len(jobs), desc=f"real runs ({plan.workers} workers)", disable=not progress
        )
        for f in futures:
            yield f.result()
            bar.update(1)
        bar.close()


def _limited_sets(plan: RealPlan) -> Any:
    """The real track's sets, the held-out ones cut to ``plan.eval_limit`` prompts (smoke runs)."""
    sets = real_sets()
    if plan.eval_limit is not None:
        n = plan.eval_limit
        sets.held_harmful = {
            k: v.subset(range(min(n, len(v)))) for k, v in sets.held_harmful.items()
        }
        sets.held_harmless = sets.held_harmless.subset(range(min(n, len(sets.held_harmless))))
        sets.held_pairs = sets.held_pairs[:n]
    return sets


def _load_merged(path: Path, start: Path | None) -> Any:
    """A checkpoint dir as a float32 HF model in eval mode; with ``start``, ``path`` is a LoRA
    adapter on ``start``, merged."""
    from transformers import AutoModelForCausalLM

    if start is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()


def _measure_start(records: list[dict[str, Any]], plan: RealPlan, measure: Any) -> None:
    """Base and aligned: the shipped manifest's records (the same sets, settings and merged weights,
    measured when the adapter was made) or, without them / with ``eval_limit`` or other
    ``eval_tokens``, ``measure(name)``."""
    as_shipped = plan.eval_limit is None and plan.eval_tokens == EVAL_TOKENS
    shipped = _manifest_records() if as_shipped else {}
    for name in ("base", "aligned"):
        if name in shipped:
            records.extend({**r, "measured": "adapter manifest"} for r in shipped[name])
        else:
            measure(name)


def _manifest_records() -> dict[str, list[dict[str, Any]]]:
    """The shipped adapter's held-out records of base and aligned (``{}`` if absent)."""
    path = adapter_dir().parent / "manifest.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("held_out") or {})


def harm_frame(root: Any) -> pd.DataFrame:
    """The ``metrics.json`` records of a real-track dir as a DataFrame."""
    return pd.DataFrame(json.loads((Path(root) / "metrics.json").read_text()))
