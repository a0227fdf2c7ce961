"""The reversion lab: a tiny GPT-2 trained on CPU through pre-training -> alignment -> benign
fine-tuning on a synthetic language, written as a real checkpoint history with metrics.

See ``docs/lab.md``. Typical use::

    from revlens.lab import LabConfig, run_lab
    result = run_lab("out/lab", LabConfig(ft_seeds=(0, 1, 2)))   # starts from assets/lab/pair0
"""

from revlens.lab.config import LabConfig, default_checkpoint_steps
from revlens.lab.errors import LabAssetsError, LabOutputError
from revlens.lab.language import (
    HARMFUL_FIRST_TOKENS,
    REFUSAL_FIRST_TOKENS,
    build_tokenizer,
    probe_prompts,
)
from revlens.lab.metrics import (
    PromptBatch,
    encode_prompts,
    evaluate,
    harm_logodds_metric,
    harm_rate_metric,
    task_accuracy_metric,
    task_loss_metric,
)
from revlens.lab.modeling import build_model, load_checkpoint, save_checkpoint
from revlens.lab.runner import LabResult, asset_dir, is_lab_dir, load_pair, run_lab
from revlens.lab.train import FinetuneResult, align, finetune, pretrain, train_pair

__all__ = [
    "HARMFUL_FIRST_TOKENS",
    "REFUSAL_FIRST_TOKENS",
    "FinetuneResult",
    "LabAssetsError",
    "LabConfig",
    "LabOutputError",
    "LabResult",
    "PromptBatch",
    "align",
    "asset_dir",
    "build_model",
    "build_tokenizer",
    "default_checkpoint_steps",
    "encode_prompts",
    "evaluate",
    "finetune",
    "harm_logodds_metric",
    "harm_rate_metric",
    "is_lab_dir",
    "load_checkpoint",
    "load_pair",
    "pretrain",
    "probe_prompts",
    "run_lab",
    "save_checkpoint",
    "task_accuracy_metric",
    "task_loss_metric",
    "train_pair",
]
