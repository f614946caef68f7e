"""Figures: interactive attention views (circuitsvis) and plotly charts of head scores.

Every plot function returns a figure object and never shows or writes it;
`write_figure` is the one helper that writes files, atomically. One module per idea:

- `headkit.plots.attention`: `AttentionView`, `attention_patterns`,
  `task_attention_view` (circuitsvis views that display offline);
- `headkit.plots.figures`: plotly charts of headkit's tables (`head_scores_figure`,
  `accuracy_by_length_figure`, `patching_figure`, `ablation_by_hop_figure`,
  `dynamics_figure`), their colours and `model_description` for titles;
- `headkit.plots.output`: `write_figure` (HTML always, PNG when kaleido can) and
  `use_offline_renderer` (Jupyter display with nothing fetched from a host).

Readability rules of every figure: ``inactive`` heads grey; each line its own
colour (plus a line style per task or head group); effects on diverging scales
centred at 0; values written in heat-map cells when the grid is small; titles
name the model and the prompt length (callers pass them, see
`model_description`). The names below are the ones ``headkit.plots`` has always
exported.
"""

from headkit.plots.attention import AttentionView, attention_patterns, task_attention_view
from headkit.plots.figures import (
    ACCURACY_COLOURS,
    DASHES,
    EFFECT_CONVENTION,
    INACTIVE_GREY,
    LABEL_COLOURS,
    MAX_CELLS_WITH_VALUES,
    SERIES_COLOURS,
    ablation_by_hop_figure,
    accuracy_by_length_figure,
    dynamics_figure,
    head_scores_figure,
    model_description,
    patching_figure,
)
from headkit.plots.output import OFFLINE_RENDERER, PLOTLYJS_MODES, use_offline_renderer, write_figure

__all__ = [
    "ACCURACY_COLOURS", "DASHES", "EFFECT_CONVENTION", "INACTIVE_GREY", "LABEL_COLOURS", "MAX_CELLS_WITH_VALUES",
    "OFFLINE_RENDERER", "PLOTLYJS_MODES", "SERIES_COLOURS", "AttentionView", "ablation_by_hop_figure",
    "accuracy_by_length_figure", "attention_patterns", "dynamics_figure", "head_scores_figure", "model_description",
    "patching_figure", "task_attention_view", "use_offline_renderer", "write_figure",
]  # fmt: skip
