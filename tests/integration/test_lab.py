"""The reversion lab end to end: shipped assets, a short lab run, determinism, interruption."""

import json
from pathlib import Path

import pytest
import torch

from revlens.lab import (
    LabConfig,
    asset_dir,
    build_tokenizer,
    evaluate,
    finetune,
    is_lab_dir,
    load_checkpoint,
    load_pair,
    run_lab,
)
from revlens.lab.cli import main

PAIRS = sorted(p.name for p in asset_dir().glob("pair*"))
KEYS = ("harm_rate", "harm_logodds", "task_acc", "task_loss")


def test_at_least_two_pairs_are_shipped():
    assert len(PAIRS) >= 2
    size = sum(f.stat().st_size for f in asset_dir().rglob("*") if f.is_file())
    assert size <= 20 * 2**20


@pytest.mark.parametrize("pair", PAIRS)
def test_shipped_pairs_still_behave(pair):
    base, aligned, info = load_pair(asset_dir() / pair, LabConfig())
    tok = build_tokenizer()
    m_base, m_aligned = evaluate(base, tok), evaluate(aligned, tok)
    assert m_aligned["harm_rate"] <= 0.05 and m_aligned["harm_logodds"] < 0
    assert m_base["harm_rate"] >= 0.9 and m_base["harm_logodds"] > 0
    assert m_aligned == pytest.approx(info["metrics"]["aligned"], abs=1e-4)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lab") / "lab"
    # pinned to remap (LabConfig()'s track): the CLI's default moved to pretrain-like, and the
    # same-seed and generation-agreement tests compare against LabConfig() runs
    assert (
        main(["--out", str(out), "--track", "remap", "--seeds", "0", "--steps", "3", "--quiet"])
        == 0
    )
    return out


def test_lab_dir_layout(lab):
    """A lab dir is a plain revlens history (history.json), with the lab's extras in its metadata."""
    from revlens.history import History

    spec = json.loads((lab / "history.json").read_text())
    assert spec["format"] == "revlens-history" and spec["metadata"]["source"] == "revlens-lab"
    assert LabConfig.from_dict(spec["metadata"]["lab"]["config"]).ft_steps == 3
    assert spec["base"] == "base" and spec["aligned"] == "aligned"
    assert spec["runs"] == {"seed0": {str(t): f"runs/seed0/step-{t}" for t in (1, 2, 3)}}
    assert spec["controls"] == {
        "control-seed0": {str(t): f"controls/control-seed0/step-{t}" for t in (1, 2, 3)}
    }
    records = json.loads((lab / "metrics.json").read_text())
    assert len(records) == 2 + 3 + 3
    hist = History.load(lab)
    assert {r["checkpoint"] for r in records} == {c.name for c in hist}
    for r in records:
        assert set(r) == {"checkpoint", "path", *KEYS}
        assert all(0 <= r[k] <= 1 for k in ("harm_rate", "task_acc"))
        model = load_checkpoint(lab / r["path"])  # every listed path exists and loads
        assert model.config.n_layer == 4
        assert (lab / r["path"] / "tokenizer.json").is_file()  # every checkpoint is self-contained
    # the lab declares its probes and metrics as data: the library needs no lab code for them
    meta = hist.metadata
    assert (
        Path(meta["probes"]).is_file()
        and meta["default_metric"] == "harm"
        and meta["harm_metric"] == "harm_rate"
    )
    assert hist.metrics["harm_rate"].between(0, 1).all() and hist.runs["control-seed0"].control


def test_checkpoints_boot_in_transformer_bridge(lab):
    from transformer_lens.model_bridge import TransformerBridge

    from revlens.lab import encode_prompts, probe_prompts

    tok = build_tokenizer()
    batch = encode_prompts(tok, probe_prompts()[:4])
    for rel in ("aligned", "runs/seed0/step-3"):
        bridge = TransformerBridge.boot_transformers(str(lab / rel), device="cpu")
        hf = load_checkpoint(lab / rel)
        with torch.no_grad():
            torch.testing.assert_close(
                bridge(batch.tokens), hf(batch.tokens).logits, atol=1e-4, rtol=1e-4
            )
        assert (
            bridge.to_tokens(probe_prompts()[0])[0].tolist() == tok(probe_prompts()[0])["input_ids"]
        )


def test_same_seed_same_metrics(lab, tmp_path):
    again = run_lab(
        tmp_path / "again", LabConfig(ft_seeds=(0,), ft_steps=3, control=False), progress=False
    )
    first = {
        r["checkpoint"]: [r[k] for k in KEYS]
        for r in json.loads((lab / "metrics.json").read_text())
    }
    for r in json.loads((again.lab_dirs["pair0"] / "metrics.json").read_text()):
        assert [r[k] for k in KEYS] == first[r["checkpoint"]]  # bit-identical
    _, aligned, _ = load_pair(asset_dir() / "pair0")
    other = finetune(aligned, LabConfig(), seed=1, steps=3, progress=False).model
    same = finetune(aligned, LabConfig(), seed=0, steps=3, progress=False).model
    assert evaluate(other, build_tokenizer()) != evaluate(same, build_tokenizer())


class _Interrupt(Exception):
    pass


class _StopAt:
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step, model, optimizer):
        if step == self.step:
            raise _Interrupt(f"stopped at {step}")


def test_interrupted_run_lists_only_complete_checkpoints(tmp_path):
    out = tmp_path / "cut"
    cfg = LabConfig(ft_seeds=(0, 1), ft_steps=6, checkpoint_steps=(1, 2, 4, 6))
    with pytest.raises(_Interrupt):
        run_lab(out, cfg, callbacks=[_StopAt(3)], progress=False)
    manifest = json.loads((out / "history.json").read_text())
    assert manifest["runs"] == {"seed0": {"1": "runs/seed0/step-1", "2": "runs/seed0/step-2"}}
    assert manifest["controls"] == {}
    records = json.loads((out / "metrics.json").read_text())
    assert [r["checkpoint"] for r in records] == ["base", "aligned", "seed0/step-1", "seed0/step-2"]
    for rel in manifest["runs"]["seed0"].values():
        assert (out / rel / "model.safetensors").is_file() and (out / rel / "config.json").is_file()
    assert not list(out.glob("**/.*.tmp"))


def test_out_refusal_and_overwrite(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    assert (
        main(["--out", str(other), "--seeds", "0", "--steps", "1", "--no-control", "--quiet"]) == 2
    )
    assert "--force" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "precious"
    # a lab dir may be rewritten without --force; --force overwrites anything else
    lab = tmp_path / "lab"
    for target, extra in ((lab, []), (lab, []), (other, ["--force"])):
        assert (
            main(
                [
                    "--out",
                    str(target),
                    "--seeds",
                    "0",
                    "--steps",
                    "1",
                    "--no-control",
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
        assert is_lab_dir(target)
    assert not (other / "keep.txt").exists()


def test_generation_and_logit_harm_agree_where_the_answer_is_in_format(lab):
    """Measured, not assumed: the greedy answer is judged by refusal phrases and compared prompt by
    prompt with the logit-based harm rate (see revlens.lab.chat for why they part after fine-tuning)."""
    import revlens
    from revlens.lab.chat import chat_prompts, generation_agreement

    hist = revlens.History.load(lab)
    chosen = ["base", "aligned", "seed0/step-1", "seed0/step-3"]
    ev, table = generation_agreement(hist, checkpoints=chosen)
    by = table.set_index("checkpoint")
    assert by.loc["base", "agreement"] == 1.0 and by.loc["aligned", "agreement"] == 1.0
    assert by.loc["all", "agreement_in_format"] == 1.0 and by.loc["all", "n_prompts"] == 96 * len(
        chosen
    )
    assert set(ev.responses["prompt"]) == set(chat_prompts())
    # the lab declares the generation-based harm rate as data: evaluate() runs every declared metric
    declared = revlens.evaluate(
        hist, lab / "probes" / "chat-heldout.jsonl", checkpoints=["aligned"], progress=False
    )
    assert {"harm", "harm_rate", "harm_gen"} <= set(declared.table.columns)
    assert declared.provenance["chat_template"]["name"] == "aligned/chat_template.jinja"


def test_help_names_only_files_the_lab_writes(lab, capsys):
    """`revlens lab --help` once promised a manifest.json the lab no longer writes (issue 32)."""
    import re

    from revlens.cli import main as revlens_main

    with pytest.raises(SystemExit):
        revlens_main(["lab", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    named = set(re.findall(r"[\w-]+\.jsonl?\b", text))
    assert "history.json" in named and "manifest.json" not in named
    assert all((lab / name).is_file() for name in named), named


def test_the_labs_harm_is_the_declared_metric(lab):
    """One implementation of harm: metrics.json's harm_logodds / harm_rate equal the history's declared
    metrics (metadata.metrics_spec "harm" / "harm_rate", built by revlens.metrics) scored by the
    library's evaluate on the same checkpoints and the same held-out prompts."""
    import revlens
    from revlens.lab import probe_prompts
    from revlens.lab.metrics import HARM_RATE_SPEC, HARM_SPEC

    hist = revlens.History.load(lab)
    spec = hist.metadata["metrics_spec"]
    assert spec["harm"] == HARM_SPEC and spec["harm_rate"] == HARM_RATE_SPEC
    chosen = ["aligned", "seed0/step-3", "control-seed0/step-2"]
    ev = revlens.evaluate(
        hist,
        probe_prompts("harmful", "heldout"),
        {"harm": spec["harm"], "harm_rate": spec["harm_rate"]},
        checkpoints=chosen,
        progress=False,
    )
    got = ev.table.set_index("checkpoint")
    records = {r["checkpoint"]: r for r in json.loads((lab / "metrics.json").read_text())}
    for name in chosen:
        assert got.loc[name, "harm"] == pytest.approx(records[name]["harm_logodds"], abs=1e-5)
        n = len(
            probe_prompts("harmful", "heldout")
        )  # the same prompts judged harmful (the lab means in float32)
        assert round(got.loc[name, "harm_rate"] * n) == round(records[name]["harm_rate"] * n)
