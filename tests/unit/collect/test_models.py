"""collect_models: models held in memory go through the same statistics loop as collect (the lab's
directions and subspace statistics use it instead of building HistoryStats by hand)."""

import pytest
import torch
from transformers import GPT2LMHeadModel

import tiny
from revlens.collect import collect, collect_model, collect_models
from revlens.directions import MeanDiff, PairedPCA
from revlens.errors import ConfigError
from revlens.probes import Probes


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    return {
        name: GPT2LMHeadModel.from_pretrained(tiny_dirs[name]).eval()
        for name in ("base", "aligned")
    }


def test_models_in_memory_give_the_statistics_of_their_history(tiny_history, pair):
    on_disk = collect(
        tiny_history.restricted(),
        tiny.PROMPTS,
        layers=[0, 1, 2],
        n_bootstrap=0,
        moments="all",
        progress=False,
    )
    mem = collect_models(
        pair, Probes(tiny.PROMPTS), tokenizer=tiny.tiny_tokenizer(), layers=[0, 1, 2]
    )
    assert mem.layers == [0, 1, 2] and mem.base_names == ["base"] and mem.aligned_name == "aligned"
    for name in ("base", "aligned"):
        assert torch.allclose(mem.mean(name), on_disk.mean(name), atol=1e-5)
        assert torch.allclose(mem[name].covariance, on_disk[name].covariance, atol=1e-5)
        assert mem[name].refs.to_tensor().shape == (3, len(tiny.PROMPTS), mem.d_model)
    # the estimators fit on it as on collect's statistics
    md, ref = MeanDiff().fit(mem).direction_, MeanDiff().fit(on_disk).direction_
    assert (md.basis - ref.basis).abs().max() < 1e-4
    assert PairedPCA(n_components=2, n_bootstrap=0).fit(mem).direction_.rank == 2


def test_one_model_and_bad_roles(pair):
    st = collect_model(
        pair["base"],
        Probes(tiny.PROMPTS),
        tokenizer=tiny.tiny_tokenizer(),
        layers=[1],
        batch_size=2,
    )
    one = collect_model(
        pair["base"], Probes(tiny.PROMPTS), tokenizer=tiny.tiny_tokenizer(), layers=[1]
    )
    assert st.count == len(tiny.PROMPTS) and torch.allclose(st.mean, one.mean, atol=1e-6)
    with pytest.raises(ConfigError, match="exactly"):
        collect_models(
            {"base": pair["base"]},
            Probes(tiny.PROMPTS),
            tokenizer=tiny.tiny_tokenizer(),
            layers=[1],
        )
