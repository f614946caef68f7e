"""Where an intervention writes: every site, its hook, its head axis, which models have it.

A *site* is one activation of a TransformerLens block that headkit's
interventions read or overwrite. This module is the one place that names them:

==========  ===========================  ======================================  =========
site        hook (``blocks.{layer}.`` +)  activation shape                        head axis
==========  ===========================  ======================================  =========
z           ``attn.hook_z``              [batch, pos, head_index, d_head]        2
q           ``attn.hook_q``              [batch, pos, head_index, d_head]        2
k           ``attn.hook_k``              [batch, pos, head_index, d_head]        2
v           ``attn.hook_v``              [batch, pos, head_index, d_head]        2
pattern     ``attn.hook_pattern``        [batch, head_index, query_pos, key_pos] 1
resid_pre   ``hook_resid_pre``           [batch, pos, d_model]                   (layer)
resid_mid   ``hook_resid_mid``           [batch, pos, d_model]                   (layer)
attn_out    ``hook_attn_out``            [batch, pos, d_model]                   (layer)
mlp_out     ``hook_mlp_out``             [batch, pos, d_model]                   (layer)
==========  ===========================  ======================================  =========

A `Patch` writes a source activation into the run at one site: at one head (or
the whole layer, ``head=ALL``) and at some positions (for ``pattern``: query
rows). `Site.write` is how; `hook_name` is the hook's full name. Grouped-query
models hold ``n_key_value_heads`` heads at ``k`` and ``v`` (`site_heads`);
GPT-J-style and attention-only models have no ``resid_mid``, attention-only ones
no ``mlp_out`` (`available_sites`, `check_site` with the reason).

The names the command line offers as ``choices=`` live here too (`SITES`,
`ABLATION_METHODS`, `DIRECTIONS`): this module imports neither torch nor
TransformerLens, so the command line can import it before any argument check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from headkit.checks import check_model
from headkit.errors import HeadkitError

if TYPE_CHECKING:  # only the types: the command line imports this module cheaply
    from torch import Tensor

    from headkit.model_types import Model

ALL = -1  # the head of a layer site, the position column of an all-position patch

ABLATION_METHODS = ("zero", "mean", "resample")  # headkit.interventions.ablation.METHODS
DEFAULT_ABLATION_METHOD = "zero"  # the library's default (ablate, ablation_sweep)
DIRECTIONS = ("denoise", "noise")  # activation patching: run corrupted / run clean
DEFAULT_DIRECTION = "denoise"


class Patch(NamedTuple):
    """One patch: where to write the source activation into the base run."""

    layer: int
    head: int  # head index; ALL (-1) for layer sites
    position: int | Sequence[int] | slice  # position(s) written; slice(None) = all


@dataclass(frozen=True)
class Site:
    """A patchable activation: its hook inside a block, its head and position axes."""

    name: str
    hook: str  # hook name inside ``blocks.{layer}.``
    head_axis: int | None  # axis of head_index in the activation; None for a layer site
    position_axis: int  # the axis a patch's positions index (for pattern: query_pos)

    @property
    def per_head(self) -> bool:
        """Head site (one row per head) or layer site (head = ALL)."""
        return self.head_axis is not None

    def hook_name(self, layer: int) -> str:
        return hook_name(self.name, layer)

    def write(self, act: Tensor, source: Tensor, patch: Patch) -> None:
        """Write ``source`` into ``act`` (one copy's activation) at ``patch``'s head and positions."""
        index: list[Any] = [slice(None)] * (max(self.position_axis, self.head_axis or 0) + 1)
        index[self.position_axis] = patch.position
        if self.head_axis is not None:
            index[self.head_axis] = patch.head
        act[tuple(index)] = source[tuple(index)]


SITES: dict[str, Site] = {
    "z": Site("z", "attn.hook_z", head_axis=2, position_axis=1),
    "q": Site("q", "attn.hook_q", head_axis=2, position_axis=1),
    "k": Site("k", "attn.hook_k", head_axis=2, position_axis=1),
    "v": Site("v", "attn.hook_v", head_axis=2, position_axis=1),
    "pattern": Site("pattern", "attn.hook_pattern", head_axis=1, position_axis=2),
    "resid_pre": Site("resid_pre", "hook_resid_pre", head_axis=None, position_axis=1),
    "resid_mid": Site("resid_mid", "hook_resid_mid", head_axis=None, position_axis=1),
    "attn_out": Site("attn_out", "hook_attn_out", head_axis=None, position_axis=1),
    "mlp_out": Site("mlp_out", "hook_mlp_out", head_axis=None, position_axis=1),
}
HEAD_SITES = tuple(name for name, site in SITES.items() if site.per_head)  # z, q, k, v, pattern
LAYER_SITES = tuple(name for name, site in SITES.items() if not site.per_head)
QKV = ("q", "k", "v")  # a head's inputs: the receivers of path patching


# activations headkit reads but never patches: the scores' pre-softmax attention
# (`headkit.scores.capture`) and the rotated queries and keys (`headkit.scores.rope`)
READ_HOOKS: dict[str, str] = {
    "attn_scores": "attn.hook_attn_scores",  # [batch, head_index, query_pos, key_pos], scaled, masked -inf
    "rot_q": "attn.hook_rot_q",  # [batch, pos, head_index, d_head], after rotary
    "rot_k": "attn.hook_rot_k",
}


def hook_name(site: str, layer: int) -> str:
    """The full hook name of ``site`` (a `SITES` or `READ_HOOKS` name) in block ``layer``,
    e.g. ``blocks.3.attn.hook_z``: the one place headkit spells a hook name."""
    hook = SITES[site].hook if site in SITES else READ_HOOKS[site]
    return f"blocks.{layer}.{hook}"


def describe(site: str, patch: Patch) -> str:
    """``"z of head 1.0"``, ``"resid_pre of layer 2 at position 3"``: a patch in words."""
    unit = f"layer {patch.layer}" if patch.head == ALL else f"head {patch.layer}.{patch.head}"
    where = "" if isinstance(patch.position, slice) else f" at position {patch.position}"
    return f"{site} of {unit}{where}"


def missing_sites(model: Model) -> dict[str, str]:
    """Site name -> why this model does not have it."""
    missing = {}
    if hook_name("resid_mid", 0) not in model.hook_dict:
        missing["resid_mid"] = (
            "it computes attention and MLP in parallel from resid_pre (GPT-J style), so no "
            "residual stream lies between them"
            if model.cfg.parallel_attn_mlp
            else "it has no MLPs, so no residual stream lies between attention and MLP"
        )
    if model.cfg.attn_only:
        missing["mlp_out"] = "it has no MLPs (attention-only)"
    return missing


def available_sites(model: Model) -> list[str]:
    """The sites this model has: ``resid_mid`` only with sequential attention then
    MLP, ``mlp_out`` only with MLPs."""
    missing = missing_sites(model)
    return [name for name in SITES if name not in missing]


def check_site(model: Model, site: str) -> Site:
    """The `Site` called ``site``; unknown or absent in this model is an error listing the allowed."""
    check_model(model)
    allowed = ", ".join(available_sites(model))
    missing = missing_sites(model)
    if site in missing:
        raise HeadkitError(f"site {site!r} does not exist in this model: {missing[site]}; allowed {allowed}")
    if site not in SITES:
        raise HeadkitError(f"unknown site {site!r}: allowed {allowed}")
    return SITES[site]


def site_heads(model: Model, site: str) -> int:
    """Heads at a head site: k and v have ``n_key_value_heads`` in grouped-query models."""
    n_kv = model.cfg.n_key_value_heads
    if site in ("k", "v") and n_kv is not None and not getattr(model.cfg, "ungroup_grouped_query_attention", False):
        return n_kv
    return model.cfg.n_heads
