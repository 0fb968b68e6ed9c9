"""The import graph, read from the source with `ast`: gan/ has no import cycle, and no module imports another
module's private (`_name`) names.

Every Import / ImportFrom node counts, wherever it stands: at the top, inside a function, under
`if TYPE_CHECKING:` (a cycle there still means two modules that cannot be read one after the other).
Tests are held to the private-name rule too: they test what a module offers, not its insides.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("gan", "benchmarks", "experiments", "tools")  # packages of this repository (some may not exist)
ENTRY_SCRIPTS = ("train", "sample", "evaluate", "explore")


def imported_modules(tree: ast.AST, package: str = "gan") -> set[str]:
    """Dotted names of `package`'s modules that `tree` imports anywhere ("from gan import viz" -> "gan.viz")."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == package:  # from gan import viz: viz may be a module
                found |= {f"{package}.{a.name}" for a in node.names}
            elif node.module.split(".")[0] == package:
                found.add(node.module)
    return found


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
    assert imported_modules(tree) == {"gan.a", "gan.b", "gan.c", "gan.d"}


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
    for folder in (*FIRST_PARTY, "tests"):
        files += sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []
    return files


def test_no_private_name_is_imported_from_another_module():
    offences = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
                if top in (*FIRST_PARTY, *ENTRY_SCRIPTS, "shared"):
                    offences += [
                        f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from {node.module}"
                        for a in node.names
                        if a.name.startswith("_")
                    ]
    assert not offences, "\n".join(offences)
