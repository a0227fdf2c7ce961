"""The refusal direction (Arditi et al.): harmful − harmless means on one checkpoint, per
post-instruction position and layer, checked against a hand computation from raw HF hidden states."""

import warnings

import pytest
import torch
import transformers as tf

import families
from revlens.collect import DegenerateLayerWarning
from revlens.directions import Directions, RefusalDirections, refusal_directions
from revlens.directions.refusal import REFUSAL_SIGN
from revlens.errors import ConfigError, HistoryError, ProbeError, SiteError
from revlens.history import History
from revlens.model import LensModel
from revlens.probes import Probes

HARMFUL = ["w10 w11", "w12 w13 w14 w15", "w20", "w30 w31 w32", "w33 w34"]
HARMLESS = ["w50", "w51 w52 w53", "w60 w61", "w70 w71 w72 w73 w74"]


def labelled(harmful=HARMFUL, harmless=HARMLESS, **kw):
    return Probes.from_chat(
        [*harmful, *harmless],
        labels=["harmful"] * len(harmful) + ["harmless"] * len(harmless),
        **kw,
    )


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def lm(family):
    return LensModel.boot(families.checkpoint_dir(family))


@torch.no_grad()
def hand_means(family, texts, k):
    """Means over prompts of HF ``output_hidden_states`` at the last ``k`` tokens of each rendered chat
    prompt (the template's own ids), one ``[n_layers, d]`` per position ``-k .. -1``."""
    path = families.checkpoint_dir(family)
    hf = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    tok = tf.AutoTokenizer.from_pretrained(path)
    per = {j: [] for j in range(k, 0, -1)}
    for text in texts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True
        )["input_ids"]
        hs = hf(
            torch.tensor([ids]), output_hidden_states=True
        ).hidden_states  # n_layers + 1 entries
        # the last entry has the final norm applied in some families: compare the stream layers 0..n-1
        stack = torch.stack([h[0] for h in hs[:-1]])  # [layer, pos, d]
        for j in per:
            per[j].append(stack[:, len(ids) - j].double())
    return {str(-j): torch.stack(v).mean(0) for j, v in per.items()}


def test_equals_the_hand_computed_difference_of_means(family, lm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        r = refusal_directions(lm, labelled(), position=("post_instruction", 2))
    assert isinstance(r, RefusalDirections) and r.positions == ["-2", "-1"]
    bad, good = hand_means(family, HARMFUL, 2), hand_means(family, HARMLESS, 2)
    n = lm.n_layers
    for label in r.positions:
        diff = bad[label] - good[label]  # [n_layers, d] at revlens layers 0..n-1
        assert torch.allclose(r.harmful_mean[label][:n], bad[label], atol=1e-5)
        assert torch.allclose(r.harmless_mean[label][:n], good[label], atol=1e-5)
        dirs = r[label]
        assert isinstance(dirs, Directions) and dirs.method == "refusal"
        for layer in dirs.layers:
            if layer >= n:
                continue
            expect = diff[layer] / diff[layer].norm()
            assert torch.allclose(dirs[layer].double(), expect, atol=1e-5), (label, layer)
            assert torch.allclose(r.raw(label, layer), diff[layer], atol=1e-5)
    meta = r["-1"].meta
    assert meta["n_harmful"] == len(HARMFUL) and meta["n_harmless"] == len(HARMLESS)
    assert (
        meta["position"] == "-1" and meta["sign"] == REFUSAL_SIGN and meta["checkpoint"] == "base"
    )


def test_sign_points_to_the_harmful_side_and_flips_with_the_labels(lm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        r = refusal_directions(lm, labelled(), position="last")
        swapped = refusal_directions(
            lm, labelled(), position="last", harmful="harmless", harmless="harmful"
        )
    dirs, back = r["last"], swapped["last"]
    for layer in dirs.layers:
        i = r.layers.index(layer)  # the means cover every collected layer
        offset = r.harmful_mean["last"][i] - r.harmless_mean["last"][i]
        assert float(dirs[layer].double() @ offset) > 0
        assert torch.allclose(back[layer], -dirs[layer], atol=1e-6)


def test_a_layer_without_difference_is_left_out_with_a_warning():
    lm = LensModel.boot(families.checkpoint_dir("llama"))
    with pytest.warns(DegenerateLayerWarning, match=r"layer\(s\) \[0\]"):
        r = refusal_directions(lm, labelled(), position=("post_instruction", 1))
    # RoPE: the embedding of the same template token is one vector for every prompt
    assert r["-1"].layers == (1, 2) and r["-1"].meta["dropped_layers"] == [0]


def test_a_history_reads_its_aligned_checkpoint_by_default(tmp_path):
    dirs = families.write_history(tmp_path / "h", "gpt2", n_runs=1, steps=(1, 2))
    hist = History.load(dirs)
    r = refusal_directions(hist, labelled(), position="last")
    assert r.checkpoint == "aligned" and r.fingerprint == hist.aligned.model_fingerprint()
    other = refusal_directions(hist, labelled(), position="last", checkpoint="base")
    assert other.fingerprint == hist["base"].model_fingerprint()
    assert not torch.allclose(other["last"].vectors, r["last"].vectors)


class _Count:
    def __init__(self, lm):
        self.n = 0
        self.handle = lm.hf_model.register_forward_pre_hook(self)

    def __call__(self, *args):
        self.n += 1


def test_typed_errors_before_any_forward(tmp_path, lm):
    count = _Count(lm)
    try:
        with pytest.raises(ProbeError, match="no probe is labelled 'harmless'"):
            refusal_directions(lm, Probes.from_chat(HARMFUL, labels=["harmful"] * len(HARMFUL)))
        with pytest.raises(ProbeError, match="labelled probes"):
            refusal_directions(lm, Probes.from_chat(HARMFUL))
        with pytest.raises(SiteError):
            refusal_directions(lm, labelled(), layers=[99])
        with pytest.raises(SiteError, match="chat probes"):
            refusal_directions(
                lm,
                Probes(HARMFUL + HARMLESS, labels=["harmful"] * 5 + ["harmless"] * 4),
                position=("post_instruction", 1),
            )
        with pytest.raises(ConfigError, match="needs a history"):
            refusal_directions(lm, labelled(), checkpoint="aligned")
        dirs = families.write_history(tmp_path / "h", "gpt2", n_runs=1, steps=(1, 2))
        with pytest.raises(HistoryError, match="no checkpoint 'nope'"):
            refusal_directions(History.load(dirs), labelled(), checkpoint="nope", model=lm)
        assert count.n == 0
    finally:
        count.handle.remove()
