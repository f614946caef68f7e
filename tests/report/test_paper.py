"""headkit.report.paper: the paper's numbers and the side-by-side verdicts."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from headkit.report.paper import R1_ACCURACY, count_verdict, layer_span, r1_comparison, verdict


def test_verdict_allows_reading_error_plus_two_standard_errors():
    assert verdict(1.0, 1.0, n=512) == "reproduces"
    se = math.sqrt(0.5 * 0.5 / 100)
    assert verdict(0.5, 0.5 + 0.02 + 2 * se - 1e-6, n=100) == "reproduces"
    assert verdict(0.5, 0.5 + 0.02 + 2 * se + 1e-3, n=100) == f"lower by {0.02 + 2 * se + 1e-3:.2f}"
    assert verdict(0.9, 0.2, n=512) == "higher by 0.70"


def test_r1_comparison_pairs_each_measurement_with_fig_5b():
    rows = []
    for task in ("number", "letter"):
        for added, acc in zip((0, 46, 999), (1.0, 0.5, 0.1)):
            for extend, shift in (("prefix", 0.0), ("window", -0.1)):
                rows.append(dict(task=task, extend=extend, length=17 + added, added=added, hop="all", n=512, accuracy=max(acc + shift, 0)))
                rows.append(dict(task=task, extend=extend, length=17 + added, added=added, hop=1, n=128, accuracy=0.0))
    table = r1_comparison(pd.DataFrame(rows))
    assert list(table.columns) == ["task", "added", "paper", "headkit", "verdict", "headkit_window"]
    assert table[["task", "added"]].values.tolist() == [["number", 0], ["number", 46], ["letter", 0], ["letter", 46]]
    assert table["paper"].tolist() == [R1_ACCURACY["number"][0], 0.88, 1.0, R1_ACCURACY["letter"][46]]
    assert table["headkit"].tolist() == [1.0, 0.5, 1.0, 0.5]
    assert table["headkit_window"].tolist() == pytest.approx([0.9, 0.4, 0.9, 0.4])
    assert table["verdict"].tolist() == ["reproduces", "lower by 0.38", "reproduces", "lower by 0.50"]


def test_counts_and_layer_spans():
    assert count_verdict(4, 4) == "same" and count_verdict(2, 4) == "2 fewer" and count_verdict(5, 4) == "1 more"
    assert layer_span([0, 1, 2, 3]) == "L0-L3" and layer_span([3, 0, 1, 5]) == "L0-L1,L3,L5" and layer_span([]) == "none"


def _heads(labels):
    """A classify_heads-like table: one head per layer, its pure_paper_0.1 label."""
    return pd.DataFrame({"layer": range(len(labels)), "head": 0, "pure_paper_0.1": labels})


def test_r2_comparison_counts_and_layers_beside_the_paper():
    from headkit.report.paper import r2_comparison, r2_verdict

    heads = {
        "number": _heads(["positional", "positional", "mixed", "symbolic", "symbolic", "symbolic"]),
        "letter": _heads(["symbolic"] * 6),
    }
    table = r2_comparison(heads)
    row = table.set_index(["task", "kind"])
    assert row.loc[("number", "positional"), ["paper", "paper_layers", "headkit", "headkit_layers", "verdict"]].tolist() == [
        4, "L0-L3", 2, "L0-L1", "2 fewer"
    ]
    assert row.loc[("number", "symbolic"), ["headkit", "headkit_layers", "n_layers"]].tolist() == [3, "L3-L5", 6]
    assert row.loc[("letter", "symbolic"), ["paper", "headkit", "verdict"]].tolist() == [11, 6, "5 fewer"]
    verdicts = r2_verdict(table, heads)
    assert verdicts["number"].startswith("reproduced in kind (positional and symbolic)")
    assert verdicts["letter"].startswith("reproduced in kind (symbolic)")
    # all six heads symbolic is the paper's letter finding, not its number finding
    verdicts = r2_verdict(r2_comparison({"number": _heads(["symbolic"] * 6)}))
    assert verdicts["number"] == "not reproduced: no pure positional head where the paper has 4"
    swapped = {"number": _heads(["symbolic", "positional", "symbolic"])}
    assert r2_verdict(r2_comparison(swapped), swapped)["number"].startswith("kinds reproduced (positional and symbolic), order not")
