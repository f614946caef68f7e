"""PosSym-2026's published numbers (arXiv 2605.31558), for tables that put the paper's
value, headkit's value and a verdict side by side (``headkit demo``, analyses R1-R4).

Values are read off the paper's figures and text, so each carries a reading error of
about ``READ_TOLERANCE`` (0.02). The paper's model is the ``paper`` preset (12 layers,
d_model 128, 6,750 updates); headkit's ``cpu`` preset is smaller (6 layers, d_model 64,
2,000 updates), so on it counts and step numbers are compared by order and shape.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

READ_TOLERANCE = 0.02  # the paper's curves read to about +-0.02

# R1, Fig. 5B: accuracy vs tokens added before the 17-token prompt (the prefix protocol)
R1_ADDED = (0, 46, 96, 296, 996)
R1_ACCURACY: Mapping[str, Mapping[int, float]] = {
    "number": {0: 1.0, 46: 0.88, 96: 0.74, 296: 0.47, 996: 0.20},
    "letter": {0: 1.0, 46: 1.0, 96: 1.0, 296: 0.99, 996: 0.87},
}

# R2, pure heads (s_pos >= 1 - gamma and s_sym <= gamma, or mirrored), 12 one-head layers
R2_PURE: Mapping[float, Mapping[str, Mapping[str, int]]] = {
    0.1: {"number": {"positional": 4, "symbolic": 8}, "letter": {"positional": 0, "symbolic": 11}},
    0.05: {"number": {"positional": 2, "symbolic": 7}, "letter": {"positional": 0, "symbolic": 11}},
}
R2_LAYERS = {  # where the paper's gamma=0.1 pure heads sit
    "number": {"positional": "L0-L3", "symbolic": "L4-L11"},
    "letter": {"positional": "none", "symbolic": "L1-L11"},
}

# R3: training step at which each hop first reaches 0.9 accuracy (paper preset, 6,750 updates)
R3_STEP_AT_90: Mapping[str, Mapping[int, int]] = {
    "number": {1: 1950, 2: 2700, 3: 3200, 4: 3350},
    "letter": {1: 2675, 2: 2675, 3: 2675, 4: 2675},  # "about 2,650-2,700, all hops together"
}
R3_PAPER_STEPS = 6750  # 432,000 sequences / batch 64


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` prompts."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(n, 1))


def verdict(measured: float, paper: float, *, n: int) -> str:
    """``"reproduces"`` when ``measured`` is within the paper's reading error plus two
    binomial standard errors of the measurement (``n`` prompts); else ``"higher by X"``
    or ``"lower by X"``."""
    allowed = READ_TOLERANCE + 2 * binomial_se(measured, n)
    gap = measured - paper
    if abs(gap) <= allowed:
        return "reproduces"
    return f"{'higher' if gap > 0 else 'lower'} by {abs(gap):.2f}"


def r1_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """`headkit.evaluation.evaluate` rows (all hops pooled) next to Fig. 5B.

    One row per (task, tokens added) that the paper reports: ``task, added, paper,
    headkit`` (prefix protocol), ``verdict`` and, when the frame has window-protocol
    rows, ``headkit_window`` (headkit's harder variant; the paper has no such curve).
    """
    pooled = frame[frame["hop"].astype(str) == "all"]
    rows = []
    for task, values in R1_ACCURACY.items():
        for added, paper in values.items():
            pick = pooled[(pooled["task"] == task) & (pooled["added"] == added)]
            prefix = pick[pick["extend"] == "prefix"]
            if prefix.empty:
                continue
            measured, n = float(prefix["accuracy"].iloc[0]), int(prefix["n"].iloc[0])
            row = dict(task=task, added=added, paper=paper, headkit=measured, verdict=verdict(measured, paper, n=n))
            window = pick[pick["extend"] == "window"]
            if not window.empty:
                row["headkit_window"] = float(window["accuracy"].iloc[0])
            rows.append(row)
    return pd.DataFrame(rows)


def count_verdict(measured: int, paper: int) -> str:
    """Head counts: ``"same"`` or ``"N more"`` / ``"N fewer"``."""
    if measured == paper:
        return "same"
    return f"{abs(measured - paper)} {'more' if measured > paper else 'fewer'}"


def layer_span(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 3]`` -> ``"L0-L3"``; gaps listed (``"L0-L1,L4"``); empty -> ``"none"``."""
    values = sorted(set(int(v) for v in layers))
    if not values:
        return "none"
    parts, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur is None or cur != prev + 1:
            parts.append(f"L{start}" if start == prev else f"L{start}-L{prev}")
            start = cur
    return ",".join(parts)
