"""Arditi-style selection of the refusal direction: directional ablation at every layer, activation
addition, KL, the filter and the chosen candidate — checked against hooks written by hand on the
plain Hugging Face model."""

import warnings

import pytest
import torch
import transformers as tf

import families
from revlens.causal import RefusalSelection, directional_ablation, select_refusal_direction
from revlens.causal.refusal import RefusalSelectionWarning
from revlens.collect import DegenerateLayerWarning
from revlens.directions import refusal_directions
from revlens.errors import ConfigError, MetricError, ProbeError
from revlens.history import History
from revlens.model import LensModel
from revlens.probes import Probes
from revlens.sites import access

EST = (
    ["w10 w11", "w12 w13 w14 w15", "w20", "w30 w31 w32"],
    ["w50", "w51 w52 w53", "w60 w61", "w70 w71"],
)
SEL = (["w15 w16", "w22 w23", "w35 w36 w37"], ["w55 w56", "w65", "w75 w76 w77"])
TOKENS = ["w40", "w41"]


def labelled(pair):
    harmful, harmless = pair
    return Probes.from_chat(
        [*harmful, *harmless], labels=["harmful"] * len(harmful) + ["harmless"] * len(harmless)
    )


@pytest.fixture(scope="module")
def llama():
    return LensModel.boot(families.checkpoint_dir("llama"))


@pytest.fixture(scope="module")
def refusal(llama):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        return refusal_directions(llama, labelled(EST), position=("post_instruction", 2))


@pytest.fixture(scope="module")
def selection(llama, refusal):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RefusalSelectionWarning)
        return select_refusal_direction(llama, refusal, labelled(SEL), metric=TOKENS)


@pytest.fixture(scope="module")
def hf():
    return tf.AutoModelForCausalLM.from_pretrained(families.checkpoint_dir("llama")).eval()


def test_directional_ablation_leaves_no_component_anywhere(llama, refusal):
    r = refusal["-1"][1]
    tokens = labelled(SEL).tokenize(llama.tokenizer).tokens
    acc = access(llama)
    sites = acc.sites("all", "resid_post")
    clean, _ = acc.capture(tokens, sites)
    with directional_ablation(llama, r):
        _, acts = acc.capture(tokens, sites)
    for layer, h in acts.items():
        assert float((h @ r).abs().max()) < 1e-5, layer
    again, _ = acc.capture(tokens, sites)  # hooks are gone after the block
    assert torch.equal(clean, again)


@torch.no_grad()
def hand_scores(hf, texts, *, pre=None, add=None):
    """Refusal log-odds and last-token log-probs, one prompt at a time, with hooks on the HF model:
    ``pre`` projects a unit vector out of every block's input and its attention / MLP outputs;
    ``add = (layer, vector)`` adds a vector to the input of that block."""
    tok = tf.AutoTokenizer.from_pretrained(families.checkpoint_dir("llama"))
    ids = tok.convert_tokens_to_ids(TOKENS)
    handles = []

    def project(x):
        return x - (x @ pre)[..., None] * pre

    if pre is not None:
        for block in hf.model.layers:
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, a, k: (
                        ((project(a[0]), *a[1:]), k)
                        if a
                        else (a, {**k, "hidden_states": project(k["hidden_states"])})
                    ),
                    with_kwargs=True,
                )
            )
            handles.append(
                block.self_attn.register_forward_hook(lambda m, a, out: (project(out[0]), *out[1:]))
            )
            handles.append(block.mlp.register_forward_hook(lambda m, a, out: project(out)))
    if add is not None:
        layer, vec = add
        handles.append(
            hf.model.layers[layer].register_forward_pre_hook(
                lambda m, a, k: (
                    ((a[0] + vec, *a[1:]), k)
                    if a
                    else (a, {**k, "hidden_states": k["hidden_states"] + vec})
                ),
                with_kwargs=True,
            )
        )
    scores, logps = [], []
    try:
        for text in texts:
            x = tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True
            )["input_ids"]
            logits = hf(torch.tensor([x])).logits[0, -1].double()
            lp = torch.log_softmax(logits, -1)
            p = lp.exp()[ids].sum()
            scores.append(float(torch.log(p + 1e-8) - torch.log(1 - p + 1e-8)))
            logps.append(lp)
    finally:
        for h in handles:
            h.remove()
    return torch.tensor(scores), torch.stack(logps)


def test_scores_equal_hooks_written_by_hand(selection, refusal, hf):
    harmful, harmless = SEL
    row = selection.table.query("position == -1 and layer == 1").iloc[0]
    unit, raw = refusal["-1"][1].double(), refusal.raw("-1", 1)
    clean_bad, _ = hand_scores(hf, harmful)
    clean_good, clean_lp = hand_scores(hf, harmless)
    bypass, _ = hand_scores(hf, harmful, pre=unit.float())
    _, ablated_lp = hand_scores(hf, harmless, pre=unit.float())
    induce, _ = hand_scores(hf, harmless, add=(1, raw.float()))
    kl = float((clean_lp.exp() * (clean_lp - ablated_lp)).sum(-1).mean())
    assert row["baseline_harmful"] == pytest.approx(float(clean_bad.mean()), abs=1e-5)
    assert row["baseline_harmless"] == pytest.approx(float(clean_good.mean()), abs=1e-5)
    assert row["bypass"] == pytest.approx(float(bypass.mean()), abs=1e-5)
    assert row["induce"] == pytest.approx(float(induce.mean()), abs=1e-5)
    assert row["kl"] == pytest.approx(kl, abs=1e-6) and kl > 0


def test_table_and_the_chosen_candidate(selection, refusal):
    t = selection.table
    assert isinstance(selection, RefusalSelection)
    assert len(t) == sum(len(refusal[p].layers) for p in refusal.positions)
    assert set(t[["position", "layer"]].itertuples(index=False, name=None)) == {
        (int(p), layer) for p in refusal.positions for layer in refusal[p].layers
    }
    assert (t["score"] == t["baseline_harmful"] - t["bypass"]).all()
    cut = int(2 * 0.8)
    assert (t["pruned"] == (t["layer"] >= cut)).all()
    assert (t["eligible"] == (~t["pruned"] & (t["kl"] < 0.1) & (t["induce"] > 0))).all()
    pool = t[t["eligible"]] if t["eligible"].any() else t
    assert t["selected"].sum() == 1 and t.loc[t["selected"], "score"].item() == pool["score"].max()
    assert (int(selection.position), selection.layer) == tuple(
        t.loc[t["selected"], ["position", "layer"]].iloc[0]
    )
    assert torch.equal(selection.vector, refusal[selection.position][selection.layer])
    assert selection.directions.meta["selected_layer"] == selection.layer
    assert torch.equal(selection.directions.basis, refusal[selection.position].basis)
    fig = selection.figure()
    assert fig.data[0].z.shape == (len(refusal.positions), t["layer"].nunique())
    assert list(fig.data[-1].x) == [selection.layer] and list(fig.data[-1].y) == [
        selection.position
    ]
    assert len(fig.data[1].x) == int((~t["eligible"]).sum())


def test_open_filter_takes_the_best_score_and_a_closed_one_warns(llama, refusal):
    open_ = select_refusal_direction(
        llama,
        refusal,
        labelled(SEL),
        metric=TOKENS,
        prune_fraction=0.0,
        kl_threshold=1e9,
        induce_threshold=-1e9,
        positions=[-1],
    )
    t = open_.table
    # prune_fraction 0 still leaves out layer n_layers (the stream after the last block: no block reads it)
    assert (t["eligible"] == (t["layer"] < 2)).all() and len(t) == len(refusal["-1"].layers)
    assert not open_.meta["fallback"]
    assert t.loc[t["selected"], "score"].item() == t.loc[t["eligible"], "score"].max()
    with pytest.warns(RefusalSelectionWarning, match="no refusal-direction candidate passed"):
        closed = select_refusal_direction(
            llama, refusal, labelled(SEL), metric=TOKENS, induce_threshold=1e9, layers=[1]
        )
    assert closed.meta["fallback"] and not closed.table["eligible"].any()


def test_typed_errors_before_any_forward(llama, refusal, tmp_path):
    calls = []
    handle = llama.hf_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ProbeError, match="harmless"):
            select_refusal_direction(
                llama, refusal, Probes.from_chat(SEL[0], labels=["harmful"] * 3), metric=TOKENS
            )
        with pytest.raises(ConfigError, match="no refusal direction at position"):
            select_refusal_direction(llama, refusal, labelled(SEL), metric=TOKENS, positions=[-7])
        with pytest.raises(ConfigError, match=r"layer\(s\) \[9\]"):
            select_refusal_direction(llama, refusal, labelled(SEL), metric=TOKENS, layers=[9])
        with pytest.raises(MetricError):
            select_refusal_direction(llama, refusal, labelled(SEL), metric=["not-a-word"])
        with pytest.raises(ConfigError, match="prune_fraction"):
            select_refusal_direction(
                llama, refusal, labelled(SEL), metric=TOKENS, prune_fraction=1.0
            )
        assert not calls
    finally:
        handle.remove()
    hist = History.load(families.write_history(tmp_path / "h", "gpt2", n_runs=1, steps=(1, 2)))
    on_base = refusal_directions(hist, labelled(EST), position="last", checkpoint="base")
    with pytest.raises(ConfigError, match="read on checkpoint 'base'"):
        select_refusal_direction(hist, on_base, labelled(SEL), metric=TOKENS, checkpoint="aligned")
