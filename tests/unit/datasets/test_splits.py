"""The split rule: deterministic, stratified, a text in one split, strata independent."""

import hashlib
from collections import Counter

from revlens.datasets import SALT, assign_splits, split_key


def test_split_key_is_salted_sha256():
    assert split_key("hello") == hashlib.sha256(f"{SALT}\0hello".encode()).hexdigest()
    assert split_key("hello", "other") != split_key("hello")


def test_fractions_per_category_and_order_by_key():
    texts = [f"prompt {i}" for i in range(50)]
    cats = ["a"] * 30 + ["b"] * 20
    got = assign_splits(texts, cats)
    assert Counter(s for s, c in zip(got, cats) if c == "a") == {
        "train": 18,
        "selection": 6,
        "held_out": 6,
    }
    assert Counter(s for s, c in zip(got, cats) if c == "b") == {
        "train": 12,
        "selection": 4,
        "held_out": 4,
    }
    a = sorted(texts[:30], key=split_key)
    assert [got[texts.index(t)] for t in a] == ["train"] * 18 + ["selection"] * 6 + ["held_out"] * 6


def test_duplicates_share_a_split_and_strata_are_independent():
    texts = [f"t{i}" for i in range(20)] + ["t3", "t3"]
    got = assign_splits(texts, ["a"] * 22)
    assert got[20] == got[21] == got[3]
    base = assign_splits(
        [f"x{i}" for i in range(10)] + [f"y{i}" for i in range(10)], ["x"] * 10 + ["y"] * 10
    )
    more = assign_splits(
        [f"x{i}" for i in range(10)] + [f"y{i}" for i in range(11)], ["x"] * 10 + ["y"] * 11
    )
    assert base[:10] == more[:10]  # a row added to y moves nothing in x
    assert assign_splits(texts, ["a"] * 22, salt="s2") != got
