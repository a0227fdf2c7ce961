"""``revlens.lab.real_defenses.compare_real`` end to end on the real weights at tiny settings: the shipped
safety adapter merged into a content-keyed cache, prompts rendered through SmolLM2's chat template, one
seed of the undefended run and ``update`` beside its random control (one fine-tuning step, 2 + 2
held-out harmful prompts, 4 generated tokens). The full comparison (≈ 45 min) is in docs/defenses.md.

Needs the real track (``revlens.lab.real``), ``gguf`` and the SmolLM2 package; skipped without them."""

import pytest
import torch

from revlens.errors import MissingExtraError

pytest.importorskip("gguf")
pytest.importorskip("revlens.lab.real.data")

pytestmark = pytest.mark.xdist_group("smollm2")


def test_compare_real_at_tiny_settings(tmp_path, monkeypatch):
    from revlens.lab.real_defenses import RealDefensePlan, compare_real

    monkeypatch.setenv("REVLENS_CACHE_DIR", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    plan = RealDefensePlan(
        steps=1,
        n_harmful=2,
        n_harmless=2,
        n_probes=2,
        n_task=2,
        n_alignment=2,
        max_new_tokens=4,
        layers=(15, 30),
    )
    try:
        cmp = compare_real(
            tmp_path / "out",
            plan=plan,
            defenses=("update",),
            seeds=(0,),
            trajectory_points=0,
            progress=False,
        )
    except MissingExtraError as exc:
        pytest.skip(str(exc))
    finally:
        torch.set_num_threads(n)
    t = cmp.table
    assert sorted(zip(t["defense"], t["control"])) == [
        ("none", False),
        ("update", False),
        ("update", True),
    ]
    assert (t["harm_n"] == 4).all() and t["harm_k"].between(0, 4).all()
    assert cmp.meta["harm_metric"] == "EvalSets.harm" and cmp.meta["layers"] == [15, 30]
    assert len(list((tmp_path / "cache" / "merged").iterdir())) == 1  # the adapter merged once
    assert len(list((tmp_path / "out" / "runs").glob("*/*.json"))) == 3  # resumable per-run results
