"""gan.runtime's thread choice: train.threads, the automatic rule, and OMP_NUM_THREADS."""

import os

import pytest
import torch

from gan import runtime


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("load, want", [(0.1, 2), (0.6, 1), (1.0, 1), (9.7, 1), (0.4, 2)])
def test_auto_threads_counts_idle_cores(monkeypatch, load, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert runtime.auto_threads() == want


def test_set_threads_explicit_auto_and_environment(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
    assert runtime.set_threads(0) == 3 and torch.get_num_threads() == 3  # 4 cores, one busy
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runtime.set_threads(0) == 2 and torch.get_num_threads() == 2  # the user's environment wins over auto
    assert runtime.set_threads(1) == 1  # an explicit train.threads wins over both
