"""Positions are an axis of the one ``collect``: a post-instruction rule goes through the same plan,
announcement, memory budget and executor as a single position (issue 27; ``collect_positions``
skipped the budget and the announcement on its executor path)."""

import json
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import families
import revlens
from revlens.collect import collect, collect_checkpoint, collect_positions
from revlens.sites import access

PROMPTS = [f"w{i} w{i + 3} w{i + 7}" for i in range(10, 20)] + [
    f"w{i} w{i + 1}" for i in range(60, 64)
]
RULE = ("post_instruction", 3)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-positions")
    dirs = families.write_history(root, "llama", n_runs=1, steps=(1, 2))
    hist = revlens.History.from_dirs(base=dirs["base"], aligned=dirs["aligned"], runs=dirs["runs"])
    f = root / "probes.jsonl"
    f.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in PROMPTS)
    )
    return hist, f, hist.boot()


@pytest.fixture(scope="module")
def serial(chat):
    hist, f, lm = chat
    return collect(hist, f, position=RULE, model=lm, n_bootstrap=4, progress=False)


def _equal(a, b, refs=True):
    assert list(a) == list(b)
    for label in a:
        for name in a[label].checkpoints:
            assert torch.equal(a[label].mean(name), b[label].mean(name)), (label, name)
            assert torch.equal(a[label][name].boot_total, b[label][name].boot_total), (label, name)
            if refs and a[label][name].refs is not None:
                assert torch.equal(a[label][name].refs.to_tensor(), b[label][name].refs.to_tensor())


def test_a_position_axis_equals_each_checkpoint_collected_alone(chat, serial):
    hist, f, lm = chat
    assert list(serial) == ["-3", "-2", "-1"]
    tokenized = revlens.collect.resolve_probes(hist, f).with_position(RULE).tokenize(lm.tokenizer)
    sites = access(lm).sites("all", "resid_post")
    for name in ("aligned", "seed0/step-2"):
        alone = collect_checkpoint(
            lm, hist[name], tokenized, sites, n_bootstrap=4, keep=name == "aligned"
        )
        for label, st in alone.items():
            assert torch.equal(serial[label].mean(name), st.mean)
            assert torch.equal(serial[label][name].boot_total, st.boot_total)


def test_positions_through_an_executor_are_held_within_the_memory_budget(chat, serial, tmp_path):
    hist, f, _lm = chat
    with ThreadPoolExecutor(max_workers=1) as pool:
        fanned = collect(
            hist,
            f,
            position=RULE,
            n_bootstrap=4,
            progress=False,
            executor=pool,
            memory_budget=0,
            spill_dir=tmp_path,
        )
    _equal(fanned, serial)
    for (
        st
    ) in fanned.values():  # shipped back in memory, held within the budget (0 bytes: on disk) here
        assert st["aligned"].refs.on_disk and st["base"].refs.on_disk
    assert not serial["-1"]["aligned"].refs.on_disk  # the default budget holds these in memory


def test_the_serial_path_spills_over_the_budget_and_announces_the_plan(
    chat, serial, tmp_path, caplog
):
    hist, f, lm = chat
    with caplog.at_level(logging.INFO, logger="revlens.collect.collector"):
        spilled = collect(
            hist,
            f,
            position=RULE,
            model=lm,
            n_bootstrap=4,
            progress=False,
            memory_budget=0,
            spill_dir=tmp_path,
        )
    _equal(spilled, serial)
    assert all(st["aligned"].refs.on_disk for st in spilled.values())
    assert any(
        "× 3 positions" in r.message and "forward passes" in r.message for r in caplog.records
    )


def test_a_single_position_is_an_axis_of_length_one(chat):
    hist, _f, lm = chat
    last = collect(hist, PROMPTS, model=lm, n_bootstrap=0, progress=False)
    assert isinstance(last, revlens.HistoryStats) and last.position == "last"


def test_collect_positions_is_a_deprecated_alias(chat, serial, tmp_path):
    hist, f, lm = chat
    with pytest.warns(DeprecationWarning, match=r"collect\(history, probes, position=\.\.\.\)"):
        old = collect_positions(hist, f, position=RULE, model=lm, n_bootstrap=4, progress=False)
    _equal(old, serial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        one = collect_positions(
            hist, PROMPTS, position="last", model=lm, n_bootstrap=0, progress=False
        )
    assert list(one) == ["last"]
