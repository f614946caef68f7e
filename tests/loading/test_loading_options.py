"""headkit.loading.options: the loaders' checked options."""

from __future__ import annotations

import pytest
import torch

from headkit.bridge.build import PROCESSING_FLAGS, Processing
from headkit.errors import HeadkitError
from headkit.loading.gptj import load_gptj
from headkit.loading.options import LoadOptions
from headkit.loading.pretrained import load_pretrained


def test_default_options_are_raw_float32_on_the_default_device():
    options = LoadOptions()
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert (options.dtype, options.device, options.n_devices) == (torch.float32, expected_device, 1)
    assert options.processing == Processing() and not options.processing.needed


@pytest.mark.parametrize("flag", PROCESSING_FLAGS)
def test_each_processing_flag_is_kept(flag):
    options = LoadOptions(dtype="bfloat16", **{flag: True})
    assert options.dtype == torch.bfloat16
    assert getattr(options, flag) is True
    assert getattr(options.processing, flag) is True and options.processing.needed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_devices=0), r"n_devices=0 is out of range: allowed 1 or more"),
        (dict(n_devices=True), r"n_devices must be an integer, got True"),
        (dict(n_devices="2"), r"n_devices must be an integer, got '2'"),
        (dict(n_devices=2, device="cpu"), r"n_devices=2: headkit loads a model onto one device"),
        (dict(device="nowhere"), r"device 'nowhere' is not a torch device"),
        (dict(dtype="float64"), r"dtype 'float64' is not supported"),
    ],
)
def test_bad_options_are_refused_naming_them(kwargs, message):
    with pytest.raises(HeadkitError, match=message):
        LoadOptions(**kwargs)


@pytest.mark.parametrize("loader", [load_gptj, load_pretrained])
def test_an_unknown_option_is_a_type_error_listing_the_allowed_ones(tmp_path, loader):
    with pytest.raises(TypeError, match=rf"{loader.__name__}\(\) got an unexpected keyword argument 'fold': allowed dtype"):
        loader(tmp_path, fold=True)  # refused before the (empty) directory is read


@pytest.mark.parametrize("loader", [load_gptj, load_pretrained])
def test_options_are_a_load_options_or_its_fields_never_both(tmp_path, loader):
    name = loader.__name__
    with pytest.raises(HeadkitError, match=rf"{name}: got options=LoadOptions\(...\) and keyword option\(s\) fold_ln"):
        loader(tmp_path, LoadOptions(dtype="bfloat16"), fold_ln=True)  # refused before the (empty) directory is read
    with pytest.raises(HeadkitError, match=f"{name}: options must be a LoadOptions, got dict"):
        loader(tmp_path, {"dtype": "bfloat16"})
    with pytest.raises(HeadkitError, match=f"{tmp_path}"):  # a LoadOptions alone is taken: the directory is read next
        loader(tmp_path, LoadOptions(dtype="bfloat16"))
