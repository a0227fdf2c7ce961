"""A model's training history: base → aligned → fine-tuning runs, as one object.

Roles (DESIGN §2): ``base`` (one or more pre-alignment checkpoints, the witness of the dominant
manifold), ``aligned`` (the anchor, fine-tuning step 0) and **runs** of fine-tuning steps
``t = 1..T``. A *control* run is a run whose drift is measured from the base model instead of
the aligned one (e.g. the same benign fine-tune started from base).

Example:
    >>> h = History.from_dirs(base="ckpt/base", aligned="ckpt/aligned",
    ...                       runs={"seed0": {1: "ckpt/s0/1", 5: "ckpt/s0/5"}})  # doctest: +SKIP
    >>> h                                                                            # doctest: +SKIP
    History(4 checkpoints: base ×1, aligned, runs seed0 [1, 5])
"""

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import torch
from torch import Tensor

from revlens.errors import CheckpointError, HistoryError, ShapeMismatchError
from revlens.model import LensModel, find_weight_files, load_state_dict

__all__ = ["Checkpoint", "History", "HubRef", "Run"]

Role = Literal["base", "aligned", "run"]
Source = Union[str, "os.PathLike[str]", Mapping[str, Tensor], torch.nn.Module, "HubRef"]


@dataclass(frozen=True)
class HubRef:
    """A checkpoint on the Hugging Face hub: a repo at a revision (e.g. Pythia's ``step1000``).

    ``repo_id`` may also be a local directory mirroring the hub repo, with one sub-directory per
    revision (how hub checkpoints are tested here, without a network).
    """

    repo_id: str
    revision: str
    cache_dir: str | None = None

    def resolve(self) -> Path:
        """A local ``save_pretrained`` dir for this revision (downloads if needed)."""
        local = Path(self.repo_id)
        if local.is_dir():
            path = local / self.revision
            if not path.is_dir():
                raise CheckpointError(f"local hub mirror {local} has no revision dir {self.revision!r}")
            return path
        try:
            from huggingface_hub import snapshot_download

            return Path(
                snapshot_download(
                    self.repo_id,
                    revision=self.revision,
                    cache_dir=self.cache_dir,
                    allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"],
                )
            )
        except Exception as exc:  # network, auth, missing revision: say which
            raise CheckpointError(
                f"cannot fetch {self.repo_id}@{self.revision} from the hub: {exc}"
            ) from exc


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensor_digest(sd: Mapping[str, Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(sd):
        t = sd[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One checkpoint of a history.

    Attributes:
        name: unique name, e.g. ``"base"``, ``"aligned"``, ``"seed0/step-5"``.
        role: ``"base"``, ``"aligned"`` or ``"run"``.
        run: run name for a run checkpoint.
        step: fine-tuning step (0 for aligned).
        source: a dir, a weights file, an in-memory state dict / module, or a hub reference.
    """

    name: str
    role: Role
    source: Any
    run: str | None = None
    step: int | None = None

    def local_path(self) -> Path | None:
        """Path of a file/dir source (a hub source is resolved, i.e. downloaded)."""
        if isinstance(self.source, HubRef):
            return self.source.resolve()
        if isinstance(self.source, (str, os.PathLike)):
            return Path(self.source)
        return None

    def state_dict(self) -> dict[str, Tensor]:
        """The checkpoint's weights (Hugging Face parameter names)."""
        path = self.local_path()
        try:
            return load_state_dict(path if path is not None else self.source)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {self.name}: {exc}") from exc

    def fingerprint(self) -> str:
        """Content hash of the weights (file bytes for files, tensor bytes in memory)."""
        path = self.local_path()
        if path is None:
            return _tensor_digest(self.state_dict())
        files = find_weight_files(path) if path.is_dir() else [path]
        if not files:
            raise CheckpointError(f"checkpoint {self.name}: {path} holds no weights")
        return hashlib.blake2b("".join(_file_digest(f) for f in files).encode(), digest_size=16).hexdigest()

    def signature(self) -> dict[str, tuple[int, ...]] | None:
        """Parameter name -> shape read from safetensors headers (``None`` if not cheap)."""
        path = self.local_path()
        if path is None:
            return None
        files = find_weight_files(path) if path.is_dir() else [path]
        if not files or not all(f.suffix == ".safetensors" for f in files):
            return None
        from safetensors import safe_open

        sig: dict[str, tuple[int, ...]] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    sig[key] = tuple(handle.get_slice(key).get_shape())
        return sig

    def __repr__(self) -> str:
        src = self.source if isinstance(self.source, (str, os.PathLike, HubRef)) else type(self.source).__name__
        return f"Checkpoint({self.name!r}, role={self.role!r}, step={self.step}, source={src!s})"


@dataclass
class Run:
    """A fine-tuning run: steps ``t >= 1`` and the checkpoint its drift is measured from.

    Attributes:
        name: run name (e.g. a seed).
        steps: step -> checkpoint, sorted by step.
        start: name of the checkpoint the run started from (``"aligned"``, or a base for controls).
        control: ``True`` for control runs (e.g. fine-tuned from base).
    """

    name: str
    steps: dict[int, Checkpoint]
    start: str = "aligned"
    control: bool = False

    def __repr__(self) -> str:
        s = list(self.steps)
        shown = s if len(s) <= 6 else [*s[:3], "…", *s[-2:]]
        return f"Run({self.name!r}, steps={shown}, start={self.start!r}{', control' if self.control else ''})"


def _as_step(key: Any, run: str) -> int:
    try:
        step = int(key)
    except (TypeError, ValueError):
        raise HistoryError(f"run {run!r}: step {key!r} is not an integer") from None
    if isinstance(key, float) and key != step:
        raise HistoryError(f"run {run!r}: step {key!r} is not an integer")
    if step < 1:
        raise HistoryError(f"run {run!r}: step {step} must be >= 1 (step 0 is the aligned checkpoint)")
    return step


def _check_source(src: Any, what: str) -> Any:
    if isinstance(src, (Mapping, torch.nn.Module, HubRef)):
        return src
    if not isinstance(src, (str, os.PathLike)):
        raise HistoryError(f"{what}: {type(src).__name__} is not a path, state dict, module or hub ref")
    path = Path(src)
    if not path.exists():
        raise CheckpointError(f"{what}: {path} does not exist")
    if path.is_dir() and not find_weight_files(path):
        raise CheckpointError(f"{what}: dir {path} holds no weights (model.safetensors / pytorch_model.bin)")
    return path


_TRAINER_RE = re.compile(r"^checkpoint-(\d+)$")


def _trainer_steps(directory: Any, run: str) -> dict[int, Path]:
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"run {run!r}: Trainer output dir {path} does not exist")
    found = {}
    for child in path.iterdir():
        m = _TRAINER_RE.match(child.name)
        if m and child.is_dir():
            found[int(m.group(1))] = child
    if not found:
        raise CheckpointError(f"run {run!r}: no checkpoint-N folders in {path}")
    return dict(sorted(found.items()))


class History:
    """Named checkpoints of one architecture with roles base / aligned / runs.

    Iteration order is defined: bases (in the order given), aligned, then runs in the order given,
    each by increasing step. ``len(history)`` counts checkpoints.
    """

    def __init__(
        self,
        *,
        base: list[Checkpoint],
        aligned: Checkpoint,
        runs: Mapping[str, Run],
        architecture: Any = None,
        tokenizer: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not base:
            raise HistoryError("a history needs at least one base checkpoint (the pre-alignment witness)")
        if aligned is None:
            raise HistoryError("a history needs an aligned checkpoint (fine-tuning step 0)")
        self.base = list(base)
        self.aligned = aligned
        self.runs: dict[str, Run] = dict(runs)
        self.architecture = architecture
        self._tokenizer = tokenizer
        self.metadata: dict[str, Any] = dict(metadata or {})
        names = [c.name for c in self]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise HistoryError(f"checkpoint names must be unique; duplicated: {sorted(dup)}")
        valid_starts = {c.name for c in [*self.base, self.aligned]}
        for run in self.runs.values():
            if run.start not in valid_starts:
                raise HistoryError(f"run {run.name!r} starts from {run.start!r}; expected one of {sorted(valid_starts)}")
        self._validate_signatures()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def _build(
        cls,
        base: Any,
        aligned: Any,
        runs: Mapping[str, Mapping[Any, Any]] | None,
        controls: Mapping[str, Mapping[Any, Any]] | None,
        *,
        architecture: Any = None,
        tokenizer: Any = None,
        metadata: Mapping[str, Any] | None = None,
        wrap: Any = None,
    ) -> "History":
        wrap = wrap or (lambda s, what: _check_source(s, what))
        if base is None or (isinstance(base, (list, tuple, Mapping)) and len(base) == 0):
            raise HistoryError("a history needs at least one base checkpoint")
        if aligned is None:
            raise HistoryError("a history needs an aligned checkpoint")
        if isinstance(base, Mapping) and not _looks_like_state_dict(base):
            base_items = list(base.items())
        elif isinstance(base, (list, tuple)):
            base_items = [(f"base{i}" if len(base) > 1 else "base", b) for i, b in enumerate(base)]
        else:
            base_items = [("base", base)]
        bases = [Checkpoint(str(n), "base", wrap(s, f"base {n}"), step=None) for n, s in base_items]
        aligned_ck = Checkpoint("aligned", "aligned", wrap(aligned, "aligned"), step=0)
        run_objs: dict[str, Run] = {}
        for group, start, is_control in ((runs or {}, "aligned", False), (controls or {}, bases[0].name, True)):
            for run_name, steps in group.items():
                run_name = str(run_name)
                if run_name in run_objs:
                    raise HistoryError(f"run name {run_name!r} is used twice")
                if not isinstance(steps, Mapping) or not steps:
                    raise HistoryError(f"run {run_name!r} has no steps; expected a mapping step -> checkpoint")
                parsed: dict[int, Checkpoint] = {}
                for key, src in steps.items():
                    step = _as_step(key, run_name)
                    if step in parsed:
                        raise HistoryError(f"run {run_name!r}: step {step} appears twice")
                    parsed[step] = Checkpoint(
                        f"{run_name}/step-{step}", "run", wrap(src, f"run {run_name} step {step}"),
                        run=run_name, step=step,
                    )
                run_objs[run_name] = Run(run_name, dict(sorted(parsed.items())), start=start, control=is_control)
        arch = architecture
        if arch is None:
            for ck in [aligned_ck, *bases]:
                p = ck.source if isinstance(ck.source, Path) else None
                if p is not None and p.is_dir() and (p / "config.json").is_file():
                    arch = p
                    break
        return cls(base=bases, aligned=aligned_ck, runs=run_objs, architecture=arch,
                   tokenizer=tokenizer, metadata=metadata)

    @classmethod
    def from_dirs(
        cls,
        *,
        base: Any,
        aligned: Any,
        runs: Mapping[str, Mapping[Any, Any]] | None = None,
        controls: Mapping[str, Mapping[Any, Any]] | None = None,
        tokenizer: Any = None,
    ) -> "History":
        """From ``save_pretrained`` dirs.

        Args:
            base: one dir, a list of dirs, or a mapping name -> dir.
            aligned: the aligned dir (also the architecture: config + tokenizer are read there).
            runs: run name -> {step: dir}.
            controls: like ``runs``, but fine-tuned from the (first) base model.
            tokenizer: a tokenizer or path, if the dirs hold none.
        """
        return cls._build(base, aligned, runs, controls, tokenizer=tokenizer)

    @classmethod
    def from_trainer_output(
        cls,
        *,
        base: Any,
        aligned: Any,
        runs: Mapping[str, Any],
        controls: Mapping[str, Any] | None = None,
        tokenizer: Any = None,
    ) -> "History":
        """From Hugging Face ``Trainer`` output dirs: every ``checkpoint-N`` folder is step N."""
        as_steps = {name: _trainer_steps(d, name) for name, d in runs.items()}
        ctl = {name: _trainer_steps(d, name) for name, d in (controls or {}).items()}
        return cls._build(base, aligned, as_steps, ctl, tokenizer=tokenizer)

    @classmethod
    def from_state_dicts(
        cls,
        architecture_dir: Any,
        *,
        base: Any,
        aligned: Any,
        runs: Mapping[str, Mapping[Any, Any]] | None = None,
        controls: Mapping[str, Mapping[Any, Any]] | None = None,
        tokenizer: Any = None,
    ) -> "History":
        """From weight files (``.safetensors``, ``.pt``/``.bin`` read with ``weights_only=True``)
        or in-memory state dicts / modules, on the architecture of ``architecture_dir``
        (a ``save_pretrained`` dir with config + tokenizer)."""
        arch = Path(architecture_dir)
        if not (arch / "config.json").is_file():
            raise CheckpointError(f"architecture dir {arch} has no config.json")
        return cls._build(base, aligned, runs, controls, architecture=arch, tokenizer=tokenizer)

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        *,
        base_revision: Any,
        aligned_revision: str,
        runs: Mapping[str, Mapping[Any, str]] | None = None,
        aligned_repo: str | None = None,
        cache_dir: str | None = None,
    ) -> "History":
        """From hub revisions, e.g. Pythia's ``stepN`` branches.

        Args:
            repo_id: hub repo (or a local dir with one sub-dir per revision).
            base_revision: a revision or list of revisions of ``repo_id``.
            aligned_revision: revision of ``aligned_repo`` (default ``repo_id``).
            runs: run name -> {step: revision} (of ``aligned_repo``).
        """
        arepo = aligned_repo or repo_id
        revs = base_revision if isinstance(base_revision, (list, tuple)) else [base_revision]
        base = {f"base@{r}": HubRef(repo_id, str(r), cache_dir) for r in revs}
        runs_ref = {n: {s: HubRef(arepo, str(r), cache_dir) for s, r in st.items()} for n, st in (runs or {}).items()}
        aligned = HubRef(arepo, aligned_revision, cache_dir)
        hist = cls._build(base, aligned, runs_ref, None)
        return hist

    @classmethod
    def from_lab(cls, directory: Any, *, pair: str | None = None) -> "History":
        """From a reversion-lab dir written by ``revlens lab`` (reads ``manifest.json``)."""
        root = Path(directory)
        if (root / "lab.json").is_file() and not (root / "manifest.json").is_file():
            pairs = json.loads((root / "lab.json").read_text())["pairs"]
            chosen = pair or pairs[0]
            if chosen not in pairs:
                raise HistoryError(f"lab set {root} has no pair {chosen!r}; pairs: {pairs}")
            root = root / chosen
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise CheckpointError(f"{root} is not a revlens lab dir (no manifest.json)")
        man = json.loads(manifest_path.read_text())
        if man.get("format") != "revlens-lab":
            raise HistoryError(f"{manifest_path} is not a revlens lab manifest (format={man.get('format')!r})")

        def rel(p: str) -> Path:
            return root / p

        base = {n: rel(p) for n, p in man["base"].items()}
        aligned = rel(next(iter(man["aligned"].values())))
        runs = {n: {int(s): rel(p) for s, p in steps.items()} for n, steps in man.get("runs", {}).items() if steps}
        controls = {n: {int(s): rel(p) for s, p in steps.items()} for n, steps in man.get("controls", {}).items() if steps}
        hist = cls._build(base, aligned, runs, controls, metadata={"lab_dir": str(root), "lab": man})
        for group in ("blocked",):
            for n, steps in man.get(group, {}).items():
                if steps:
                    parsed = {int(s): Checkpoint(f"{n}/step-{int(s)}", "run", _check_source(rel(p), n), run=n, step=int(s))
                              for s, p in steps.items()}
                    hist.runs[n] = Run(n, dict(sorted(parsed.items())), start="aligned")
        return hist

    @classmethod
    def load(cls, spec: Any) -> "History":
        """Whatever a constructor accepts: a ``History``, a lab dir, or a mapping of dirs with
        keys ``base``, ``aligned``, ``runs`` (and optionally ``controls``)."""
        if isinstance(spec, History):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dirs(**spec)
        path = Path(spec)
        if (path / "manifest.json").is_file() or (path / "lab.json").is_file():
            return cls.from_lab(path)
        raise HistoryError(
            f"cannot read a history from {spec!r}: expected a History, a lab dir (manifest.json) "
            "or a mapping with base/aligned/runs"
        )

    # ------------------------------------------------------------------ access
    def __iter__(self) -> Iterator[Checkpoint]:
        yield from self.base
        yield self.aligned
        for run in self.runs.values():
            yield from run.steps.values()

    def __len__(self) -> int:
        return len(self.base) + 1 + sum(len(r.steps) for r in self.runs.values())

    def __getitem__(self, name: str) -> Checkpoint:
        for ck in self:
            if ck.name == name:
                return ck
        raise KeyError(f"no checkpoint {name!r}; names: {[c.name for c in self]}")

    @property
    def lab_dir(self) -> Path | None:
        """The lab dir this history came from, if any."""
        d = self.metadata.get("lab_dir")
        return Path(d) if d else None

    def __repr__(self) -> str:
        parts = [f"base ×{len(self.base)}", "aligned"]
        for run in self.runs.values():
            steps = list(run.steps)
            shown = f"{steps}" if len(steps) <= 5 else f"[{steps[0]}..{steps[-1]}] ×{len(steps)}"
            parts.append(f"{'control ' if run.control else ''}{run.name} {shown}")
        return f"History({len(self)} checkpoints: {', '.join(parts)})"

    def tokenizer(self) -> Any:
        """The history's tokenizer (given, or read from the architecture / aligned / base dirs)."""
        if self._tokenizer is not None and not isinstance(self._tokenizer, (str, os.PathLike)):
            return self._tokenizer
        from transformers import AutoTokenizer

        candidates = [self._tokenizer] if self._tokenizer is not None else []
        candidates += [self.architecture, self.aligned.local_path(), *(b.local_path() for b in self.base)]
        for cand in candidates:
            if cand is not None and Path(cand).is_dir() and any(
                (Path(cand) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
            ):
                self._tokenizer = AutoTokenizer.from_pretrained(str(cand))
                return self._tokenizer
        raise CheckpointError("no tokenizer found in the history's dirs; pass tokenizer=...")

    def boot(self, *, device: Any = None, dtype: torch.dtype = torch.float32) -> LensModel:
        """Boot one ``TransformerBridge`` on this history's architecture (weights: aligned)."""
        arch = self.architecture
        if arch is None:
            p = self.aligned.local_path()
            arch = p if p is not None and p.is_dir() else None
        if arch is None:
            raise CheckpointError("no architecture dir (config.json) in this history; use from_state_dicts")
        tok = self.tokenizer()
        lm = LensModel.boot(Path(arch), device=device, dtype=dtype, tokenizer=tok)
        lm.load_weights(self.aligned.state_dict(), name=self.aligned.name)
        return lm

    def _validate_signatures(self) -> None:
        ref: dict[str, tuple[int, ...]] | None = None
        ref_name = ""
        for ck in self:
            if isinstance(ck.source, HubRef):
                continue  # validated when loaded (avoids a download at construction)
            sig = ck.signature()
            if sig is None:
                continue
            if ref is None:
                ref, ref_name = sig, ck.name
                continue
            # Shapes of shared names only: writers drop opposite sides of tied weights
            # (save_pretrained keeps wte, safetensors.save_model keeps lm_head); completeness is
            # checked, tie-aware, when the weights are loaded (LensModel.load_weights).
            for key in sorted(set(ref) & set(sig)):
                if sig[key] != ref[key]:
                    raise ShapeMismatchError(
                        f"parameter {key!r} has shape {ref[key]} in {ref_name} but {sig[key]} in {ck.name}"
                    )


def _looks_like_state_dict(m: Mapping[Any, Any]) -> bool:
    return bool(m) and all(isinstance(v, Tensor) for v in m.values())


