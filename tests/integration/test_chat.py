"""The chat path end to end on a tiny Llama with a chat template (issue 18's "done when"):
chat JSONL probes -> analyze at the post-instruction positions -> ablation_study with a
generation-based refusal rate and a judge metric against random controls -> evaluate."""

import json
import warnings

import pytest
import torch

import families
import revlens
from revlens.causal import clamp
from revlens.collect import collect
from revlens.metrics import CausalLMJudge, judge_metric, kl_to, over_refusal_rate, refusal_rate
from revlens.model import LensModel

HARMFUL = [f"w{i} w{i + 3} w{i + 7}" for i in range(10, 22)]
HARMLESS = [f"w{i} w{i + 1}" for i in range(60, 68)]
REFUSALS = [f"w{i}" for i in range(40, 50)]  # "refusal phrases" of the random tiny model


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-llama")
    dirs = families.write_history(root, "llama", n_runs=2, steps=(1, 2, 3))
    hist = revlens.History.from_dirs(base=dirs["base"], aligned=dirs["aligned"], runs=dirs["runs"])
    f = root / "probes.jsonl"
    rows = [{"prompt": p, "label": "harmful"} for p in HARMFUL] + [
        {"messages": [{"role": "user", "content": p}], "label": "harmless"} for p in HARMLESS
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return hist, f, hist.boot()


def test_all_positions_are_read_in_one_forward_per_checkpoint_and_batch(chat):
    hist, f, lm = chat
    calls = []
    handle = lm.bridge.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        by_pos = collect(
            hist,
            f,
            position=("post_instruction", 3),
            model=lm,
            batch_size=8,
            n_bootstrap=0,
            progress=False,
        )
    finally:
        handle.remove()
    assert list(by_pos) == ["-3", "-2", "-1"]
    n_batches = -(-len(HARMFUL + HARMLESS) // 8)
    assert len(calls) == len(hist) * n_batches
    # each position equals collecting that position alone (a mask rule)
    probes = revlens.Probes.from_jsonl(f)
    lengths = probes.tokenize(lm.tokenizer).lengths
    mask = torch.zeros(len(lengths), int(lengths.max()), dtype=torch.bool)
    mask[torch.arange(len(lengths)), lengths - 2] = True
    alone = collect(hist, probes.with_position(mask), model=lm, n_bootstrap=0, progress=False)
    for name in ("base", "seed1/step-2"):
        assert torch.allclose(by_pos["-2"].mean(name), alone.mean(name), atol=1e-6)
    assert by_pos["-1"].meta["chat_template"]["name"] == "aligned/chat_template.jinja"


def test_analyze_at_post_instruction_positions(chat, tmp_path):
    hist, f, lm = chat
    with pytest.warns(UserWarning, match=r"constant over prompts.*position -4: layer\(s\) \[0\]"):
        # whitened is the estimator a constant layer breaks (zero covariance)
        report = revlens.analyze(
            hist,
            f,
            model=lm,
            position="post_instruction",
            methods=("mean_diff", "whitened"),
            n_null=20,
            n_stability=2,
            n_bootstrap=10,
            progress=False,
        )
    assert report.positions == [-4, -3, -2, -1]
    assert report.config["dropped_layers"] == {
        str(p): [0] for p in (-4, -3, -2, -1)
    }  # RoPE: embeddings constant
    assert set(report.drift["layer"]) == {1, 2} and "mean_diff@-2" in report.directions
    table = report.position_table()
    assert len(table) == 4 * 2 * 2 and set(table["base_method"]) == {"mean_diff", "whitened"}
    assert report.headline()["method"] == "mean_diff@-1"
    html = report.to_html(tmp_path / "r.html").read_text()
    assert (
        "Post-instruction positions" in html and report.provenance["chat_template"]["sha"] in html
    )
    back = revlens.load(report.save(tmp_path / "saved"))
    assert back.positions == report.positions and list(back.directions["whitened@-3"].layers) == [
        1,
        2,
    ]


def test_ablation_with_generation_metrics_against_controls(chat):
    hist, f, lm = chat
    probes = revlens.Probes.from_jsonl(f).where("harmful")
    refusal = refusal_rate(REFUSALS, max_new_tokens=4)
    study = revlens.ablation_study(
        hist,
        probes,
        refusal,
        model=lm,
        layers=[1, 2],
        steps=[3],
        runs=["seed0"],
        controls=2,
        kinds=("clamp", "patch"),
        progress=False,
    )
    eff = study.effects
    assert set(eff["direction"]) == {
        "v_rev",
        "random_iso_0",
        "random_iso_1",
        "random_cov_0",
        "random_cov_1",
    }
    assert len(eff) == 2 * 2 * 5 and eff["metric"].between(0, 1).all()
    # cross-checks: the clean value is evaluate's, and one intervened value is the metric under clamp
    ev = revlens.evaluate(
        hist, probes, {"refusal": refusal}, model=lm, checkpoints=["seed0/step-3"], progress=False
    )
    assert eff["metric_clean"].iloc[0] == pytest.approx(ev.table["refusal"].iloc[0])
    row = eff[(eff.layer == 2) & (eff.kind == "clamp") & (eff.direction == "v_rev")].iloc[0]
    stats = collect(
        hist.restricted(), probes, model=lm, layers=[1, 2], n_bootstrap=0, progress=False
    )
    v = study.directions[2]
    lm.load(hist["seed0/step-3"])
    batch = next(probes.tokenize(lm.tokenizer).batches(64))
    with clamp(lm, v, [2], stats.mean("aligned")[1][None].float()):
        manual = float(refusal.bind(lm.tokenizer).score(lm, batch).mean())
    assert row["metric"] == pytest.approx(manual)
    judge_model, judge_tok = families.build("llama", 9)
    judge = judge_metric(
        CausalLMJudge(
            judge_model,
            judge_tok,
            template="w1 {prompt} w2 {response} w3",
            yes=("w60",),
            no=("w61",),
        ),
        max_new_tokens=4,
    )
    judged = revlens.ablation_study(
        hist,
        probes,
        judge,
        model=lm,
        layers=[2],
        steps=[3],
        runs=["seed0"],
        controls=2,
        kinds=("clamp",),
        progress=False,
    )
    assert judged.config["metric"] == "judge_score" and judged.effects["metric"].between(0, 1).all()
    assert "z" in judged.summary().columns


def test_evaluate_over_the_history_beside_the_drift(chat, tmp_path):
    hist, f, lm = chat
    probes = revlens.Probes.from_jsonl(f)
    metrics = {
        "refusal": (refusal_rate(REFUSALS, max_new_tokens=4), "harmful"),
        "over_refusal": (over_refusal_rate(REFUSALS, max_new_tokens=4), "harmless"),
        "kl": (kl_to(), "harmless"),
    }
    ev = revlens.evaluate(hist, probes, metrics, model=lm, progress=False)
    assert list(ev.table.columns) == [
        "checkpoint",
        "role",
        "run",
        "kind",
        "step",
        "refusal",
        "over_refusal",
        "kl",
    ]
    assert len(ev.table) == len(hist)
    aligned = ev.table.set_index("checkpoint").loc["aligned"]
    assert abs(aligned["kl"]) < 1e-5 and ev.table.set_index("checkpoint").loc["base", "kl"] > 1e-4
    per = ev.per_prompt[
        (ev.per_prompt.metric == "over_refusal") & (ev.per_prompt.checkpoint == "base")
    ]
    assert len(per) == len(HARMLESS) and per["value"].mean() == pytest.approx(
        ev.table.loc[0, "over_refusal"]
    )
    assert len(ev.responses) == len(hist) * (len(HARMFUL) + len(HARMLESS))
    assert set(ev.responses["prompt"]) == set(HARMFUL + HARMLESS)
    assert revlens.load(ev.save(tmp_path / "ev")).table.equals(ev.table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = revlens.analyze(
            hist,
            probes,
            model=lm,
            layers=[2],
            methods="mean_diff",
            n_null=20,
            n_stability=0,
            n_bootstrap=0,
            progress=False,
            evaluation=ev,
        )
    assert {"refusal", "over_refusal", "kl"} <= set(report.metrics.columns)
    assert "Behaviour" in report.to_html(tmp_path / "r.html").read_text()


def test_bad_evaluations_fail_before_any_forward(chat):
    hist, f, lm = chat
    probes = revlens.Probes.from_jsonl(f)
    with pytest.raises(revlens.RevlensError, match="neither a prompt set"):
        revlens.evaluate(hist, probes, {"r": (refusal_rate(), "toxic")}, model=lm, progress=False)
    with pytest.raises(revlens.RevlensError, match="not in the history"):
        revlens.evaluate(
            hist, probes, {"kl": kl_to()}, model=lm, checkpoints=["nope"], progress=False
        )
    with pytest.raises(revlens.RevlensError, match="declares none"):
        revlens.evaluate(hist, probes, model=lm, progress=False)


def test_history_template_renders_every_checkpoint(chat, tmp_path):
    """A model booted on a tokenizer without a template still renders with the history's."""
    hist, f, _ = chat
    from transformers import AutoTokenizer

    tok = families.tokenizer()
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "bare")
    bare = LensModel.boot(
        hist.architecture_dir(), tokenizer=AutoTokenizer.from_pretrained(tmp_path / "bare")
    )
    assert not bare.tokenizer.chat_template
    stats = collect(hist.restricted(), f, model=bare, layers=[1], n_bootstrap=0, progress=False)
    assert stats.meta["chat_template"]["name"] == "aligned/chat_template.jinja"
