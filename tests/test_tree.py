"""The tree and its import graph, read from the source with `ast` (nothing is imported). The three places
keep their jobs: the library (gan/) imports none of the lab (experiments/), the benchmarks or
the tools; the lab imports no benchmark; the benchmarks import no lab and, of tools/, only tools/report.py, which
experiments and benchmarks share and which imports nothing of this repository. Imports inside functions count (read from the source, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared import ROOT

PACKAGES = ("gan", "experiments", "benchmarks", "tools")  # this repository's packages
ENTRY_SCRIPTS = ("train", "sample", "evaluate", "explore")


def imported_names(tree: ast.AST) -> set[str]:
    """Every dotted name a module imports, anywhere in it ("from gan import grids" -> "gan", "gan.grids")."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def imported_packages(path) -> set[str]:
    """This repository's top-level packages (and entry scripts) that a file imports, anywhere in it."""
    return {name.split(".")[0] for name in imported_names(ast.parse(path.read_text()))} & {*PACKAGES, *ENTRY_SCRIPTS}


def imported_modules(tree: ast.AST, package: str = "gan") -> set[str]:
    """Dotted names under `package` that `tree` imports anywhere (a name that is no module, `gan.x.f`, is
    dropped by the caller, which knows the modules)."""
    return {name for name in imported_names(tree) if name.split(".")[0] == package and "." in name}


@pytest.mark.parametrize(
    "package, allowed",
    [
        ("gan", {"gan"}),
        ("experiments", {"gan", "experiments", "tools"}),
        ("tools", {"gan", "tools"}),
        ("benchmarks", {"gan", "benchmarks", "tools"}),
    ],
)
def test_imports_point_one_way(package, allowed):
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - allowed)
        for path in sorted((ROOT / package).glob("*.py"))
        if imported_packages(path) - allowed
    }
    assert not wrong, wrong


def lab_and_tool_imports(source: str) -> set[str]:
    """The names under experiments/ and tools/ that `source` imports anywhere, but tools/report.py's (the
    report helpers the lab and the benchmarks share)."""
    return {
        name
        for name in imported_names(ast.parse(source))
        if name.split(".")[0] == "experiments"
        or (name.startswith("tools.") and not (name + ".").startswith("tools.report."))
    }


def test_benchmarks_import_no_lab_and_of_the_tools_only_the_shared_report_helpers():
    """benchmarks/ time the library; a script that runs an experiment is an experiment (experiments/)."""
    wrong = {
        str(path.relative_to(ROOT)): sorted(found)
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        if (found := lab_and_tool_imports(path.read_text()))
    }
    assert not wrong, wrong
    # the rule on hand-made sources: the lab and every other tool are refused, the report helpers pass
    source = "import experiments.gates\ndef f():\n    from tools import config_reference\n"
    assert lab_and_tool_imports(source) == {"experiments.gates", "tools.config_reference"}
    assert lab_and_tool_imports("from tools.report import table\nfrom tools import report\n") == set()


def test_shared_report_helpers_import_nothing_of_this_repository():
    assert imported_packages(ROOT / "tools" / "report.py") == set()


def gan_graph() -> dict[str, set[str]]:
    """gan module -> the gan modules it imports (names that are not modules, such as `gan.x.f`, dropped)."""
    modules = {f"gan.{p.stem}": p for p in sorted((ROOT / "gan").glob("*.py")) if p.stem != "__init__"}
    return {
        name: {m for m in imported_modules(ast.parse(path.read_text())) if m in modules and m != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None; depth-first search with white/grey/black marks."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d"}}) == ["d", "d"]
    tree = ast.parse("import gan.a\nfrom gan import b\nfrom gan.c import f\ndef g():\n    from gan.d import h\n")
    # names that are no modules (gan.c.f, gan.d.h) stay; gan_graph keeps only the real modules
    assert imported_modules(tree) == {"gan.a", "gan.b", "gan.c", "gan.c.f", "gan.d", "gan.d.h"}


def test_gan_imports_have_no_cycle():
    graph = gan_graph()
    assert "gan.models" in graph and graph["gan.models"]  # the walk sees the real modules
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in gan/: " + " -> ".join(cycle)


def test_networks_know_no_files_and_files_no_hub():
    """models reach files and the Hub only through the mixin module; the mixin, the Hub and the file
    modules import no network (gan.models)."""
    graph = gan_graph()
    assert not graph["gan.models"] & {"gan.checkpoint", "gan.hub", "gan.sampling"}
    for module in ("gan.pretrained", "gan.hub", "gan.checkpoint", "gan.sampling"):
        assert "gan.models" not in graph[module], module
    assert "gan.hub" not in graph["gan.checkpoint"]


def python_files() -> list[Path]:
    files = [ROOT / f"{name}.py" for name in ENTRY_SCRIPTS]
    for folder in (*PACKAGES, "tests"):
        files += sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []
    return files


def test_no_private_name_is_imported_from_another_module():
    offences = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
                if top in (*PACKAGES, *ENTRY_SCRIPTS, "shared"):
                    offences += [
                        f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from {node.module}"
                        for a in node.names
                        if a.name.startswith("_")
                    ]
    assert not offences, "\n".join(offences)
