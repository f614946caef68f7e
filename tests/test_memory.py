"""headkit.memory: the one memory check and the one batcher.

References: /proc/meminfo and os.sysconf read here, torch.cuda's own counters, and
for the batcher the items themselves (the runs put back together, their sizes).
"""

from __future__ import annotations

import builtins
import os

import pytest
import torch

import headkit.memory as memory
from headkit.errors import HeadkitError
from headkit.memory import available_memory, batches, check_memory, grouped_batches


def test_host_memory_is_what_linux_says_is_available(monkeypatch):
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo")
    fields = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    total, available = (int(fields[k].split()[0]) * 1024 for k in ("MemTotal", "MemAvailable"))
    got = available_memory("cpu")
    assert 0 < got <= total
    assert abs(got - available) < total // 10  # it moves between the two reads, but not by a tenth of the machine
    assert available_memory(torch.device("cpu")) <= total  # a torch.device is taken as well


def test_without_meminfo_the_host_memory_is_the_physical_memory(monkeypatch):
    real_open = builtins.open

    def no_meminfo(path, *args, **kwargs):
        if str(path) == "/proc/meminfo":
            raise OSError("no procfs")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_meminfo)
    assert available_memory("cpu") == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", no_sysconf)
    assert available_memory("cpu") == memory.UNKNOWN  # unknown: nothing is refused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_memory_is_free_memory_plus_the_unused_cache():
    free, total = torch.cuda.mem_get_info(0)
    got = available_memory("cuda:0")
    assert free <= got <= total
    held = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda:0")  # 64 MiB allocated ...
    del held  # ... then freed: torch's cache keeps it, this process can reuse it
    cached = torch.cuda.memory_reserved(0) - torch.cuda.memory_allocated(0)
    assert cached >= 64 * 2**20
    assert available_memory("cuda:0") >= torch.cuda.mem_get_info(0)[0] + 64 * 2**20


def test_cuda_memory_counts_free_and_cached_not_the_total_on_any_machine(monkeypatch):
    """The CUDA branch with torch.cuda's counters faked: 10 GiB free of 80, 3 GiB cached of which 1 GiB in use."""
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 * 2**30)
    assert available_memory("cuda:1") == 12 * 2**30
    assert asked == [torch.device("cuda:1")]
    with pytest.raises(HeadkitError, match="needs about 13.0 GiB of memory on cuda:1 but only 12.0 GiB is available"):
        check_memory(13 * 2**30, what="one update", advice="use a smaller batch size", device=torch.device("cuda:1"))


def test_check_memory_refuses_more_than_available_naming_everything(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2 * 2**30)
    check_memory(2 * 2**30, what="x", advice="y")  # exactly what is available fits
    with pytest.raises(HeadkitError) as error:
        check_memory(3 * 2**30 + 1, what="7 copy prompts of length 5", advice="ask for fewer", device="cuda:1")
    assert str(error.value) == (
        "7 copy prompts of length 5 needs about 3.0 GiB of memory on cuda:1 but only 2.0 GiB is available: ask for fewer"
    )


def test_check_memory_asks_the_device_it_names(monkeypatch):
    asked = []
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": asked.append(device) or 10)
    with pytest.raises(HeadkitError, match="on cpu"):
        check_memory(11, what="w", advice="a")
    check_memory(5, what="w", advice="a", device="cuda")
    assert asked == ["cpu", "cuda"]


@pytest.mark.parametrize("items", [list(range(10)), range(3, 13), torch.arange(10) * 7, [], "abcdefg"])
@pytest.mark.parametrize("size", [1, 3, 4, 10, 11])
def test_batches_cut_items_into_consecutive_runs_of_at_most_size(items, size):
    runs = batches(items, size)
    assert all(0 < len(run) <= size for run in runs)
    assert all(len(run) == size for run in runs[:-1])  # only the last run is short
    joined = [x for run in runs for x in run]
    assert [int(x) if isinstance(x, torch.Tensor) else x for x in joined] == [
        int(x) if isinstance(x, torch.Tensor) else x for x in items
    ]
    assert len(runs) == -(-len(items) // size)


def test_batches_of_a_tensor_are_views_and_a_bad_size_is_refused():
    t = torch.arange(12).reshape(6, 2)
    first = batches(t, 4)[0]
    assert first.shape == (4, 2) and first.data_ptr() == t.data_ptr()  # a view, no copy
    for size in (0, -1, 2.0, True):
        with pytest.raises(HeadkitError, match="batch size"):
            batches(t, size)


def test_grouped_batches_sort_the_groups_and_never_mix_them():
    groups = {4: torch.tensor([0, 2, 3]), 2: torch.tensor([1]), 9: torch.tensor([5, 6, 7, 8, 9])}
    got = [(key, run.tolist()) for key, run in grouped_batches(groups, 2)]
    assert got == [(2, [1]), (4, [0, 2]), (4, [3]), (9, [5, 6]), (9, [7, 8]), (9, [9])]
    assert grouped_batches({}, 3) == []
