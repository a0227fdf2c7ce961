"""The alignment's held-out measurement (``revlens.lab.real.align.measure_start``) on a tiny real
Llama: base loaded from disk, both checkpoints measured on the held-out splits and on the untouched
check, with that check's provenance (no SmolLM2, no training; AdvBench's words are not in the tiny
vocabulary, so the check is a tiny set carrying AdvBench's provenance record)."""

from types import SimpleNamespace

import transformers as tf

import families
from revlens.probes import Probes


def _tokenizer_with_refusal_words() -> tf.PreTrainedTokenizerFast:
    """The families' word-level tokenizer with its last two words replaced by ``I`` and ``As`` (the
    refusal score's default tokens), same vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = [*families.VOCAB[:-2], "I", "As"]
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=words, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<eot>"],
    )  # fmt: skip
    tok.chat_template = families.CHAT_TEMPLATE
    return tok


def test_measure_start_measures_base_and_aligned_on_both_checks(tmp_path):
    from revlens.lab.real.align import measure_start

    fresh = Probes(["w20 w21", "w22", "w23 w24 w25"])
    fresh.provenance = [{"package": "pyrit", "version": "1.1.0", "sha256": "0" * 64}]
    model, _ = families.build("llama")
    tok = _tokenizer_with_refusal_words()
    converted = families.save(model, tok, tmp_path / "base")
    aligned = families.perturbed(model, 0.5, seed=1)
    sets = SimpleNamespace(
        held_harmful={"set-a": Probes(["w1 w2 w3", "w4 w5"]), "set-b": Probes(["w6 w7"])},
        held_harmless=Probes(["w8 w9", "w10"]),
        held_pairs=[("w11 w12", "w13 w14")],
    )
    out = measure_start(converted, aligned, tok, sets, fresh)
    assert list(out) == ["held_out", "fresh_check", "fresh_provenance"]
    for name in ("base", "aligned"):
        held = {r["set"]: r for r in out["held_out"][name]}
        assert {held["set-a"]["n"], held["set-b"]["n"]} == {2, 1}
        (advbench,) = out["fresh_check"][name]
        assert advbench["set"] == "advbench" and advbench["n"] == 3
        assert all(r["checkpoint"] == name for r in out["held_out"][name])
    # the perturbed model answers differently from the base somewhere: each checkpoint really ran
    assert out["held_out"]["base"] != out["held_out"]["aligned"]
    assert out["fresh_provenance"] == fresh.provenance
