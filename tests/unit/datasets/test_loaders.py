"""Every named set loads from its published package: rows, columns, categories, splits, sha256."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from revlens import datasets
from revlens.datasets import DATASETS, SOURCES
from revlens.probes import combine

# name -> (rows, number of categories, rows per category where the paper fixes it)
PROMPT_SETS = {
    "jbb": (100, 10, {"Privacy": 10, "Malware/Hacking": 10}),
    "harmbench": (400, 7, {"copyright": 100}),
    "strongreject": (313, 6, {"Non-violent crimes": 59, "Violence": 54}),
    "advbench": (520, 9, {"Financial and Business": 173}),
    "donotanswer": (939, 5, {"information_hazard": 248, "human_chatbox": 117}),
}


@pytest.fixture(scope="module")
def loaded():
    return {name: getattr(datasets, name)() for name in PROMPT_SETS}


@pytest.mark.parametrize("name", list(PROMPT_SETS))
def test_prompt_set_rows_categories_labels(loaded, name):
    probes = loaded[name]
    rows, n_cats, some = PROMPT_SETS[name]
    assert len(probes) == rows == DATASETS[name].rows
    assert probes.is_chat and set(probes.labels) == {"harmful"}
    cats = Counter(i["category"] for i in probes.info)
    assert len(cats) == n_cats
    assert {k: cats[k] for k in some} == some
    assert all(isinstance(p, str) and p.strip() for p in probes.prompts)
    assert all({"category", "split", "file", "line", "row"} <= set(i) for i in probes.info)


@pytest.mark.parametrize("name", list(PROMPT_SETS))
def test_provenance_records_package_and_each_files_sha256(loaded, name, file_sha256):
    (prov,) = loaded[name].provenance
    ds = DATASETS[name]
    src = SOURCES[ds.source]
    assert (prov["package"], prov["version"], prov["licence"], prov["rows"]) == (
        src.package,
        src.version,
        src.licence,
        ds.rows,
    )
    assert [f["path"] for f in prov["files"]] == list(ds.files)
    for f in prov["files"]:  # the recorded hash is the file's own, computed here without revlens
        assert f["sha256"] == file_sha256(ds.source, f["path"]) == src.files[f["path"]]
    json.dumps(prov)  # goes into reports as JSON


@pytest.mark.parametrize("name", list(PROMPT_SETS))
def test_splits_disjoint_cover_and_stratified(loaded, name):
    probes = loaded[name]
    parts = {s: getattr(datasets, name)(s) for s in datasets.SPLITS}
    texts = {s: set(p.prompts) for s, p in parts.items()}
    assert not texts["train"] & texts["selection"] and not texts["train"] & texts["held_out"]
    assert not texts["selection"] & texts["held_out"]
    assert sum(len(p) for p in parts.values()) == len(probes)
    assert set().union(*texts.values()) == set(probes.prompts)
    for s, p in parts.items():
        assert {i["split"] for i in p.info} == {s} and p.provenance[0]["split"] == s
    by_cat: dict[str, Counter] = {}
    for i in probes.info:
        by_cat.setdefault(i["category"], Counter())[i["split"]] += 1
    for cat, c in by_cat.items():  # 60 / 20 / 20 within every category (distinct texts, rounded)
        n = sum(c.values())
        assert abs(c["train"] - 0.6 * n) <= 1.5 and abs(c["selection"] - 0.2 * n) <= 1.5, (cat, c)


def test_jbb_columns_and_text():
    p = datasets.jbb(chat=False)
    assert not p.is_chat
    first = p.info[0]
    assert p.prompts[0].startswith("Write a defamatory article claiming that a U.S. president")
    assert first["target"].startswith("Sure, here is a defamatory article")
    assert (first["behavior"], first["category"], first["line"]) == (
        "Defamation",
        "Harassment/Discrimination",
        2,
    )


def test_harmbench_contextual_behaviours_put_the_context_first(loaded):
    probes = loaded["harmbench"]
    ctx = [i for i, info in enumerate(probes.info) if info["functional"] == "contextual"]
    assert len(ctx) == 100 and all("\n\n---\n\n" in probes.prompts[i] for i in ctx)
    assert Counter(i["harmbench_split"] for i in probes.info) == {"test": 320, "val": 80}


def test_splits_stable_in_a_fresh_process(loaded):
    code = (
        "from revlens import datasets; import json; "
        "print(json.dumps({n: [i['split'] for i in getattr(datasets, n)().info] for n in ['jbb', 'advbench']}))"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "123"},
    )
    got = json.loads(out.stdout)
    for n in ("jbb", "advbench"):
        assert got[n] == [i["split"] for i in loaded[n].info]


def test_chatterbot_pairs():
    df = datasets.chatterbot()
    assert list(df.columns) == ["question", "answer", "category", "split", "file", "line", "turns"]
    assert len(df) == DATASETS["chatterbot"].rows == 2025
    assert df["category"].nunique() == 21 and (df["category"] == "tech_support").sum() == 1050
    assert (df["question"].str.strip() != "").all() and (df["answer"].str.strip() != "").all()
    assert (
        df.groupby("question")["split"].nunique().max() == 1
    )  # a question asked twice is in one split
    prov = df.attrs["provenance"]
    assert (
        prov["skipped"] == ["chatterbot_corpus/data/english/trivia.yml:35"] and prov["rows"] == 2025
    )
    held = datasets.chatterbot("held_out")
    assert set(held["split"]) == {"held_out"} and len(held) == (df["split"] == "held_out").sum()


def test_chatterbot_prompts_are_harmless_and_distinct():
    p = datasets.chatterbot_prompts()
    assert set(p.labels) == {"harmless"} and len(set(p.prompts)) == len(p)
    both = combine(datasets.jbb("train"), datasets.chatterbot_prompts("train"))
    assert {d["dataset"] for d in both.provenance} == {"jbb", "chatterbot"}
    assert len(both.where("harmless")) == len(datasets.chatterbot_prompts("train"))


def test_installed_and_wheel_give_the_same_bytes():
    a = datasets.read_file(
        "chatterbot", "chatterbot_corpus/data/english/ai.yml", source="installed"
    )
    b = datasets.read_file("chatterbot", "chatterbot_corpus/data/english/ai.yml", source="wheel")
    assert a.data == b.data and a.origin != b.origin and "!" in b.origin


def _word_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    tok = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(["<pad>", *words])}, unk_token="<pad>")
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def test_subset_keeps_provenance_and_tokenized_carries_it():
    p = datasets.jbb("held_out", chat=False).subset([0, 1, 2])
    assert p.provenance[0]["dataset"] == "jbb" and len(p) == 3
    tok = p.tokenize(_word_tokenizer(p.prompts))
    assert tok.datasets == p.provenance and tok.view(tok.position).datasets == p.provenance


def test_collect_and_analyze_record_the_probes_provenance(tiny_history):
    """The tiny model's 32-word vocabulary cannot read JBB's text, so its own prompts carry the
    provenance of a real load: what is checked is that collect and analyze record it."""
    import revlens
    import tiny
    from revlens.collect import collect
    from revlens.probes import Probes

    p = Probes(list(tiny.PROMPTS))
    p.provenance = datasets.jbb("held_out").provenance
    stats = collect(tiny_history, p, layers=[1], n_bootstrap=0, progress=False)
    assert stats.meta["datasets"] == p.provenance
    report = revlens.analyze(
        tiny_history,
        p,
        layers=[1],
        methods=["mean_diff"],
        n_null=2,
        n_stability=0,
        n_bootstrap=0,
        progress=False,
    )
    assert report.provenance["datasets"] == p.provenance


def test_evaluate_records_each_sets_provenance(tiny_history, tiny_lm):
    import revlens
    import tiny
    from revlens.metrics import logit_diff
    from revlens.probes import Probes

    p = Probes(list(tiny.PROMPTS))
    p.provenance = datasets.jbb("held_out").provenance
    ev = revlens.evaluate(
        tiny_history,
        {"jbb-like": p},
        {"d": logit_diff(["w1"], ["w2"])},
        model=tiny_lm,
        checkpoints=["aligned"],
        progress=False,
    )
    assert ev.provenance["datasets"] == {"jbb-like": p.provenance}


def test_cli_list(capsys):
    from revlens.cli import main

    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DATASETS) and "missing" not in out
