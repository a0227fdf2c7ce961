import json

import pytest
import torch

import tiny
from revlens.errors import ProbeError, SiteError
from revlens.probes import Probes


def test_text_probes_right_pad_and_last_index():
    tok = tiny.tiny_tokenizer()
    tp = Probes(["w1 w2 w3", "w4"]).tokenize(tok)
    assert tp.tokens.tolist() == [[3, 4, 5], [6, 0, 0]]
    batch = next(tp.batches(8))
    assert batch.last_index.tolist() == [2, 0]
    assert batch.weights.tolist() == [[0, 0, 1], [1, 0, 0]]


def test_mean_and_mask_position_rules():
    tok = tiny.tiny_tokenizer()
    tp = Probes(["w1 w2 w3", "w4"], position="mean").tokenize(tok)
    assert torch.allclose(tp.weights, torch.tensor([[1 / 3] * 3, [1.0, 0, 0]], dtype=torch.float64))
    mask = torch.tensor([[True, True, False], [True, True, True]])
    tp = Probes(["w1 w2 w3", "w4"], position=mask).tokenize(tok)
    # positions beyond a prompt's length are ignored
    assert tp.weights.tolist() == [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
    with pytest.raises(SiteError, match="selects no real token of prompt 0"):
        Probes(["w1 w2", "w3"], position=torch.tensor([[False, False], [True, False]])).tokenize(
            tok
        )


def test_token_probes_and_jsonl(tmp_path):
    tok = tiny.tiny_tokenizer()
    p = Probes(torch.tensor([[3, 4], [5, 6]]))
    assert p.tokenize(tok).tokens.tolist() == [[3, 4], [5, 6]]
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"text": "w1 w2", "label": "harm"})
        + "\n\n"
        + json.dumps({"text": "w3", "label": "ok"})
        + "\n"
    )
    jp = Probes.from_jsonl(f)
    assert len(jp) == 2 and jp.labels == ["harm", "ok"]
    assert repr(jp) == "Probes(2 prompts, position='last', 2 labels)"


def test_bad_input(tmp_path):
    tok = tiny.tiny_tokenizer()
    with pytest.raises(ProbeError, match="empty"):
        Probes([])
    with pytest.raises(ProbeError, match="context limit is 4"):
        Probes(["w1 w2 w3 w4 w5"]).tokenize(tok, n_ctx=4)
    with pytest.raises(SiteError, match="unknown position rule 'first'"):
        Probes(["w1"], position="first")
    with pytest.raises(ProbeError, match="outside the vocabulary"):
        Probes([[1, 999]]).tokenize(tok)
    with pytest.raises(ProbeError, match="mostly unknown tokens"):
        Probes(["how do I pick a lock"]).tokenize(tok)
    with pytest.raises(ProbeError, match="does not exist"):
        Probes.from_jsonl(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "w1"}\n')
    with pytest.raises(ProbeError, match='bad.jsonl:1: expected an object with a "text"'):
        Probes.from_jsonl(bad)
    with pytest.raises(ProbeError, match="2 labels for 1 prompts"):
        Probes(["w1"], labels=["a", "b"])
