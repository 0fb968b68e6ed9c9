"""A pytest plugin that records the CPU seconds of each test: opt-in, for finding what the suite spends.

    nice -n 5 python -m pytest -p tools.pytest_cpu_profile --cpu-profile cpu.txt -n 0 -p no:cacheprovider

Per test (setup + call + teardown) it reads `os.times()` before and after: user + system of this process and of
its children that were waited for (every `subprocess.run` a test makes), so a test that launches train.py is
charged what train.py spent. Wall time is not recorded: on a loaded machine it says little. The report lists
the tests by CPU seconds, then the test files, then the session's total (collection included). Run it serially
(`-n 0`): under pytest-xdist each worker would write its own share (PATH.gw0, PATH.gw1, ...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest


def cpu_seconds() -> float:
    """User + system seconds of this process and of its waited-for children so far."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def report(per_test: dict[str, float], session_total: float, top: int | None = None) -> str:
    """The table: tests by CPU seconds (highest first; `top` of them when given), then each file's total, then
    the tests' sum and the session's total."""
    lines = [f"{'CPU-s':>8}  test"]
    ranked = sorted(per_test.items(), key=lambda kv: (-kv[1], kv[0]))
    lines += [f"{s:8.2f}  {name}" for name, s in ranked[:top]]
    per_file: dict[str, float] = {}
    for name, s in per_test.items():
        per_file[name.split("::")[0]] = per_file.get(name.split("::")[0], 0.0) + s
    lines += ["", f"{'CPU-s':>8}  file"]
    lines += [f"{s:8.2f}  {f}" for f, s in sorted(per_file.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", f"{sum(per_test.values()):8.2f}  {len(per_test)} tests", f"{session_total:8.2f}  session"]
    return "\n".join(lines) + "\n"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-profile", metavar="PATH", help="write each test's CPU seconds (user + sys, children too)")


class _Recorder:
    def __init__(self, path: Path, worker: str | None):
        self.start, self.per_test = cpu_seconds(), {}
        self.path = path.with_name(f"{path.name}.{worker}") if worker else path

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterable[None]:
        before = cpu_seconds()
        yield
        self.per_test[item.nodeid] = self.per_test.get(item.nodeid, 0.0) + cpu_seconds() - before

    def pytest_sessionfinish(self) -> None:
        self.path.write_text(report(self.per_test, cpu_seconds() - self.start))


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--cpu-profile")
    if path:
        # an xdist worker of THIS session (not a pytest that a test started inside one: the environment variable
        # PYTEST_XDIST_WORKER is inherited by such a child, config.workerinput is not)
        worker = getattr(config, "workerinput", {}).get("workerid")
        config.pluginmanager.register(_Recorder(Path(path), worker), "cpu_profile_recorder")
