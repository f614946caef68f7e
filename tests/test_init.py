"""headkit/__init__.py: the lazy public API, option dataclasses included (issue 20)."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

import headkit

OPTIONS = ("LoadOptions", "Processing", "SwapOptions", "ClassifyOptions", "DetectorOptions", "DemoOptions",
           "ModelReportOptions")  # fmt: skip


@pytest.mark.parametrize("name", sorted(headkit._EXPORTS))
def test_every_export_is_the_object_its_module_defines(name):
    module = importlib.import_module(headkit._EXPORTS[name])
    expected = module if name == "metrics" else getattr(module, name)
    assert getattr(headkit, name) is expected
    assert name in headkit.__all__


@pytest.mark.parametrize("name", OPTIONS)
def test_the_option_dataclasses_are_exported_frozen(name):
    cls = getattr(headkit, name)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    cls()  # every field has a default: the defaults are the functions' defaults


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'headkit' has no attribute 'swap_options'"):
        headkit.swap_options  # noqa: B018
