"""Safety layers (SPPFT, arXiv 2408.17003): the locator's cosine curves and range against a hand
computation from Hugging Face hidden states on a tiny GPT-2; the freeze in a plain loop (full
fine-tuning, AdamW with weight decay), with LoRA in the Trainer after another strategy; bad inputs."""

import copy

import pytest
import torch
from transformers import Trainer
from unit.defenses.kit import Seqs, aligned_model, args, lora_model, train_plain

import tiny
from revlens.block import add_to_trainer, method_names
from revlens.defenses import AsFT, SafetyLayerFreeze, locate_safety_layers
from revlens.errors import ConfigError, ProbeError

TOK = tiny.tiny_tokenizer()
NORMAL = ["w1 w2 w3 w4", "w1 w2 w3 w5 w6", "w1 w2 w4 w3", "w2 w1 w3 w4 w5"]
MALICIOUS = ["w20 w21 w22", "w21 w22 w23 w24", "w22 w20 w25"]


def _hand_curve(model):
    """Per layer (0 .. n_layers): mean pairwise cos of the last-position hidden vectors."""
    keep = {}

    def hook(module, inputs, output):
        keep["last"] = (output[0] if isinstance(output, tuple) else output)[0, -1]

    def last_states(prompts):
        out = []
        for p in prompts:
            ids = TOK(p, return_tensors="pt")["input_ids"]
            h = model.transformer.h[-1].register_forward_hook(hook)
            try:
                with torch.no_grad():
                    hs = model(ids, output_hidden_states=True).hidden_states
            finally:
                h.remove()
            # HF's last hidden state has ln_f applied: revlens' layer n_layers is the block's output
            out.append(torch.stack([*[x[0, -1] for x in hs[:-1]], keep["last"]]))
        return torch.stack(out)  # [prompt, layer, d]

    n, m = last_states(NORMAL), last_states(MALICIOUS)
    nn_, nm = [], []
    for layer in range(n.shape[1]):
        cos = torch.nn.functional.cosine_similarity
        nn_.append(
            sum(
                float(cos(n[i, layer], n[j, layer], dim=0))
                for i in range(len(n))
                for j in range(i + 1, len(n))
            )
            / (len(n) * (len(n) - 1) / 2)
        )
        nm.append(
            sum(
                float(cos(n[i, layer], m[j, layer], dim=0))
                for i in range(len(n))
                for j in range(len(m))
            )
            / (len(n) * len(m))
        )
    return torch.tensor(nn_), torch.tensor(nm)


def test_locator_equals_the_hand_computation():
    model = tiny.tiny_model(4, n_layer=4)
    found = locate_safety_layers(model, TOK, NORMAL, MALICIOUS, rise=0.3)
    nn_, nm = _hand_curve(model)
    torch.testing.assert_close(
        torch.tensor(found.curve["cos_nn"].to_numpy()), nn_.double(), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(found.curve["cos_nm"].to_numpy()), nm.double(), rtol=1e-4, atol=1e-5
    )
    gap = (nn_ - nm).tolist()
    peak = 1 + max(range(4), key=lambda i: gap[1 + i])
    assert gap[peak] > 0
    start = min(layer for layer in range(1, peak + 1) if gap[layer] >= 0.3 * gap[peak])
    assert (found.first, found.last) == (start - 1, peak - 1)
    assert 0 <= found.first <= found.last <= 3


def test_freeze_full_fine_tuning_in_a_plain_loop_with_weight_decay(pair):
    model = aligned_model(pair)
    start = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    freeze = SafetyLayerFreeze(1, 1)
    with freeze.attached(model, opt):
        train_plain(model, opt, steps=3)
    got = model.state_dict()
    frozen = [k for k in got if k.startswith("transformer.h.1.")]
    assert frozen and all(torch.equal(got[k], start[k]) for k in frozen)
    assert not torch.equal(
        got["transformer.h.0.mlp.c_fc.weight"], start["transformer.h.0.mlp.c_fc.weight"]
    )
    assert [r.value > 0 for r in freeze.records_] == [
        True
    ] * 3  # the optimizer did move them (decay, momentum)


def test_freeze_lora_in_the_trainer_after_asft(pair, tmp_path):
    model = lora_model(pair, init=False)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    freeze = SafetyLayerFreeze(0, 0)
    trainer = Trainer(model=model, args=args(tmp_path, steps=3, lr=0.05), train_dataset=Seqs())
    add_to_trainer(
        trainer, AsFT(pair["base"], pair["aligned"], lam=1.0), freeze
    )  # the freeze last: final word
    trainer.train()
    got = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    in_block0 = [n for n in got if ".h.0." in n]
    assert len(in_block0) == 4 and all(".lora_" in n for n in in_block0)
    assert all(torch.equal(got[n], start[n]) for n in in_block0)
    assert any(not torch.equal(got[n], start[n]) for n in got if ".h.1." in n)
    assert all(
        "revlens/freeze_moved" in r and "revlens/asft_penalty" in r
        for r in trainer.state.log_history
        if "loss" in r
    )


def test_registered_and_bad_inputs(pair):
    assert "safety_freeze" in method_names()
    with pytest.raises(ConfigError, match="empty"):
        SafetyLayerFreeze(3, 1)
    with pytest.raises(ConfigError, match="first"):
        SafetyLayerFreeze(-1, 1)
    model = aligned_model(pair)
    start = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(ConfigError, match=r"outside the model: it has blocks 0\.\.1"),
        SafetyLayerFreeze(1, 5).attached(model, opt),
    ):
        train_plain(model, opt)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())  # nothing trained
    with pytest.raises(ProbeError, match="2 normal"):
        locate_safety_layers(model, TOK, ["w1"], ["w2"])
    with pytest.raises(ConfigError, match="rise"):
        locate_safety_layers(model, TOK, NORMAL, MALICIOUS, rise=0.0)
