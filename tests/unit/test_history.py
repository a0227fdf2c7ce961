import json

import pytest
import torch
from safetensors.torch import save_file

import tiny
from revlens.errors import CheckpointError, ConfigError, HistoryError, ShapeMismatchError
from revlens.history import History
from revlens.model import load_state_dict


def test_from_dirs_roles_order_len_repr(tiny_dirs):
    h = History.from_dirs(
        base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs=tiny_dirs["runs"]
    )
    names = [c.name for c in h]
    assert names == [
        "base",
        "aligned",
        "seed0/step-1",
        "seed0/step-2",
        "seed0/step-3",
        "seed1/step-1",
        "seed1/step-2",
        "seed1/step-3",
    ]
    assert len(h) == 8
    assert repr(h) == "History(8 checkpoints: base ×1, aligned, seed0 [1, 2, 3], seed1 [1, 2, 3])"
    assert h["seed1/step-2"].step == 2 and h["seed1/step-2"].run == "seed1"
    assert h.runs["seed0"].start == "aligned"


def test_steps_given_unsorted_are_ordered(tiny_dirs):
    s = tiny_dirs["runs"]["seed0"]
    h = History.from_dirs(
        base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {3: s[3], 1: s[1]}}
    )
    assert list(h.runs["r"].steps) == [1, 3]


def test_controls_start_from_base(tiny_dirs):
    h = History.from_dirs(
        base=tiny_dirs["base"],
        aligned=tiny_dirs["aligned"],
        runs={},
        controls={"ctl": tiny_dirs["runs"]["seed0"]},
    )
    assert h.runs["ctl"].control and h.runs["ctl"].start == "base"
    assert "control ctl" in repr(h)


def test_several_bases(tiny_dirs):
    h = History.from_dirs(
        base=[tiny_dirs["base"], tiny_dirs["runs"]["seed0"][1]], aligned=tiny_dirs["aligned"]
    )
    assert [c.name for c in h.base] == ["base0", "base1"]


def test_trainer_output_orders_steps_numerically(tmp_path, tiny_dirs):
    run = tmp_path / "out"
    model = tiny.tiny_model(3)
    for step in (9, 10, 2):
        tiny.save(model, run / f"checkpoint-{step}", tokenizer=False)
    (run / "runs").mkdir()  # unrelated folder is ignored
    h = History.from_trainer_output(
        base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"ft": run}
    )
    assert list(h.runs["ft"].steps) == [2, 9, 10]


def test_trainer_output_without_checkpoints(tmp_path, tiny_dirs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint-N folders"):
        History.from_trainer_output(
            base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"ft": tmp_path / "empty"}
        )


def test_from_state_dicts_files_and_memory(tmp_path, tiny_dirs):
    sd = load_state_dict(tiny_dirs["runs"]["seed0"][1])
    save_file(sd, str(tmp_path / "s1.safetensors"))
    torch.save(load_state_dict(tiny_dirs["runs"]["seed0"][2]), tmp_path / "s2.pt")
    module = tiny.perturbed(tiny.tiny_model(0), 0.01, 5)
    h = History.from_state_dicts(
        tiny_dirs["aligned"],
        base=load_state_dict(tiny_dirs["base"]),
        aligned=tmp_path / "s1.safetensors",
        runs={"r": {1: tmp_path / "s2.pt", 2: module, 3: module.state_dict()}},
    )
    assert len(h) == 5
    lm = h.boot()
    for ck in h:
        lm.load_weights(ck.state_dict(), name=ck.name)
    assert h["r/step-2"].fingerprint() == h["r/step-3"].fingerprint()
    assert h["r/step-1"].fingerprint() != h["r/step-2"].fingerprint()


def test_hub_on_a_local_mirror(tmp_path, tiny_dirs):
    mirror = tmp_path / "pythia-mini"
    for rev, src in (
        ("step0", tiny_dirs["base"]),
        ("step100", tiny_dirs["aligned"]),
        ("step101", tiny_dirs["runs"]["seed0"][1]),
    ):
        tiny.save(tiny.tiny_model(0).__class__.from_pretrained(src), mirror / rev)
    h = History.from_hub(
        str(mirror), base_revision="step0", aligned_revision="step100", runs={"ft": {1: "step101"}}
    )
    assert [c.name for c in h] == ["base@step0", "aligned", "ft/step-1"]
    lm = h.boot()
    assert lm.loaded == "aligned"


def test_hub_without_network_names_repo_and_revision(tiny_dirs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    h = History.from_hub(
        "EleutherAI/pythia-14m-not-here", base_revision="step1000", aligned_revision="step143000"
    )
    with pytest.raises(CheckpointError, match=r"EleutherAI/pythia-14m-not-here@step143000"):
        h.aligned.state_dict()


def test_bad_input(tmp_path, tiny_dirs):
    with pytest.raises(CheckpointError, match="does not exist"):
        History.from_dirs(base=tmp_path / "missing", aligned=tiny_dirs["aligned"])
    (tmp_path / "noweights").mkdir()
    with pytest.raises(CheckpointError, match="holds no weights"):
        History.from_dirs(base=tiny_dirs["base"], aligned=tmp_path / "noweights")
    s = tiny_dirs["runs"]["seed0"]
    with pytest.raises(HistoryError, match="step 1 appears twice"):
        History.from_dirs(
            base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {1: s[1], "1": s[2]}}
        )
    with pytest.raises(HistoryError, match="must be >= 1"):
        History.from_dirs(
            base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {0: s[1]}}
        )
    with pytest.raises(HistoryError, match="no steps"):
        History.from_dirs(base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {}})
    with pytest.raises(HistoryError, match="at least one base"):
        History.from_dirs(base=[], aligned=tiny_dirs["aligned"])


def test_mismatched_architectures_name_parameter_and_shapes(tmp_path, tiny_dirs):
    other = tiny.save(tiny.tiny_model(0, d=48), tmp_path / "wide", tokenizer=False)
    with pytest.raises(
        ShapeMismatchError,
        match=r"'transformer\.\S+' has shape \([\d, ]+\) in base but \([\d, ]+\) in r/step-1",
    ):
        History.from_dirs(
            base=tiny_dirs["base"], aligned=tiny_dirs["aligned"], runs={"r": {1: other}}
        )


def _spec_dir(tmp_path, tiny_dirs):
    import shutil

    root = tmp_path / "h"
    for name, src in (
        ("base", tiny_dirs["base"]),
        ("aligned", tiny_dirs["aligned"]),
        ("runs/seed0/step-1", tiny_dirs["runs"]["seed0"][1]),
        ("runs/seed0/step-2", tiny_dirs["runs"]["seed0"][2]),
        ("controls/control-seed0/step-1", tiny_dirs["runs"]["seed1"][1]),
    ):
        shutil.copytree(src, root / name)
    return root


def test_history_json_with_kinds_metrics_and_metadata(tmp_path, tiny_dirs):
    """The general on-disk format any tool may write (the lab writes it too)."""
    root = _spec_dir(tmp_path, tiny_dirs)
    (root / "probes.jsonl").write_text('{"text": "w1 w2"}\n')
    (root / "metrics.json").write_text(
        json.dumps(
            [
                {"checkpoint": "aligned", "harm": 0.1},
                {"checkpoint": "seed0/step-1", "harm": 0.4},
                {"checkpoint": "blk/step-1", "harm": 0.2},
            ]
        )
    )
    (root / "history.json").write_text(
        json.dumps(
            {
                "format": "revlens-history",
                "format_version": 1,
                "base": "base",
                "aligned": "aligned",
                "runs": {
                    "seed0": {"1": "runs/seed0/step-1", "2": "runs/seed0/step-2"},
                    "blk": {
                        "steps": {"1": "runs/seed0/step-2"},
                        "kind": "blocked",
                        "info": {"method": "x"},
                    },
                },
                "controls": {"control-seed0": {"1": "controls/control-seed0/step-1"}},
                "metrics": "metrics.json",
                "metadata": {"probes": "probes.jsonl", "harm_metric": "harm"},
            }
        )
    )
    h = History.load(root)
    assert h.runs["control-seed0"].control and h.runs["control-seed0"].start == "base"
    assert h.run_kinds() == {"seed0": "run", "blk": "blocked", "control-seed0": "control"}
    assert h.runs["blk"].info == {"method": "x"}
    assert (
        h.metadata["probes"] == str(root / "probes.jsonl") and h.metadata["harm_metric"] == "harm"
    )
    m = h.metrics
    assert list(m.columns[:5]) == ["checkpoint", "role", "run", "kind", "step"]
    assert m.set_index("checkpoint").loc["blk/step-1", "kind"] == "blocked"
    assert History.load(root / "history.json").runs.keys() == h.runs.keys()
    with pytest.raises(HistoryError, match="no history.json"):
        History.load(tmp_path)


def test_history_json_refuses_bad_specs(tmp_path, tiny_dirs):
    root = _spec_dir(tmp_path, tiny_dirs)

    def write(obj):
        (root / "history.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))

    write("{not json")
    with pytest.raises(HistoryError, match="not valid JSON"):
        History.load(root)
    write({"base": "base"})
    with pytest.raises(HistoryError, match=r"missing key\(s\) \['aligned'\]"):
        History.load(root)
    write({"base": "base", "aligned": "aligned", "colour": 1})
    with pytest.raises(HistoryError, match="unknown key"):
        History.load(root)
    write({"base": "../..", "aligned": "aligned"})
    with pytest.raises(ConfigError, match="leaves its directory"):
        History.load(root)
    write({"base": "/etc", "aligned": "aligned"})
    with pytest.raises(ConfigError, match="must be relative"):
        History.load(root)
    write({"base": "base", "aligned": "aligned", "metrics": "m.json"})
    (root / "m.json").write_text(json.dumps([{"checkpoint": "nope", "x": 1}]))
    with pytest.raises(HistoryError, match="nope"):
        History.load(root)


def test_base_aligned_layout_dir(tmp_path, tiny_dirs):
    root = _spec_dir(tmp_path, tiny_dirs)
    flat = tmp_path / "flat"
    import shutil

    for name in ("base", "aligned"):
        shutil.copytree(root / name, flat / name)
    shutil.copytree(root / "runs" / "seed0", flat / "seed0")
    shutil.copytree(root / "controls" / "control-seed0", flat / "control-seed0")
    h = History.load(flat)
    assert list(h.runs["seed0"].steps) == [1, 2] and h.runs["control-seed0"].control


def test_tied_weights_saved_either_way_mix(tmp_path, tiny_dirs):
    from safetensors.torch import save_model

    model = tiny.tiny_model(0).__class__.from_pretrained(tiny_dirs["runs"]["seed0"][1])
    save_model(model, str(tmp_path / "s1.safetensors"))  # keeps lm_head.weight, drops the tied wte
    h = History.from_dirs(
        base=tiny_dirs["base"],
        aligned=tiny_dirs["aligned"],
        runs={"r": {1: tmp_path / "s1.safetensors"}},
    )
    lm = h.boot()
    lm.load_weights(h["r/step-1"].state_dict(), name="r/step-1")
    x = torch.tensor([[2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(lm.bridge(x), model(x).logits, atol=1e-5)


# ------------------------------------------------------------------ PEFT adapter checkpoints
@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory):
    """aligned = the llama every adapter was made on; a plain adapter dir, a Trainer run of
    adapter-only checkpoint-N folders, and a folder holding both full weights and an adapter."""
    import shutil

    from unit.loading.lora_fixtures import make_adapter, train_adapter

    import families

    root = tmp_path_factory.mktemp("lora-history")
    merged = make_adapter(
        "llama", root / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
    )
    run = train_adapter(root / "trainer", steps=2)
    both = root / "both"
    families.save(merged, None, both, tokenizer=False)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(root / "adapter" / f, both / f)
    return {
        "base": families.checkpoint_dir("llama", "other"),
        "aligned": families.checkpoint_dir("llama", "base"),
        "adapter": root / "adapter",
        "trainer": run,
        "both": both,
        "merged": merged,
        "root": root,
    }


def test_adapter_checkpoints_load_on_their_start(lora_dirs):
    import families

    d = lora_dirs
    h = History.from_dirs(
        base=d["base"],
        aligned=d["aligned"],
        runs={"r": {1: d["adapter"], 2: d["both"]}},
        tokenizer=families.tokenizer(),
    )
    assert [c.kind for c in h.runs["r"].steps.values()] == [
        "adapter",
        "full",
    ]  # both: the full weights win
    assert h.adapters() == [h["r/step-1"]] and "adapter on aligned" in repr(h["r/step-1"])
    lm = h.boot()
    for name in ("r/step-1", "r/step-2"):
        lm.load(h[name])
        assert (
            float((families.logits(lm.bridge) - families.logits(d["merged"])).abs().max()) <= 1e-5
        ), name
    lm.load(h.aligned)
    assert torch.equal(families.logits(lm.bridge), families.logits(families.boot(d["aligned"])))
    with pytest.raises(CheckpointError, match="is an adapter: load it into a model"):
        h["r/step-1"].state_dict()


def test_trainer_run_of_adapter_only_folders(lora_dirs):
    import families

    h = History.from_trainer_output(
        base=lora_dirs["base"],
        aligned=lora_dirs["aligned"],
        runs={"lora": lora_dirs["trainer"]},
        tokenizer=families.tokenizer(),
    )
    steps = h.runs["lora"].steps
    assert list(steps) == [1, 2] and all(c.kind == "adapter" for c in steps.values())
    assert (lora_dirs["trainer"] / "checkpoint-1" / "optimizer.pt").is_file()  # present, never read
    assert [f.name for f in steps[1].weight_files()] == ["adapter_model.safetensors"]


def test_identity_of_an_adapter_holds_its_start(lora_dirs, tmp_path):
    """The same adapter files on another start model are another model: another model_fingerprint,
    so another statistics cache entry."""
    import families
    import revlens

    d = lora_dirs
    a = History.from_dirs(
        base=d["base"],
        aligned=d["aligned"],
        runs={"r": {1: d["adapter"], 2: d["both"]}},
        tokenizer=families.tokenizer(),
    )
    b = History.from_dirs(
        base=d["aligned"],
        aligned=d["base"],
        runs={"r": {1: d["adapter"], 2: d["both"]}},
        tokenizer=families.tokenizer(),
    )
    assert a["r/step-1"].fingerprint() == b["r/step-1"].fingerprint()
    assert a["r/step-1"].model_fingerprint() != b["r/step-1"].model_fingerprint()
    assert a.identity() != b.identity()
    probes = ["w10 w11 w12", "w13 w14", "w20 w21 w22 w23"]
    cache = tmp_path / "cache"
    sa = revlens.collect(a, probes, cache_dir=cache, n_bootstrap=0, progress=False)
    sb = revlens.collect(b, probes, cache_dir=cache, n_bootstrap=0, progress=False)
    assert not torch.allclose(sa.mean("r/step-1"), sb.mean("r/step-1"))
    again = revlens.collect(
        b, probes, cache_dir=cache, n_bootstrap=0, progress=False
    )  # all from the cache
    assert torch.equal(again.mean("r/step-1"), sb.mean("r/step-1"))


def test_adapter_histories_refuse_what_cannot_be_loaded(lora_dirs):
    import families

    d = lora_dirs
    with pytest.raises(
        HistoryError, match=r"adapter on aligned, which is itself an adapter: merge aligned"
    ):
        History.from_dirs(base=d["aligned"], aligned=d["adapter"], runs={"r": {1: d["adapter"]}})
    with pytest.raises(
        CheckpointError, match=r"is a Trainer output dir \(checkpoint-N folders \[1, 2\]\)"
    ):
        History.from_dirs(base=d["base"], aligned=d["aligned"], runs={"r": {1: d["trainer"]}})
    gpt2 = families.checkpoint_dir("gpt2", "base")
    h = History.from_dirs(base=gpt2, aligned=gpt2, runs={"r": {1: d["adapter"]}})
    lm = h.boot()
    with pytest.raises(ShapeMismatchError, match="checkpoint r/step-1"):  # before any forward
        lm.check_architecture(h)


def test_an_adapter_aligned_on_its_base(lora_dirs):
    """Aligned may itself be a LoRA on the (first) base, when the runs are full checkpoints."""
    import families

    d = lora_dirs
    h = History.from_dirs(
        base=d["aligned"],
        aligned=d["adapter"],
        runs={"r": {1: d["both"]}},
        tokenizer=families.tokenizer(),
    )
    assert "aligned (adapter)" in repr(h)
    lm = h.boot()
    assert float((families.logits(lm.bridge) - families.logits(d["merged"])).abs().max()) <= 1e-5
