import numpy as np
import pytest

from revlens.errors import SiteError
from revlens.sites import SITE_KINDS, access, available_layers, resolve_sites


def test_resid_post_layers_cover_embeddings_and_every_block(tiny_lm):
    sites = resolve_sites(tiny_lm.bridge)
    assert [s.layer for s in sites] == [0, 1, 2]
    assert [s.hook_name for s in sites] == [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
    ]
    assert sites[0].label == "embed" and sites[2].label == "L2"
    for s in sites:
        assert s.hook_name in tiny_lm.bridge.hook_dict


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("resid_mid", [0, 1]),
        ("resid_pre", [0, 1]),
        ("ln_final", [2]),
        ("attn_out", [0, 1]),
        ("mlp_out", [0, 1]),
    ],
)
def test_other_site_kinds(tiny_lm, kind, expected):
    assert available_layers(tiny_lm.n_layers, kind) == expected
    for s in resolve_sites(tiny_lm.bridge, "all", kind):
        assert s.hook_name in tiny_lm.bridge.hook_dict


def test_every_site_kind_has_a_forward_order(tiny_lm):
    """``Site.order`` sorts sites as the forward pass visits them (the early stop relies on it)."""
    acc = access(tiny_lm)
    seen: list[str] = []
    sites = [s for kind in SITE_KINDS for s in acc.sites("all", kind)]
    edits = [(s, lambda h, s=s: seen.append(s.hook_name)) for s in sites]
    import torch

    with acc.hooked(edits), torch.no_grad():
        acc.forward(torch.tensor([[2, 3, 4]]))
    by_order = [s.hook_name for s in sorted(sites, key=lambda s: s.order)]
    assert [n for n in seen if n in by_order] == by_order


def test_unknown_layer_lists_valid_ones(tiny_lm):
    with pytest.raises(SiteError, match=r"layer 7 does not exist; valid layers: \[0, 1, 2\]"):
        resolve_sites(tiny_lm.bridge, [1, 7])


def test_unknown_kind_lists_valid_kinds(tiny_lm):
    with pytest.raises(SiteError, match="resid_post"):
        resolve_sites(tiny_lm.bridge, "all", "resid_everywhere")


def test_layers_spec_validation(tiny_lm):
    assert [s.layer for s in resolve_sites(tiny_lm.bridge, 1)] == [1]
    assert [s.layer for s in resolve_sites(tiny_lm.bridge, [2, 1, 2])] == [1, 2]
    with pytest.raises(SiteError):
        resolve_sites(tiny_lm.bridge, "some")
    with pytest.raises(SiteError):
        resolve_sites(tiny_lm.bridge, [])
    with pytest.raises(SiteError):
        resolve_sites(tiny_lm.bridge, [True])
    with pytest.raises(SiteError, match="1.5 is not understood"):
        resolve_sites(tiny_lm.bridge, 1.5)
    # numpy integers are valid indices; None means all
    assert [s.layer for s in resolve_sites(tiny_lm.bridge, np.int64(1))] == [1]
    assert [s.layer for s in resolve_sites(tiny_lm.bridge, None)] == [0, 1, 2]
