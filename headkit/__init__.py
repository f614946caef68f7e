"""headkit: mechanistic interpretability of attention heads, on TransformerLens.

The public API is re-exported here lazily (a name's module is imported on first
use), so ``import headkit`` and the command line start fast. Functions with many
options take them as one checked dataclass, also exported here (`LoadOptions`,
`SwapOptions`, `ClassifyOptions`, `DetectorOptions`, `DemoOptions`,
`ModelReportOptions`; `Processing` is `LoadOptions.processing`'s type), or as
that dataclass's fields given as keywords, never both.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # models and loading
    "ModelConfig": "headkit.model_config",
    "gptj_model": "headkit.models",
    "model_from_config": "headkit.models",
    "load_gptj": "headkit.loading.gptj",
    "load_pretrained": "headkit.loading.pretrained",
    "LoadOptions": "headkit.loading.options",
    "Processing": "headkit.bridge.build",
    "save_checkpoint": "headkit.training.checkpoints",
    "load_checkpoint": "headkit.training.checkpoints",
    "Checkpoint": "headkit.training.checkpoints",
    # tasks
    "TaskBatch": "headkit.tasks",
    "TaskSpec": "headkit.tasks",
    "Vocab": "headkit.tasks",
    # training and evaluation
    "TrainConfig": "headkit.training.config",
    "train": "headkit.training.loop",
    "train_or_reuse": "headkit.training.loop",
    "TrainResult": "headkit.training.loop",
    "open_checkpoint": "headkit.training.runs",
    "run_status": "headkit.training.layout",
    "default_config": "headkit.training.config",
    "evaluate": "headkit.evaluation",
    # head scores (issue 3)
    "SwapOptions": "headkit.scores.swap_plan",
    "ClassifyOptions": "headkit.scores.positional_symbolic",
    "DetectorOptions": "headkit.scores.detectors",
    "positional_symbolic_scores": "headkit.scores.positional_symbolic",
    "classify_heads": "headkit.scores.positional_symbolic",
    "classify_scores": "headkit.scores.positional_symbolic",
    "classify_heads_by_hop": "headkit.scores.positional_symbolic",
    "rope_frequency_scores": "headkit.scores.rope",
    "rope_frequency_use": "headkit.scores.rope",
    "discrepancy": "headkit.scores.discrepancy",
    "previous_token_scores": "headkit.scores.detectors",
    "duplicate_token_scores": "headkit.scores.detectors",
    "induction_pattern_scores": "headkit.scores.detectors",
    "induction_scores": "headkit.scores.detectors",
    "copying_scores": "headkit.scores.circuits",
    "composition_scores": "headkit.scores.circuits",
    "head_census": "headkit.scores.census",
    "track_heads": "headkit.scores.dynamics",
    # interventions (issue 4)
    "ablate": "headkit.interventions.ablation",
    "ablate_metric": "headkit.interventions.ablation",
    "ablation_sweep": "headkit.interventions.ablation",
    "ablation_sweep_by_hop": "headkit.interventions.ablation",
    "attention_knockout": "headkit.interventions.ablation",
    "activation_patching": "headkit.interventions.activation_patching",
    "available_sites": "headkit.interventions.sites",
    "path_patching": "headkit.interventions.path_patching",
    "path_patching_sweep": "headkit.interventions.path_patching",
    "attribution_patching": "headkit.interventions.attribution",
    "metrics": "headkit.interventions.metrics",
    # reports and the demo
    "DemoOptions": "headkit.report.demo",
    "run_demo": "headkit.report.demo",
    "ModelReportOptions": "headkit.report.model",
    "model_report": "headkit.report.model",
    # figures
    "attention_patterns": "headkit.plots",
    "head_scores_figure": "headkit.plots",
    "accuracy_by_length_figure": "headkit.plots",
    "patching_figure": "headkit.plots",
    "write_figure": "headkit.plots",
    "task_attention_view": "headkit.plots",
    "ablation_by_hop_figure": "headkit.plots",
    "dynamics_figure": "headkit.plots",
    "use_offline_renderer": "headkit.plots",
}

__all__ = sorted(_EXPORTS) + ["tasks", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "tasks":
        return importlib.import_module("headkit.tasks")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'headkit' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    if name == "metrics":
        return module
    return getattr(module, name)
