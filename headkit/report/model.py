"""A pretrained model's head roles on one page: find, confirm, roles, look (``headkit report --model``).

For each prompt suite (`headkit.tasks.natural.SUITES`, built with the model's own
tokenizer), `model_report` runs, on the suite's clean prompts and their corrupted
twins (same length, another answer), with the suite's default metric (logit
difference answer − wrong answer):

- **find**: the head census (`head_census`: previous-token, duplicate-token and
  induction detectors, copying score, positional vs symbolic with ``swap``);
  each head's role is its strongest detector when that score reaches
  `ROLE_THRESHOLD`, else its positional/symbolic label;
- **confirm**: per-head ablation (mean by default, `ablation_sweep`), activation
  patching of every head's output (``z``, denoising) and path patching from every
  head to the logits (and, for IOI, to the queries of the top heads by that
  effect, the name-mover candidates), each as an effect normalised by the
  clean − corrupted gap of the metric: 1 = the head carries the whole gap, 0 =
  nothing. Ablation's effect is ``-(ablated - clean) / (clean - corrupted)``, so
  every map has one sign: positive (red) = the head carries the effect. When the
  gap is below `MIN_GAP` the normalised values mean nothing and the page says so;
- **roles**: one table joining the evidence per head, sorted by effect; a head is
  *confirmed* when any effect reaches the threshold; a head with a high detector
  score and no effect is flagged;
- **look**: circuitsvis attention views (bundle inlined from the installed
  package, never a CDN) of the layers of the top heads by effect, on the first
  prompts, the answer position marked.

The library never prints; progress goes to a tqdm bar.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headkit.checks import check_int, check_positive_float, check_seed
from headkit.errors import HeadkitError
from headkit.interventions import metrics
from headkit.interventions.ablation import ablation_sweep
from headkit.interventions.activation_patching import activation_patching
from headkit.interventions.metrics import run_value
from headkit.interventions.path_patching import path_patching_sweep
from headkit.plots import attention_patterns, head_scores_figure, patching_figure
from headkit.report.page import Section
from headkit.scores.census import head_census
from headkit.scores.positional_symbolic import ClassifyOptions
from headkit.scores.swap_plan import resolve_swap
from headkit.tasks.natural import SUITES, build_suite

if TYPE_CHECKING:
    import pandas as pd

    from headkit.model_types import Model
    from headkit.report.page import Section
    from headkit.tasks.base import TaskBatch

# detector column of the census -> the role it names
DETECTOR_ROLES = {"previous_token": "previous-token", "duplicate_token": "duplicate-token", "induction_score": "induction"}
ROLE_THRESHOLD = 0.4  # a detector score from which the head is given that role (the usual induction cut-off)
MIN_GAP = 0.1  # |clean - corrupted| of the metric below which normalised effects are noise
ABLATION_METHODS = ("zero", "mean", "resample")
ROLES_COLUMNS = (
    "layer", "head", "role", "role_score", "label", "purity", "ablation", "patching", "path_to_logits", "effect",
    "confirmed", "note",
)  # fmt: skip


@dataclass(frozen=True)
class ModelReportOptions:
    """What `model_report` does; checked on construction."""

    suites: tuple[str, ...] = ("ioi",)  # prompt suites, each a part of the page
    n_prompts: int = 32  # prompts per suite (census, ablation, patching, path patching)
    seed: int = 0
    method: str = "mean"  # ablation: zero, mean, resample
    effect_threshold: float = 0.1  # |normalised effect| from which a role counts as confirmed
    top_heads: int = 3  # heads by effect whose layers the attention views show (and IOI's query receivers)
    view_prompts: int = 2  # prompts per suite in the attention views
    swap: str = "auto"  # positional/symbolic swap: auto (residual for rotary/ALiBi, else tokens), residual, tokens
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.suites, str) or not self.suites:
            raise HeadkitError(f"suites must be a non-empty list of suite names, got {self.suites!r}")
        for suite in self.suites:
            if suite not in SUITES:
                raise HeadkitError(f"unknown prompt suite {suite!r}: allowed {', '.join(SUITES)}")
        if len(set(self.suites)) != len(self.suites):
            raise HeadkitError(f"suites {list(self.suites)} repeat a suite: give each once")
        check_int("n_prompts", self.n_prompts, low=2)
        check_seed(self.seed)
        if self.method not in ABLATION_METHODS:
            raise HeadkitError(f"method={self.method!r} is unknown: allowed {', '.join(ABLATION_METHODS)}")
        check_positive_float("effect_threshold", self.effect_threshold)
        check_int("top_heads", self.top_heads)
        check_int("view_prompts", self.view_prompts)
        if self.swap not in ("auto", "residual", "tokens"):
            raise HeadkitError(f"swap={self.swap!r} is unknown: allowed auto, residual, tokens")

    def as_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "suites": list(self.suites), "role_threshold": ROLE_THRESHOLD,
                "min_gap": MIN_GAP}  # fmt: skip


def _normalised(values: pd.Series, *, clean: float, corrupted: float) -> pd.Series:
    gap = clean - corrupted
    return values / gap if abs(gap) >= MIN_GAP else values * math.nan


def roles_table(
    census: pd.DataFrame, effects: pd.DataFrame, *, threshold: float, role_threshold: float = ROLE_THRESHOLD
) -> pd.DataFrame:
    """Join the census with the normalised effects per head (``ROLES_COLUMNS``), sorted by effect.

    ``effects``: ``layer, head`` and one column per method (``ablation``, ``patching``,
    ``path_to_logits``), positive = the head carries the effect. ``effect`` is the
    largest absolute one; ``confirmed`` when it reaches ``threshold``; ``note`` flags a
    role with a high detector score that no intervention confirms.
    """
    import pandas as pd

    detectors = census[["layer", "head", *DETECTOR_ROLES]].set_index(["layer", "head"])
    best: pd.Series = detectors.fillna(-1.0).idxmax(axis=1)  # role names (pandas-stubs types the labels int)
    score = detectors.max(axis=1)
    table = census[["layer", "head", "label", "purity"]].copy()
    key = list(zip(table["layer"], table["head"]))
    table["role_score"] = [float(score[k]) for k in key]
    table["role"] = [DETECTOR_ROLES[best[k]] if score[k] >= role_threshold else lab for k, lab in zip(key, table["label"])]
    table = table.merge(effects, on=["layer", "head"], how="left")
    measured = [c for c in ("ablation", "patching", "path_to_logits") if c in table]
    table["effect"] = table[measured].abs().max(axis=1, skipna=True)
    table["confirmed"] = table["effect"] >= threshold
    no_effect = (table["role_score"] >= role_threshold) & ~table["confirmed"]
    table["note"] = ""
    table.loc[no_effect, "note"] = "high detector score, but no intervention moves the metric"
    table.loc[table["effect"].isna(), "note"] = "no effect measurable: clean and corrupted metrics too close"
    for column in ("ablation", "patching", "path_to_logits"):
        if column not in table:
            table[column] = math.nan
        table[column] = table[column].round(6) + 0.0  # no "-0.000" on the page
    table = table.sort_values("effect", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    return pd.DataFrame(table[list(ROLES_COLUMNS)])


def _metric(batch: TaskBatch):
    return metrics.default_metric_name(batch), metrics.default_metric(batch, per_example=False)


def _baselines(model: Model, batch: TaskBatch, metric) -> tuple[float, float]:
    import torch

    device = model.cfg.device
    assert batch.corrupted is not None  # model_report refuses a suite without corrupted twins
    with torch.no_grad():
        clean = run_value(metric, model(batch.tokens.to(device)), run="the clean run").item()
        corrupted = run_value(metric, model(batch.corrupted.tokens.to(device)), run="the corrupted run").item()
    return clean, corrupted


def _effects(model: Model, batch: TaskBatch, options: ModelReportOptions, bar) -> tuple[dict, dict]:
    """Ablation, patching and path patching per head, normalised; (tables, baselines)."""
    name, metric = _metric(batch)
    clean, corrupted = _baselines(model, batch, metric)
    device = model.cfg.device
    assert batch.corrupted is not None  # model_report refuses a suite without corrupted twins
    tokens, twin = batch.tokens.to(device), batch.corrupted.tokens.to(device)
    bar.set_postfix_str("ablation")
    ablation = ablation_sweep(model, batch, method=options.method, metric=metric, seed=options.seed)
    ablation["normalised"] = _normalised(-ablation["delta"], clean=clean, corrupted=corrupted)
    bar.update(1)
    bar.set_postfix_str("activation patching")
    patching = activation_patching(model, tokens, twin, metric, site="z")
    bar.update(1)
    bar.set_postfix_str("path patching")
    paths = path_patching_sweep(model, tokens, twin, "final", metric)
    if abs(clean - corrupted) < MIN_GAP:
        paths["normalised"] = math.nan
    bar.update(1)
    tables = {"ablation": ablation, "patching": patching, "paths": paths}
    baselines = {"metric": name, "clean": clean, "corrupted": corrupted}
    return tables, baselines


def _query_paths(model: Model, batch: TaskBatch, roles: pd.DataFrame, options: ModelReportOptions) -> pd.DataFrame | None:
    """IOI: path patching from every earlier head to the queries of the top heads by path effect (name movers):
    heads past layer 0 whose direct effect on the logits reaches the threshold; None when there are none."""
    import pandas as pd

    movers = roles[(roles["layer"] > 0) & (roles["path_to_logits"].abs() >= options.effect_threshold)]
    movers = movers.reindex(movers["path_to_logits"].abs().sort_values(ascending=False).index).head(options.top_heads)
    if movers.empty:
        return None
    # pandas-stubs types itertuples' fields as any scalar (NA, Period, ...)
    receivers = [(int(r.layer), int(r.head), "q") for r in movers.itertuples()]  # pyright: ignore[reportArgumentType]
    _, metric = _metric(batch)
    device = model.cfg.device
    assert batch.corrupted is not None  # model_report refuses a suite without corrupted twins
    table = path_patching_sweep(model, batch.tokens.to(device), batch.corrupted.tokens.to(device), receivers, metric)
    table["receivers"] = ", ".join(f"L{layer}H{head}.q" for layer, head, _ in receivers)
    return pd.DataFrame(table)


def _baseline_text(baselines: dict) -> str:
    gap = baselines["clean"] - baselines["corrupted"]
    text = (
        f"Metric: {baselines['metric']}. Clean prompts {baselines['clean']:+.3f}, corrupted twins "
        f"{baselines['corrupted']:+.3f}, difference {gap:+.3f}."
    )
    if abs(gap) < MIN_GAP:
        text += (
            f" WARNING: the difference is below {MIN_GAP}, too small for normalised effects to mean anything: "
            "they are left blank, and no role is confirmed on this suite."
        )
    return text


def _role_map(census: pd.DataFrame, roles: pd.DataFrame, *, title: str):
    """Layer x head map of each head's role: colour = its detector score on a fixed 0-1 scale."""
    import plotly.graph_objects as go

    grid = roles.pivot(index="layer", columns="head", values="role_score").sort_index()
    names = roles.pivot(index="layer", columns="head", values="role").reindex_like(grid)
    text = [[f"{names.iloc[i, j]}<br>{grid.iloc[i, j]:.2f}" for j in range(grid.shape[1])] for i in range(grid.shape[0])]
    heatmap = go.Heatmap(
        z=grid.values, x=[f"H{h}" for h in grid.columns], y=[f"L{layer}" for layer in grid.index],
        colorscale="Greens", zmin=0, zmax=1, colorbar={"title": "strongest detector score"},
        text=text, texttemplate="%{text}",
    )  # fmt: skip
    fig = go.Figure(heatmap)
    fig.update_layout(
        title=title, xaxis={"title": "head"}, yaxis={"title": "layer", "autorange": "reversed"},
        height=max(320, 40 * grid.shape[0] + 180),
    )  # fmt: skip
    return fig


def _views(model: Model, batch: TaskBatch, roles: pd.DataFrame, options: ModelReportOptions, suite: str) -> tuple:
    import html

    top = roles.dropna(subset=["effect"]).head(options.top_heads)
    if top.empty:
        top = roles.sort_values("role_score", ascending=False).head(options.top_heads)
    layers = sorted({int(layer) for layer in top["layer"]})
    # pandas-stubs types itertuples' fields as any scalar (NA, Period, ...)
    labels = {(int(r.layer), int(r.head)): str(r.role) for r in roles.itertuples()}  # pyright: ignore[reportArgumentType]
    named = ", ".join(f"L{int(r.layer)}H{int(r.head)} ({r.role})" for r in top.itertuples())  # pyright: ignore[reportArgumentType]
    views = []
    for i in range(min(options.view_prompts, batch.n)):
        strings = list(batch.decode(i))
        strings[-1] = f"{strings[-1]} [answer here]"
        answer = batch.vocab.decode(batch.answers[i : i + 1])[0]
        caption = (
            f"<b>{html.escape(suite)} prompt {i}</b> (length {batch.length}), answer <b>{html.escape(str(answer))}"
            f"</b> predicted at the last position (marked [answer here]); top heads by effect: {html.escape(named)}; "
            f"layers {', '.join(f'L{layer}' for layer in layers)} shown"
        )
        views.append(attention_patterns(model, batch.tokens[i], strings, layers=layers, head_labels=labels, caption=caption))
    return tuple(views)


def suite_report(
    model: Model, tokenizer: Any, suite: str, options: ModelReportOptions, *, about: str, bar
) -> tuple[dict[str, pd.DataFrame], list[Section]]:
    """The tables and the four sections (find, confirm, roles, look) of one suite."""
    batch = build_suite(suite, options.n_prompts, seed=options.seed, tokenizer=tokenizer)
    if batch.corrupted is None:
        raise HeadkitError(f"prompt suite {suite!r} has no corrupted twins: nothing to patch")
    bar.set_postfix_str(f"{suite}: census")
    census = head_census(
        model, batch.tokens.to(model.cfg.device), n_prompts=options.n_prompts, seed=options.seed,
        vocab_range=(0, min(len(tokenizer), model.cfg.d_vocab)), bos_id=tokenizer.bos_token_id, composition_kinds=(),
        classify_options=ClassifyOptions(swap=resolve_swap(model.cfg.positional_embedding_type, options.swap)),
    )  # fmt: skip
    bar.update(1)
    tables, baselines = _effects(model, batch, options, bar)
    effects = census[["layer", "head"]].copy()
    for column, name in (("ablation", "ablation"), ("patching", "patching"), ("path_to_logits", "paths")):
        part = tables[name][["layer", "head", "normalised"]].rename(columns={"normalised": column})
        effects = effects.merge(part, on=["layer", "head"], how="left")
    roles = roles_table(census, effects, threshold=options.effect_threshold)
    out = {"census": census, **tables, "roles": roles}
    if suite == "ioi":
        bar.set_postfix_str("ioi: paths to the name movers' queries")
        queries = _query_paths(model, batch, roles, options)
        if queries is not None:
            out["paths_to_queries"] = queries
    bar.update(1)
    common = f"<br><sup>{about}; {suite}: {batch.n} prompts of length {batch.length}"
    base = _baseline_text(baselines)
    effect_tables = [("ablation", out["ablation"], f"Mean ablation of each head ({options.method})"),
                     ("patching", out["patching"], "Activation patching of each head's output (z, denoising)"),
                     ("paths", out["paths"], "Path patching from each head to the logits")]  # fmt: skip
    if suite == "ioi" and "paths_to_queries" not in out:
        base += (
            f" No head past layer 0 reaches the threshold ({options.effect_threshold}) by path patching to the "
            "logits, so there are no name movers whose queries to patch."
        )
    if "paths_to_queries" in out:
        receivers = out["paths_to_queries"]["receivers"].iloc[0]
        effect_tables.append(("paths_to_queries", out["paths_to_queries"], f"Path patching to the queries of {receivers}"))
    confirm = tuple(
        patching_figure(table, title=f"{title}{common}; clean {baselines['clean']:+.2f}, corrupted "
                        f"{baselines['corrupted']:+.2f}, normalised</sup>", bound=1.0)
        for _, table, title in effect_tables
    )  # fmt: skip
    bar.set_postfix_str(f"{suite}: attention views")
    views = _views(model, batch, roles, options, suite)
    bar.update(1)
    sections = [
        Section(
            f"{suite}: find — head census",
            text=f"{suite} prompts, for example: {' '.join(batch.decode(0))!r}.",
            how_to_read=(
                f"left: each head's role, its strongest detector (previous-token, duplicate-token, induction) when "
                f"that score reaches {ROLE_THRESHOLD}, else its positional/symbolic label; colour = that detector "
                "score on a fixed 0–1 scale. Right: symbolic − positional swap score (red symbolic, blue positional, "
                f"grey inactive), swap '{resolve_swap(model.cfg.positional_embedding_type, options.swap)}'."
            ),
            figures=(
                _role_map(census, roles, title=f"Roles by detector{common}</sup>"),
                head_scores_figure(census, title=f"Positional vs symbolic{common}</sup>"),
            ),
        ),
        Section(
            f"{suite}: confirm — ablation, activation patching, path patching",
            text=base,
            how_to_read=(
                "each cell is a head's effect as a share of the clean − corrupted difference of the metric, on one "
                "scale for all three maps: 1 = the head carries the whole difference, 0 = nothing. Ablation: the "
                "drop when the head is removed; activation patching: how much of the clean metric the head's clean "
                "output restores in the corrupted run; path patching: the same through the direct path to the "
                "logits only (or to the receivers' queries)."
            ),
            figures=confirm,
        ),
        Section(
            f"{suite}: roles — the evidence joined",
            how_to_read=(
                f"one row per head, sorted by effect (the largest of the three, in absolute value); confirmed = an "
                f"effect of at least {options.effect_threshold}. A head with a high detector score that no "
                "intervention confirms says so in the note: the pattern is there, the metric does not need it."
            ),
            tables=((f"{suite}: head roles", roles),),
        ),
        Section(
            f"{suite}: look — attention of the top heads",
            how_to_read=(
                "pick a head in the widget (named with its role) and hover a token: rows are query positions, "
                "columns the positions attended to; the last token, where the answer is predicted, is marked."
            ),
            figures=views,
        ),
    ]
    return out, sections


STEPS_PER_SUITE = 6  # census, ablation, patching, path patching, IOI queries, views


def model_report(
    model: Model, tokenizer: Any, options: ModelReportOptions, *, about: str
) -> tuple[dict[str, pd.DataFrame], list[Section]]:
    """Every suite's tables (``"<suite>_<table>"``) and sections, in page order."""
    from tqdm.auto import tqdm

    if tokenizer is None:
        raise HeadkitError("the model has no tokenizer: the prompt suites need the model's own tokenizer")
    tables: dict[str, pd.DataFrame] = {}
    sections: list[Section] = []
    with tqdm(total=STEPS_PER_SUITE * len(options.suites), desc="report", unit="step", disable=not options.progress) as bar:
        for suite in options.suites:
            found, parts = suite_report(model, tokenizer, suite, options, about=about, bar=bar)
            tables.update({f"{suite}_{name}": table for name, table in found.items()})
            sections += parts
    return tables, sections
