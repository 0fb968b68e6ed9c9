"""The three places keep their jobs: the library (gan/) imports none of the lab (experiments/), the benchmarks or
the tools; the lab imports no benchmark; tools/report.py, which experiments and benchmarks share, imports nothing
of this repository. Imports inside functions count (read from the source, nothing is imported)."""

from __future__ import annotations

import ast

import pytest

from shared import ROOT

PACKAGES = ("gan", "experiments", "benchmarks", "tools")


def imported_packages(path) -> set[str]:
    """This repository's top-level packages (and entry scripts) that a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & {*PACKAGES, "train", "sample", "evaluate", "explore"}


@pytest.mark.parametrize(
    "package, allowed",
    [("gan", {"gan"}), ("experiments", {"gan", "experiments", "tools"}), ("tools", {"gan", "tools"})],
)
def test_imports_point_one_way(package, allowed):
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - allowed)
        for path in sorted((ROOT / package).glob("*.py"))
        if imported_packages(path) - allowed
    }
    assert not wrong, wrong


def test_shared_report_helpers_import_nothing_of_this_repository():
    assert imported_packages(ROOT / "tools" / "report.py") == set()
