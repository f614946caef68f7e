"""``headkit report RUN_DIR [--out DIR] [--png]``: one page with every figure of a trained run.

Loads the run's latest checkpoint (`headkit.checkpoints.load_checkpoint`) and
writes ``OUT/report.html`` (default ``OUT = RUN_DIR/report``; for a checkpoint
directory ``./report_<its name>``, never inside the checkpoint), a single
self-contained file (`headkit.report`): interactive plotly graphs and
circuitsvis attention widgets embedded, plotly.js and the circuitsvis bundle
inlined once, so it opens offline with nothing else. The tables behind the
figures are written beside it as CSV. Sections, each with a one-line "how to
read this":

1. accuracy by length and hop, the trained length marked (`evaluate`);
2. head census: positional / symbolic / mixed / inactive label, purity and
   swap scores of every head (`classify_heads`);
3. learning dynamics over the run's checkpoints (`track_heads`; a run directory only);
4. mean ablation of each head, accuracy change per hop (`ablation_sweep_by_hop`);
5. activation patching heat maps: each head's output (``z``) and the residual
   stream by position (``resid_pre``), denoising (`activation_patching`);
6. attention views of a few example prompts per hop count (`task_attention_view`).

``--png`` also writes every plotly figure as ``OUT/figures/figure_N.png`` for
papers (needs kaleido >= 1 and a Chromium: ``pip install -e ".[figures]"``),
beside a small interactive ``figure_N.html`` sharing one ``plotly.min.js``.

The section builders (``*_section``) are shared with ``headkit demo``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from headkit.checks import check_output_path
from headkit.cli.cmd_train import positive_int, run_dir_checkpoint
from headkit.errors import HeadkitError
from headkit.threads import add_threads_argument, use_threads

if TYPE_CHECKING:  # heavy modules load when the command runs, not for `headkit --help`
    import pandas as pd
    from transformer_lens import HookedTransformer

    from headkit.report import Section
    from headkit.tasks.base import TaskBatch

log = logging.getLogger(__name__)

MAX_LENGTHS = 5  # default evaluation lengths: the trained one and up to 4 doublings
VIEWS_PER_HOP = 2  # example prompts per hop count in the attention section


def default_lengths(trained: int, n_ctx: int) -> list[int]:
    """The trained length and its doublings of the content, ``(L-1)·2^k + 1``, within ``n_ctx``."""
    lengths = [trained]
    while len(lengths) < MAX_LENGTHS and (lengths[-1] - 1) * 2 + 1 <= n_ctx:
        lengths.append((lengths[-1] - 1) * 2 + 1)
    return lengths


# --------------------------------------------------------------------------- sections


def accuracy_section(table: pd.DataFrame, *, about: str, trained_length: int) -> Section:
    from headkit.evaluation import accuracy_table
    from headkit.plots import accuracy_by_length_figure
    from headkit.report import Section

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
    from headkit.plots import head_scores_figure
    from headkit.report import Section

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
    from headkit.plots import dynamics_figure
    from headkit.report import Section

    steps = sorted(table["step"].unique().tolist())
    figure = dynamics_figure(
        table, title=f"Learning dynamics<br><sup>{about}, checkpoints at steps {', '.join(map(str, steps))}</sup>"
    )
    return Section(
        "Learning dynamics over checkpoints",
        how_to_read=(
            "top: held-out accuracy per hop at each checkpoint; bottom: each head's symbolic − positional score "
            "(above 0: symbolic) at the same checkpoints, grey open circles where the head is inactive."
        ),
        figures=(figure,),
    )


def ablation_section(table: pd.DataFrame, *, about: str, n_prompts: int) -> Section:
    from headkit.plots import ablation_by_hop_figure
    from headkit.report import Section

    figure = ablation_by_hop_figure(
        table, title=f"Mean ablation: accuracy change per hop<br><sup>{about}, {n_prompts} prompts</sup>", bound=1.0
    )
    wide = table.pivot_table(index=["layer", "head"], columns="hop", values="delta").reset_index()
    wide.columns = [c if isinstance(c, str) else f"hop{c}" for c in wide.columns]
    return Section(
        "Ablation per hop",
        how_to_read=(
            "each cell is the accuracy change when one head's output is replaced by its mean, on prompts of "
            "one hop count; red = the task needs that head, white = no effect."
        ),
        figures=(figure,),
        tables=(("accuracy change under mean ablation, by hop", wide),),
    )


def patching_section(model: HookedTransformer, batch: TaskBatch, *, about: str) -> Section:
    """Denoising patching of every head's ``z`` and of ``resid_pre`` by position."""
    from headkit.interventions import metrics
    from headkit.interventions.activation_patching import activation_patching
    from headkit.plots import patching_figure
    from headkit.report import Section

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
            "blue 1 = the patch restores the clean answer fully, white 0 = no effect, red = it pushes further away."
        ),
        figures=(
            patching_figure(heads, title=f"Patching each head's output (z){common}"),
            patching_figure(
                resid, columns="position", title=f"Patching the residual stream by position (resid_pre){common}"
            ),
        ),
    )


def attention_section(
    model: HookedTransformer, batch: TaskBatch, *, about: str, heads: pd.DataFrame | None = None
) -> Section:
    """`task_attention_view` of the first ``VIEWS_PER_HOP`` prompts of every hop count."""
    from headkit.plots import task_attention_view
    from headkit.report import Section

    labels = {} if heads is None else {(int(r.layer), int(r.head)): str(r.label) for r in heads.itertuples()}
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


# --------------------------------------------------------------------------- command


def _report(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    folder = run_dir_checkpoint(run)
    # default: RUN_DIR/report; for a checkpoint directory ./report_<name>, never inside the checkpoint
    out = Path(args.out) if args.out is not None else (run / "report" if run != folder else Path(f"report_{folder.name}"))
    check_output_path(out, directory=True, inputs=[run])  # before any work: writable, not a run's own files
    use_threads(args.threads)
    import pandas as pd

    from headkit.checkpoints import load_checkpoint
    from headkit.evaluation import evaluate
    from headkit.interventions import metrics
    from headkit.interventions.ablation import ablation_sweep_by_hop
    from headkit.io import write_csv, write_text
    from headkit.plots import model_description, write_figure
    from headkit.report import report_html
    from headkit.scores.positional_symbolic import classify_heads

    ckpt = load_checkpoint(folder)
    if ckpt.task is None:
        raise HeadkitError(f"checkpoint {ckpt.path} records no task: cannot build prompts for its report")
    model, task = ckpt.model, ckpt.task
    trained = task.build(1, seed=args.seed).length
    lengths = default_lengths(trained, model.cfg.n_ctx)
    about = f"{task.name} {model_description(model)}, step {ckpt.step}"
    progress = not args.no_progress
    tables: dict[str, pd.DataFrame] = {}

    print(f"report of {about} ({ckpt.path})")
    print("accuracy by length ...")
    tables["accuracy"] = evaluate(model, task, lengths=lengths, n=args.n, seed=args.seed, progress=progress)
    sections = [accuracy_section(tables["accuracy"], about=about, trained_length=trained)]
    print("head census ...")
    classify_batch = task.build(args.n_prompts, seed=args.seed)
    tables["heads"] = classify_heads(model, classify_batch.tokens)
    sections.append(heads_section(tables["heads"], about=about, n_prompts=args.n_prompts, length=trained))
    if run != folder:
        from headkit.scores.dynamics import track_heads

        print("learning dynamics over checkpoints ...")
        tables["dynamics"] = track_heads(run, n_prompts=args.n_prompts, seed=args.seed, eval_n=args.n, progress=progress)
        sections.append(dynamics_section(tables["dynamics"], about=f"{task.name} {model_description(model)}"))
    print("mean ablation per hop ...")
    batch = task.build(args.n, seed=args.seed + 1)
    tables["ablation"] = ablation_sweep_by_hop(model, batch, method="mean", metric=metrics.accuracy(batch, per_example=True))
    sections.append(ablation_section(tables["ablation"], about=about, n_prompts=args.n))
    print("activation patching ...")
    sections.append(patching_section(model, batch, about=about))
    sections.append(attention_section(model, batch, about=about, heads=tables["heads"]))

    written = [write_csv(out / f"{name}.csv", table) for name, table in tables.items()]
    if args.png:
        plots = [f for s in sections for f in s.figures if hasattr(f, "write_image")]
        for i, figure in enumerate(plots):
            written += write_figure(figure, out / "figures" / f"figure_{i + 1}", png=True, plotlyjs="directory")
        if not any(p.suffix == ".png" for p in written):
            print("no PNG written: PNG export needs kaleido >= 1 and a Chromium (pip install -e '.[figures]')")
    page = out / "report.html"
    written.append(write_text(page, report_html(f"headkit report: {about}", sections, root=out)))
    print(f"wrote {len(written)} files to {out}:")
    for path in written:
        print(f"  {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="one self-contained HTML page with every figure of a trained run (works offline)"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of `headkit train` (or a checkpoint directory)")
    p.add_argument(
        "--out", default=None,
        help="folder of report.html and its tables (default RUN_DIR/report; for a checkpoint directory ./report_NAME)",
    )  # fmt: skip
    p.add_argument("--png", action="store_true", help="also write every plotly figure as PNG (needs kaleido >= 1)")
    p.add_argument("--n", type=positive_int, default=256, help="prompts per length, ablation and patching (default 256)")
    p.add_argument("--n-prompts", type=positive_int, default=64, help="prompts of the head census (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(p)
    p.set_defaults(func=_report)
