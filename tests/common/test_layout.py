"""The layout the README describes: no import cycles, dependencies that point one way, each layer of
``compressor/`` importing only the layers below it, and nothing of the benchmark kit at the top of ``runtime/``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("compressor", "runtime", "bentos", "ernie_common")
# compressor's layers, lowest first: a module may import its own layer and the ones before it
LAYERS = ("ernie_common", "compressor.recipe", "compressor.data", "compressor.modeling", "compressor.run",
          "compressor.deploy", "compressor")
# the one part of compressor that hands the student to the serving side, and so may use it
SERVING_USERS = ("compressor.deploy",)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """First-party modules ``name`` imports anywhere in its file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub where one exists
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [])
    assert not cycles, cycles


def _layer(name: str) -> int:
    """The index in LAYERS of the most specific layer ``name`` belongs to."""
    matches = [layer for layer in LAYERS if name == layer or name.startswith(layer + ".")]
    return LAYERS.index(max(matches, key=len))


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package):
    """bentos uses runtime only; runtime never imports compressor (a serving image has no training stack);
    compressor imports neither, but for compressor.deploy (export, model store, Hub: where the student goes
    after training); each layer of compressor imports only itself and the layers below."""
    allowed = {"bentos": ("bentos", "runtime", "ernie_common"), "runtime": ("runtime", "ernie_common"),
               "compressor": ("compressor", "ernie_common"), "ernie_common": ("ernie_common",)}[package]
    wrong = []
    for name, targets in GRAPH.items():
        if name.split(".")[0] != package:
            continue
        for target in targets:
            serving = name.startswith(SERVING_USERS) and target.split(".")[0] in ("runtime", "bentos")
            if target.split(".")[0] not in allowed and not serving:
                wrong.append(f"{name} -> {target}")
            elif package == "compressor" and not serving and _layer(target) > _layer(name):
                wrong.append(f"{name} -> {target} (upward)")
    assert not wrong, wrong


def test_compressor_is_in_subpackages_and_runtime_top_holds_no_benchmark_module():
    top = {p.stem for p in (REPO / "compressor").glob("*.py")}
    assert top <= {"__init__", "distill", "finetune", "demo"}, top  # the command-line entry points only
    subpackages = {p.name for p in (REPO / "compressor").iterdir() if p.is_dir()}
    assert {"recipe", "data", "modeling", "run", "deploy"} <= subpackages
    assert not [p.name for p in (REPO / "runtime").glob("*.py") if "bench" in p.stem]
    assert (REPO / "runtime" / "bench" / "__main__.py").is_file()  # `python -m runtime.bench` as before


def test_the_training_side_imports_without_bentoml():
    """A GPU training image has torch and the training stack but no BentoML: the distillation and demo entry
    points (and compressor.deploy, which hands the student to the model store) import there; BentoML is
    imported only when a model is stored."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['bentoml'] = None\n"  # `import bentoml` now raises ImportError
            "import compressor.distill, compressor.demo, compressor.deploy.deliver")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
