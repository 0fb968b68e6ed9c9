"""tools/pytest_cpu_profile.py: the table from hand-made numbers, and the plugin in a real pytest run."""

from __future__ import annotations

import subprocess
import sys

from tools.pytest_cpu_profile import report

from shared import ROOT


def test_report_ranks_tests_sums_files_and_states_both_totals() -> None:
    per_test = {"tests/a.py::x": 1.5, "tests/b.py::y": 4.25, "tests/a.py::z": 0.5}
    assert report(per_test, 7.0).splitlines() == [
        "   CPU-s  test",
        "    4.25  tests/b.py::y",
        "    1.50  tests/a.py::x",
        "    0.50  tests/a.py::z",
        "",
        "   CPU-s  file",
        "    4.25  tests/b.py",
        "    2.00  tests/a.py",  # 1.5 + 0.5
        "",
        "    6.25  3 tests",
        "    7.00  session",
    ]
    assert report(per_test, 7.0, top=1).splitlines()[1:3] == ["    4.25  tests/b.py::y", ""]


def test_a_run_with_the_plugin_lists_every_test_and_charges_a_waited_for_child(tmp_path) -> None:
    (tmp_path / "test_two.py").write_text(
        "import subprocess, sys\n"
        "def test_child():\n"
        "    subprocess.run([sys.executable, '-c', 'sum(range(10**7))'], check=True)\n"
        "def test_nothing():\n"
        "    pass\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the repository's options
    out = tmp_path / "cpu.txt"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p",
                           "tools.pytest_cpu_profile", "--cpu-profile", str(out), "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), str(tmp_path / "test_two.py")], cwd=ROOT, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    rows = [line.split(None, 1) for line in out.read_text().splitlines() if line and not line.endswith("CPU-s  test")]
    tests = {name: float(s) for s, name in rows if "::" in name}
    assert set(tests) == {"test_two.py::test_child", "test_two.py::test_nothing"}
    # the child's CPU time (summing ten million integers) lands on the test that waited for it
    assert tests["test_two.py::test_child"] > tests["test_two.py::test_nothing"]
    totals = dict((name, float(s)) for s, name in rows if name in ("2 tests", "session", "test_two.py"))
    assert totals["2 tests"] == totals["test_two.py"] and totals["session"] >= totals["2 tests"]
