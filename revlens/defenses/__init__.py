"""Published defenses against fine-tuning erosion of alignment, each one registered
:class:`~revlens.block.BlockingStrategy` (``docs/defenses.md``):

- :class:`SafeLoRA` (``"safelora"``, arXiv 2405.16833): post-hoc projection of a LoRA (or full)
  update by ``C = V Vᵀ/‖V‖_F`` (or a true projector) in the least aligned weights;
- :class:`AsFT` (``"asft"``, arXiv 2506.08473): a regulariser on the update's part off the
  alignment direction;
- :class:`SafetyLayerFreeze` (``"safety_freeze"``, arXiv 2408.17003) with
  :func:`locate_safety_layers`: freeze the located safety layers;
- :class:`ProConPenalty` (``"procon"``, in the spirit of arXiv 2509.06795): penalise the change of
  each probe prompt's projection on a direction ``r`` (e.g. the refusal direction).
"""

from revlens.defenses.asft import AsFT, AsFTConfig, asft_penalty
from revlens.defenses.bench import EvalSets
from revlens.defenses.compare import compare_defenses
from revlens.defenses.comparison import DefenseComparison
from revlens.defenses.lisa import Lisa, LisaConfig
from revlens.defenses.procon import ProConPenalty
from revlens.defenses.recipe import FinetuneRecipe
from revlens.defenses.safelora import SafeLoRA, SafeLoRAConfig, safelora_select, safelora_similarity
from revlens.defenses.safety_layers import (
    SafetyLayerFreeze,
    SafetyLayerFreezeConfig,
    SafetyLayers,
    locate_safety_layers,
)
from revlens.defenses.suite import DEFENSES, CompareConfig

__all__ = [
    "DEFENSES",
    "AsFT",
    "AsFTConfig",
    "CompareConfig",
    "DefenseComparison",
    "EvalSets",
    "FinetuneRecipe",
    "Lisa",
    "LisaConfig",
    "ProConPenalty",
    "SafeLoRA",
    "SafeLoRAConfig",
    "SafetyLayerFreeze",
    "SafetyLayerFreezeConfig",
    "SafetyLayers",
    "asft_penalty",
    "compare_defenses",
    "locate_safety_layers",
    "safelora_select",
    "safelora_similarity",
]
