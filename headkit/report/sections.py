"""The sections of a headkit report page, shared by ``headkit report`` and ``headkit demo``.

Each ``*_section`` turns one analysis table (or a model and a batch) into a
`headkit.report.page.Section`: a figure, a one-line "how to read this" and the table
behind it. `headkit.report.page.report_html` assembles sections into one page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headkit.evaluation import accuracy_table
from headkit.interventions import metrics
from headkit.interventions.activation_patching import activation_patching
from headkit.plots import (
    ablation_by_hop_figure,
    accuracy_by_length_figure,
    dynamics_figure,
    head_scores_figure,
    patching_figure,
    task_attention_view,
)
from headkit.report.page import Section

if TYPE_CHECKING:  # heavy modules load when a section is built
    import pandas as pd

    from headkit.model_types import Model
    from headkit.report.page import Section
    from headkit.tasks.base import TaskBatch

VIEWS_PER_HOP = 2  # example prompts per hop count in the attention section


def delta_by_hop(table: pd.DataFrame) -> pd.DataFrame:
    """Ablation table -> one row per head, one ``hopK`` column of accuracy change per hop."""
    wide = table.pivot_table(index=["layer", "head"], columns="hop", values="delta").reset_index()
    wide.columns = [c if isinstance(c, str) else f"hop{c}" for c in wide.columns]
    return wide


def accuracy_section(table: pd.DataFrame, *, about: str, trained_length: int) -> Section:
    n = int(table["n"].max())
    figure = accuracy_by_length_figure(
        table, trained_length=trained_length,
        title=f"Accuracy by length and hop<br><sup>{about}, trained at length {trained_length}, {n} prompts per length</sup>",
    )  # fmt: skip
    return Section(
        "Accuracy by length and hop",
        how_to_read=(
            "each line is one hop count (thick: all prompts pooled); the dotted vertical line is the trained "
            "length, points to its right test length generalisation."
        ),
        figures=(figure,),
        tables=(("accuracy by length and hop", accuracy_table(table)),),
    )


def heads_section(heads: pd.DataFrame, *, about: str, n_prompts: int, length: int) -> Section:
    shown = [c for c in ("layer", "head", "label", "purity", "positional_score", "symbolic_score", "signal") if c in heads]
    figure = head_scores_figure(
        heads, title=f"Head census<br><sup>{about}, {n_prompts} prompts of length {length}</sup>"
    )
    return Section(
        "Head census: positional vs symbolic",
        how_to_read=(
            "colour = symbolic − positional swap score (red: symbolic, blue: positional, grey: inactive, i.e. too "
            "little attention signal to label); each cell gives the label, its share of prompts (purity) and the "
            "score difference. Labels of impure heads (purity well below 80 %) can flip with the prompt seed."
        ),
        figures=(figure,),
        tables=(("heads", heads[shown]),),
    )


def dynamics_section(table: pd.DataFrame, *, about: str) -> Section:
    steps = sorted(table["step"].unique().tolist())
    figure = dynamics_figure(
        table, title=f"Learning dynamics<br><sup>{about}, checkpoints at steps {', '.join(map(str, steps))}</sup>"
    )
    return Section(
        "Learning dynamics over checkpoints",
        how_to_read=(
            "top: held-out accuracy per hop at each checkpoint (black: all hops, greys with dashes: each hop); "
            "bottom: each head's symbolic − positional score (above 0: symbolic) at the same checkpoints, one "
            "colour per head, grey open circles where the head is inactive. Every saved checkpoint is used."
        ),
        figures=(figure,),
    )


def ablation_section(table: pd.DataFrame, *, about: str, n_prompts: int) -> Section:
    figure = ablation_by_hop_figure(
        table, title=f"Mean ablation: accuracy change per hop<br><sup>{about}, {n_prompts} prompts</sup>", bound=1.0
    )
    wide = delta_by_hop(table)
    return Section(
        "Ablation per hop",
        how_to_read=(
            "each cell is the accuracy change when one head's output is replaced by its mean, on prompts of "
            "one hop count; red = the task needs that head (accuracy drops), white = no effect, blue = accuracy "
            "rises. Red means the same on every heat map of this page: the head carries the effect."
        ),
        figures=(figure,),
        tables=(("accuracy change under mean ablation, by hop", wide),),
    )


def patching_section(model: Model, batch: TaskBatch, *, about: str) -> Section:
    """Denoising patching of every head's ``z`` and of ``resid_pre`` by position."""
    if batch.corrupted is None:
        return Section("Activation patching", text=f"The {batch.task} task has no corrupted twin: no patching.")
    name, metric = (
        ("logit difference", metrics.logit_diff(batch))
        if batch.wrong_answers is not None
        else ("answer log-probability", metrics.answer_logprob(batch))
    )
    clean, corrupted = batch.tokens, batch.corrupted.tokens
    heads = activation_patching(model, clean, corrupted, metric, site="z")
    resid = activation_patching(model, clean, corrupted, metric, site="resid_pre", by_position=True)
    common = f"<br><sup>{about}, {batch.n} prompts of length {batch.length}, metric: {name}, normalised</sup>"
    return Section(
        "Activation patching",
        how_to_read=(
            "clean activations are patched into the run on corrupted prompts (same length, another answer); "
            "red 1 = the patch restores the clean answer fully, white 0 = no effect, blue = it pushes further away. "
            "Red means the same on every heat map of this page: the head carries the effect."
        ),
        figures=(
            patching_figure(heads, title=f"Patching each head's output (z){common}"),
            patching_figure(
                resid, columns="position", title=f"Patching the residual stream by position (resid_pre){common}"
            ),
        ),
    )


def attention_section(
    model: Model, batch: TaskBatch, *, about: str, heads: pd.DataFrame | None = None
) -> Section:
    """`task_attention_view` of the first ``VIEWS_PER_HOP`` prompts of every hop count."""
    # pandas-stubs types itertuples' fields as any scalar (NA, Period, ...)
    labels = {} if heads is None else {(int(r.layer), int(r.head)): str(r.label) for r in heads.itertuples()}  # pyright: ignore[reportArgumentType]
    if batch.hops is None:
        chosen = list(range(min(VIEWS_PER_HOP, batch.n)))
    else:
        chosen = [
            i for hop in sorted(set(batch.hops.tolist())) for i in (batch.hops == hop).nonzero()[:, 0].tolist()[:VIEWS_PER_HOP]
        ]
    views = tuple(task_attention_view(model, batch, i, head_labels=labels) for i in chosen)
    return Section(
        "Attention views",
        text=f"{about}: {len(views)} example prompts, {VIEWS_PER_HOP} per hop count.",
        how_to_read=(
            "pick a head (named with its census label) and hover a token: the rows are query positions, the columns "
            "the positions they attend to; the chain positions are marked [q] (query), [1], [2], ... in hop order."
        ),
        figures=views,
    )
