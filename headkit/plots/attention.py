"""Interactive attention views (circuitsvis) that display and save offline.

`attention_patterns` draws every head's attention on one prompt;
`task_attention_view` does it for a task prompt, with a caption naming the task,
the answer, the hop count and the chain positions. Both return an
`AttentionView`, whose HTML inlines circuitsvis's JavaScript bundle from the
installed package (``RenderedHTML.local_src``): circuitsvis's own ``str()`` and
``_repr_html_`` load it from a CDN, which an offline machine cannot reach.
`headkit.plots.output.write_figure` writes a view to a page; `headkit.report.page`
puts many views on one page with the bundle once.
"""

from __future__ import annotations

import html
from typing import Sequence

import torch
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Int
from torch import Tensor

from headkit.checks import check_int, check_layer, check_tokens
from headkit.errors import HeadkitError
from headkit.interventions.sites import hook_name
from headkit.model_types import Model
from headkit.tasks.base import TaskBatch


class AttentionView:
    """An interactive circuitsvis attention view with a caption; displays offline.

    ``html()`` is the view as an HTML fragment: a caption (which prompt, answer,
    hop count, heads; chain positions marked) and the circuitsvis widget. The
    widget's JavaScript bundle (~1.3 MB) is inlined from the installed
    circuitsvis (``RenderedHTML.local_src``), never loaded from a CDN: once per
    fragment with ``bundle=True``; a page of many views (`headkit.report.page`)
    includes it once and passes ``bundle=False``. In Jupyter the view displays
    through ``_repr_html_`` (bundle inlined, so it works offline).
    """

    def __init__(self, rendered: RenderedHTML, *, caption: str = "", head_names: Sequence[str] = ()) -> None:
        self.rendered = rendered
        self.caption = caption
        self.head_names = tuple(head_names)
        self.bundle, self.render_call = _split_circuitsvis(rendered.local_src)
        self.dom_id = self.render_call.split('"', 2)[1]

    def html(self, *, bundle: bool = True) -> str:
        caption = f'<div class="headkit-caption">{self.caption}</div>' if self.caption else ""
        script = (f"<script>{self.bundle}</script>" if bundle else "") + f"<script>{self.render_call}</script>"
        return (
            f'<div class="headkit-attention">{caption}'
            f'<div id="{self.dom_id}" class="headkit-attention-widget" style="margin: 10px 0;"></div>{script}</div>'
        )

    def _repr_html_(self) -> str:
        return self.html(bundle=True)

    def __str__(self) -> str:
        return self.html(bundle=True)


def _split_circuitsvis(local_src: str) -> tuple[str, str]:
    """circuitsvis ``local_src`` -> (the bundle's JavaScript, the ``CircuitsVis.render(...)`` call)."""
    opening = "<script crossorigin type=\"module\">"
    start, call = local_src.find(opening), local_src.rfind("CircuitsVis.render(")
    end = local_src.rfind("</script>")
    if start < 0 or call < start or end < call:
        raise HeadkitError("unexpected circuitsvis output: cannot find its bundle and render call")
    return local_src[start + len(opening) : call], local_src[call:end]


def attention_patterns(
    model: Model,
    tokens: Int[Tensor, " pos"] | Int[Tensor, "1 pos"],
    token_strings: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    head_labels: dict[tuple[int, int], str] | None = None,
    caption: str = "",
) -> AttentionView:
    """circuitsvis view of every head's attention pattern on one prompt.

    Heads are named ``L{layer}H{head}`` (plus their label from ``head_labels``,
    e.g. ``L3H0 symbolic``); ``token_strings`` label the positions
    (``batch.decode(i)`` for a task prompt); ``caption`` is HTML shown above.
    """
    tokens = tokens.reshape(1, -1)  # [1, pos]
    check_tokens(model, tokens)
    if len(token_strings) != tokens.shape[1]:
        raise HeadkitError(
            f"{len(token_strings)} token strings for a prompt of {tokens.shape[1]} tokens"
        )
    layers = list(range(model.cfg.n_layers)) if layers is None else [check_layer(model, layer) for layer in layers]
    names = {hook_name("pattern", layer) for layer in layers}
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    # [n_layers_shown * n_heads, pos, pos]
    pattern = torch.cat([cache[hook_name("pattern", layer)][0] for layer in layers])
    labels = head_labels or {}
    head_names = [
        f"L{layer}H{h}" + (f" {labels[layer, h]}" if (layer, h) in labels else "")
        for layer in layers
        for h in range(model.cfg.n_heads)
    ]
    from circuitsvis.attention import attention_heads

    rendered = attention_heads(
        attention=pattern.float().cpu(), tokens=list(token_strings), attention_head_names=head_names
    )
    return AttentionView(rendered, caption=caption, head_names=head_names)


def task_attention_view(
    model: Model,
    batch: TaskBatch,
    index: int,
    *,
    head_labels: dict[tuple[int, int], str] | None = None,
) -> AttentionView:
    """Attention of every head on prompt ``index`` of a task batch, with a caption.

    The caption names the task, the prompt, its answer, its hop count and the
    heads shown; chain positions (``batch.positions["chain"]``: query, landings,
    answer source) are marked in the tokens as ``[q]``, ``[1]``, ``[2]`` ...
    """
    check_int("prompt index", index, low=0, high=batch.n - 1)
    strings = list(batch.decode(index))
    chain = [int(p) for p in batch.positions.get("chain", torch.empty(batch.n, 0))[index].tolist() if p >= 0]
    for step, pos in enumerate(chain):
        strings[pos] = f"{strings[pos]} [{'q' if step == 0 else step}]"
    answer = batch.vocab.decode(batch.answers[index : index + 1])[0]
    hops = "" if batch.hops is None else f", {int(batch.hops[index])} hop(s)"
    path = " → ".join(f"{p} ({batch.decode(index)[p]})" for p in chain)
    names = [f"L{layer}H{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    caption = (
        f"<b>{html.escape(batch.task)} prompt {index}</b> (length {batch.length}{hops}), "
        f"answer <b>{html.escape(str(answer))}</b>"
        + (f"; chain positions {html.escape(path)} (marked [q], [1], ...)" if chain else "")
        + f"; heads {names[0]}–{names[-1]} (choose one in the widget)"
    )
    return attention_patterns(model, batch.tokens[index], strings, head_labels=head_labels, caption=caption)
