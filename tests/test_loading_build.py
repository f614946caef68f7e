"""headkit.loading.build: the loaders' checked options and the component-by-component build.

The reference for `build_model` is a HookedTransformer built normally from the
same config: rebuilding it from its own tensors, one component at a time, on the
meta device must give the same tensors, buffers and logits.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import Tensor

import headkit.loading as loading
from headkit.errors import HeadkitError
from headkit.loading.build import LoadOptions, Processing, attention_buffers, build_model

FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def test_default_options_are_raw_float32_on_the_default_device():
    options = LoadOptions()
    assert (options.dtype, options.device, options.n_devices) == (torch.float32, None, 1)
    assert options.processing == Processing() and not options.processing.needed
    assert options.work_dtype == torch.float32


@pytest.mark.parametrize("flag", FLAGS)
def test_each_processing_flag_converts_in_float32(flag):
    options = LoadOptions(dtype="bfloat16", **{flag: True})
    assert options.dtype == torch.bfloat16
    assert getattr(options, flag) is True
    assert getattr(options.processing, flag) is True and options.processing.needed
    assert options.work_dtype == torch.float32
    assert LoadOptions(dtype="bfloat16").work_dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_devices=0), r"n_devices=0 is out of range: allowed 1 or more"),
        (dict(n_devices=True), r"n_devices must be an integer, got True"),
        (dict(n_devices="2"), r"n_devices must be an integer, got '2'"),
        (dict(n_devices=2, device="cpu"), r"n_devices=2 needs a CUDA device"),
        (dict(device="nowhere"), r"device 'nowhere' is not a torch device"),
        (dict(dtype="float64"), r"dtype 'float64' is not supported"),
    ],
)
def test_bad_options_are_refused_naming_them(kwargs, message):
    with pytest.raises(HeadkitError, match=message):
        LoadOptions(**kwargs)


@pytest.mark.parametrize("loader", [loading.load_gptj, __import__("headkit.pretrained").pretrained.load_pretrained])
def test_an_unknown_option_is_a_type_error_listing_the_allowed_ones(tmp_path, loader):
    with pytest.raises(TypeError, match=rf"{loader.__name__}\(\) got an unexpected keyword argument 'fold': allowed dtype"):
        loader(tmp_path, fold=True)  # refused before the (empty) directory is read


def _by_component(model) -> list[dict[str, Tensor]]:
    """``model``'s parameters split as the loaders split them: embedding, each block, the rest."""
    params = dict(model.named_parameters())
    blocks = [{k: v for k, v in params.items() if k.startswith(f"blocks.{layer}.")} for layer in range(model.cfg.n_layers)]
    embed = {k: v for k, v in params.items() if k.startswith(("embed.", "pos_embed."))}
    rest = {k: v for k, v in params.items() if not k.startswith("blocks.") and k not in embed}
    return [embed, *blocks, rest]


@pytest.mark.parametrize("positional", ["rotary", "standard"])
def test_build_model_equals_the_model_it_was_given(tiny_gptj, positional):
    from transformer_lens import HookedTransformer

    source = tiny_gptj()
    if positional == "standard":
        cfg = source.cfg.to_dict() | {"positional_embedding_type": "standard", "rotary_dim": None}
        source = HookedTransformer(cfg)
    parts = _by_component(source)
    rebuilt = build_model(
        source.cfg, lambda expected: iter(parts), options=LoadOptions(device="cpu"), layout=Tensor.contiguous,
        tokenizer=None, n_parts=len(parts), what="test", desc="test",
    )  # fmt: skip
    assert not rebuilt.training
    ours, reference = rebuilt.state_dict(), source.state_dict()
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name
    tokens = torch.randint(0, source.cfg.d_vocab, (2, 9))
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens), source(tokens))


def test_attention_buffers_are_those_a_normal_build_computes(tiny_gptj):
    source = tiny_gptj(rotary_dim=8)
    buffers = attention_buffers(source, torch.device("cpu"))
    for layer, block in enumerate(source.blocks):
        for name in ("rotary_sin", "rotary_cos", "IGNORE"):
            assert torch.equal(buffers[f"blocks.{layer}.attn.{name}"], getattr(block.attn, name)), name


def test_build_model_casts_and_releases_each_component_before_the_next(tiny_gptj):
    source = tiny_gptj()
    parts = _by_component(source)
    alive: list[weakref.ref] = []

    def copied(part: dict[str, Tensor]) -> dict[str, Tensor]:
        copies = {name: t.detach().clone() for name, t in part.items()}
        alive.extend(weakref.ref(t) for t in copies.values())
        return copies

    def convert(expected):
        for part in parts:
            gc.collect()
            assert all(ref() is None for ref in alive)  # the previous float32 copies are gone
            yield copied(part)  # this generator keeps no reference to them

    rebuilt = build_model(
        source.cfg, convert, options=LoadOptions(dtype="bfloat16", device="cpu"), layout=Tensor.contiguous,
        tokenizer=None, n_parts=len(parts), what="test", desc="test",
    )  # fmt: skip
    for name, tensor in source.named_parameters():
        assert torch.equal(rebuilt.get_parameter(name), tensor.to(torch.bfloat16)), name


def test_build_model_refuses_a_missing_tensor_in_one_line(tiny_gptj):
    source = tiny_gptj()
    parts = _by_component(source)
    del parts[1]["blocks.0.attn.W_Q"]
    with pytest.raises(HeadkitError, match=r"^test: the converted weights do not fit the model: tensor blocks\.0\.attn\.W_Q is missing$"):
        build_model(
            source.cfg, lambda expected: iter(parts), options=LoadOptions(device="cpu"), layout=Tensor.contiguous,
            tokenizer=None, n_parts=len(parts), what="test", desc="test",
        )  # fmt: skip


def test_the_package_still_exports_what_loading_py_did():
    from headkit.loading import build, files, gptj, gptj_processing

    homes = {
        "load_gptj": gptj, "read_gptj_config": gptj, "hooked_config": gptj, "expected_hf_shapes": gptj,
        "check_weights": gptj, "GPTJShapes": gptj, "GPTJ_HUB_NAME": gptj, "resolve_checkpoint_dir": files,
        "open_weight_files": files, "WeightFiles": files, "WEIGHT_FORMATS": files, "Processing": build,
        "state_dict_mismatch": build, "assign_state": build, "meta_model": build, "Weights": build,
        "PROCESSING_STEPS": gptj_processing,
    }  # fmt: skip
    for name, module in homes.items():
        assert getattr(loading, name) is getattr(module, name), name
