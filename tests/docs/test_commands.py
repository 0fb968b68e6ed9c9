"""The commands written in README.md and docs/ run as written: every `python -m MODULE` and `python FILE.py` names
a module or file of this repository that exists and whose `--help` works, and every `make TARGET` is a Makefile
target. Only code (fenced blocks and `inline code`) is read, so prose never counts as a command. Each entry point's
`--help` runs in this process (argparse exits before any work), which keeps the whole check to a few seconds."""

from __future__ import annotations

import importlib
import inspect
import re
import sys

import pytest

from shared import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
OURS = ("gan", "experiments", "benchmarks", "tools")  # packages of this repository


def code_of(text: str) -> list[str]:
    """The fenced blocks and inline code spans of a Markdown page, in order."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    inline = re.findall(r"`([^`]+)`", re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S))
    return fenced + inline


def commands() -> dict[str, set[str]]:
    """Entry point -> pages naming it: 'python -m x.y' as 'x.y', 'python path.py' as 'path.py', 'make t' as 'make t'."""
    found: dict[str, set[str]] = {}
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        for code in code_of(page.read_text()):
            for module, path in re.findall(r"\bpython3? (?:-m ([\w.]+)|([\w./-]+\.py))", code):
                found.setdefault(module or path, set()).add(name)
            for target in re.findall(r"\bmake ([\w-]+)", code):
                found.setdefault(f"make {target}", set()).add(name)
    return found


FOUND = commands()
ENTRY_POINTS = sorted(c for c in FOUND if not c.startswith("make ") and c.split(".")[0].split("/")[0] != "pytest")


def module_name(command: str) -> str:
    """'experiments.ablation' stays; 'benchmarks/sampling.py' -> 'benchmarks.sampling'; 'train.py' -> 'train'."""
    return command.removesuffix(".py").replace("/", ".") if command.endswith(".py") else command


def test_the_pages_name_the_everyday_commands():
    # the extraction itself: the README's four entry points and both fresh-machine targets are found
    assert {"train.py", "sample.py", "evaluate.py", "explore.py", "make demo", "make test"} <= set(FOUND)
    assert len(ENTRY_POINTS) >= 10


@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_named_module_or_file_exists(command):
    pages = ", ".join(sorted(FOUND[command]))
    if command.endswith(".py"):
        assert (ROOT / command).is_file(), f"{pages} name(s) `python {command}`, which does not exist"
    else:
        path = ROOT / command.replace(".", "/")
        exists = path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
        assert exists and command.split(".")[0] in OURS, f"{pages} name(s) `python -m {command}`, not a module here"


@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_help_works(command, capsys, monkeypatch):
    name = module_name(command)
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    main = importlib.import_module(name).main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"]) if inspect.signature(main).parameters else main()
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    for command, pages in FOUND.items():
        if command.startswith("make "):
            assert command.split()[1] in targets, f"{', '.join(sorted(pages))} name(s) `{command}`: no such target"


def test_readme_fresh_machine_commands_are_the_makefile_targets():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## On a fresh machine", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.splitlines()] == ["make demo", "make test"]


def _everyday() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Everyday commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].split() for line in block.splitlines() if line.strip()]


def test_readme_everyday_commands_use_the_venv_and_the_demo_run():
    """A fresh shell after `make demo` has no activated venv and only runs/demo: every command calls
    .venv/bin/python, and every --checkpoint is runs/demo (training CIFAR-10 itself writes runs/cifar10)."""
    commands = _everyday()
    assert {words[1] for words in commands} == {"train.py", "sample.py", "evaluate.py", "explore.py"}
    assert all(words[0] == ".venv/bin/python" for words in commands)
    checkpoints = [words[words.index("--checkpoint") + 1] for words in commands if "--checkpoint" in words]
    assert checkpoints == ["runs/demo"] * 3


@pytest.mark.slow
def test_readme_everyday_sample_and_evaluate_run_as_typed_on_a_demo_run(tmp_path):
    """The sample and evaluate lines, word for word (the interpreter aside), in a folder whose runs/demo holds a
    2-step run of the demo config at the tiny test width: both exit 0 and write or print what they say. (The
    run is trained in this process: the lines under test are the two that run as typed.)"""
    import subprocess

    import train as train_cli

    from shared import TINY_RUN

    train = ["--config", str(ROOT / "configs" / "demo.yaml"), "--run-dir", str(tmp_path / "runs" / "demo"),
             *TINY_RUN, "train.steps=2"]  # fmt: skip
    assert train_cli.main(train) == 0
    for words in _everyday():
        if words[1] not in ("sample.py", "evaluate.py"):
            continue  # explore.py serves a page (tests/gan/test_explorer.py); train.py downloads CIFAR-10
        proc = subprocess.run([sys.executable, str(ROOT / words[1]), *words[2:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        if words[1] == "evaluate.py":
            assert "coherence of 1000 samples: " in proc.stderr and '"num_samples": 1000' in proc.stdout
    assert (tmp_path / "grid.png").stat().st_size > 0
