"""Issue 16, "done when": a LoRA fine-tune written by ``transformers.Trainer`` + PEFT (adapter-only
``checkpoint-N`` folders) is analysed, ablated and monitored exactly like the same history merged
by hand (``merge_and_unload`` + ``save_pretrained`` of every checkpoint): equal to ≤ 1e-5.

The history is mixed: a LoRA run from aligned, a LoRA control run from base (adapters on base),
and a run of full checkpoints; the Trainer's own run is monitored live by a ``ReversionMonitor``
callback on the PEFT model.
"""

import functools
import warnings
from pathlib import Path

import pytest
import torch

import families
import revlens
from revlens.collect import DegenerateLayerWarning
from revlens.history.loaders import trainer_steps
from revlens.metrics import logit_diff

pytest.importorskip("peft")
pytestmark = pytest.mark.xdist_group("family-lora")

TOK = families.tokenizer()
PROMPTS = [f"w{i} w{i + 5} w{i + 2}" + " w50" * (i % 3) for i in range(20, 28)]
LORA = dict(
    r=4,
    lora_alpha=16,
    lora_dropout=0.0,
    target_modules=["q_proj", "v_proj", "down_proj"],
    modules_to_save=["lm_head"],
)


class _Data(torch.utils.data.Dataset):
    def __init__(self, seed: int) -> None:
        self.rows = families.token_batch(16, 8, seed=seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def _train_lora(start: Path, out: Path, callbacks=()) -> Path:
    """3 Trainer steps of a LoRA from ``start``; adapter-only checkpoint-1..3 in ``out``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(start)), LoraConfig(**LORA))
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=3,
        save_steps=1,
        save_strategy="steps",
        per_device_train_batch_size=8,
        learning_rate=5e-2,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=_Data(1), callbacks=list(callbacks)).train()
    return out


def _merge(start: Path, adapter: Path, out: Path) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(start)), str(adapter)
    )
    model.merge_and_unload().save_pretrained(out)
    return out


@functools.cache
def histories() -> dict:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="revlens-lora-"))
    dirs = families.write_history(root, "llama", n_runs=1, steps=(1, 2))
    probes = [
        TOK.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    lm = revlens.History.from_dirs(base=dirs["base"], aligned=dirs["aligned"], tokenizer=TOK).boot()
    # the monitor rides along the Trainer run of the LoRA from aligned (a PEFT model)
    ref = revlens.collect(
        revlens.History.from_dirs(base=dirs["base"], aligned=dirs["aligned"], tokenizer=TOK),
        probes,
        model=lm,
        n_bootstrap=0,
        progress=False,
    )
    v = revlens.Directions.from_tensor(ref.base_mean()[1:] - ref.mean("aligned")[1:], [1, 2])
    live = revlens.ReversionMonitor(v, probes, ref, tokenizer=TOK, every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Trainer / PEFT chatter
        lora = _train_lora(dirs["aligned"], root / "lora", [live.as_trainer_callback()])
        control = _train_lora(dirs["base"], root / "lora-control")
        merged = {
            name: {
                s: _merge(start, run / f"checkpoint-{s}", root / "merged" / name / f"step-{s}")
                for s in (1, 2, 3)
            }
            for name, start, run in (
                ("lora", dirs["aligned"], lora),
                ("ctl", dirs["base"], control),
            )
        }
    full = dirs["runs"]["seed0"]
    # mixed: adapter-only Trainer folders (from aligned; the control from base) and full checkpoints
    adapters = revlens.History.from_dirs(
        base=dirs["base"],
        aligned=dirs["aligned"],
        tokenizer=TOK,
        runs={"lora": trainer_steps(lora, "lora"), "full": full},
        controls={"ctl": trainer_steps(control, "ctl")},
    )
    by_hand = revlens.History.from_dirs(
        base=dirs["base"],
        aligned=dirs["aligned"],
        tokenizer=TOK,
        runs={"lora": merged["lora"], "full": full},
        controls={"ctl": merged["ctl"]},
    )
    return {
        "adapters": adapters,
        "merged": by_hand,
        "probes": probes,
        "lm": lm,
        "live": live,
        "v": v,
        "ref": ref,
        "root": root,
        "dirs": dirs,
    }


def test_adapter_history_reads_the_trainer_folders():
    h = histories()["adapters"]
    assert [c.kind for c in h.runs["lora"].steps.values()] == ["adapter"] * 3
    assert [c.kind for c in h.runs["full"].steps.values()] == ["full"] * 2
    assert h.runs["ctl"].start == "base" and h.runs["ctl"].steps[1].start.name == "base"
    assert "lora [1, 2, 3] (adapters)" in repr(h)
    ck = h["lora/step-2"]
    # identity by content: the adapter's own files, and the start's weights in the model's identity
    assert ck.fingerprint() != ck.model_fingerprint()
    assert [f.name for f in ck.weight_files()] == ["adapter_model.safetensors"]
    other = revlens.history.Checkpoint("x", "run", ck.source, start=h.base[0])
    assert (
        other.fingerprint() == ck.fingerprint()
        and other.model_fingerprint() != ck.model_fingerprint()
    )


def test_analyze_equals_the_history_merged_by_hand():
    H = histories()
    kw = dict(n_null=50, n_bootstrap=20, n_stability=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        a = revlens.analyze(H["adapters"], H["probes"], model=H["lm"], **kw)
        b = revlens.analyze(H["merged"], H["probes"], model=H["lm"], **kw)
    da = a.drift.sort_values(["method", "run", "step", "layer"]).reset_index(drop=True)
    db = b.drift.sort_values(["method", "run", "step", "layer"]).reset_index(drop=True)
    assert len(da) == len(db) > 0 and set(da.run) == {"lora", "ctl", "full"}
    assert (
        (
            da[["run", "step", "layer", "method", "kind"]]
            == db[["run", "step", "layer", "method", "kind"]]
        )
        .all()
        .all()
    )
    for col in ("cos", "cos_lo", "cos_hi", "proj", "frac", "norm", "null_cov_p99", "p_iso"):
        assert (da[col] - db[col]).abs().max() <= 1e-5, col
    assert (da.significant == db.significant).all()
    assert all(
        torch.allclose(a.directions[m].basis, b.directions[m].basis, atol=1e-5)
        for m in a.directions
    )
    assert a.provenance["checkpoints"]["lora/step-1"]["kind"] == "adapter"
    assert a.provenance["checkpoints"]["ctl/step-1"]["start"] == "base"


def test_ablation_equals_the_history_merged_by_hand():
    H = histories()
    metric = logit_diff(["w1"], ["w2"])
    kw = dict(kinds=("clamp", "patch", "steer"), alphas=(2.0,), controls=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        a = revlens.ablation_study(H["adapters"], H["probes"], metric, model=H["lm"], **kw).effects
        b = revlens.ablation_study(H["merged"], H["probes"], metric, model=H["lm"], **kw).effects
    key = ["run", "step", "layer", "kind", "direction", "alpha"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert set(a.run) == {"lora", "full", "aligned"} and len(a) == len(b)
    assert (a.metric - b.metric).abs().max() <= 1e-5 and (a.effect - b.effect).abs().max() <= 1e-5


def test_monitor_in_the_trainer_equals_the_merged_checkpoints():
    """The live monitor (Trainer callback on the PEFT model) read what the merged checkpoints give,
    and what the LensModel gives with each adapter swapped in."""
    from transformers import AutoModelForCausalLM

    H = histories()
    live = H["live"].history_
    assert live.step.unique().tolist() == [1, 2, 3]
    check = revlens.ReversionMonitor(H["v"], H["probes"], H["ref"], tokenizer=TOK)
    for step in (1, 2, 3):
        merged = AutoModelForCausalLM.from_pretrained(
            str(H["merged"][f"lora/step-{step}"].local_path())
        )
        by_hand = check.measure(merged)
        H["lm"].load(H["adapters"][f"lora/step-{step}"])
        swapped = check.measure(H["lm"])
        ours = live[live.step == step].reset_index(drop=True)
        for table in (by_hand, swapped):
            assert (ours.cos - table.cos).abs().max() <= 1e-5 and (
                ours.proj - table.proj
            ).abs().max() <= 1e-5


def test_adapters_come_off_exactly():
    """After every adapter of the history, loading aligned again gives its file's weights bit for bit."""
    from safetensors.torch import load_file

    H = histories()
    lm = H["lm"]
    for ck in [
        *H["adapters"].runs["lora"].steps.values(),
        *H["adapters"].runs["ctl"].steps.values(),
    ] * 3:
        lm.load(ck)
    lm.load(H["adapters"].aligned)
    saved = load_file(str(H["dirs"]["aligned"] / "model.safetensors"))
    ours = lm.state_dict()
    assert all(torch.equal(ours[k], saved[k]) for k in saved), [
        k for k in saved if not torch.equal(ours[k], saved[k])
    ]
