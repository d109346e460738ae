"""The package's shape: folders depend only on the folders below them in the data flow, no module
imports itself back through others, and the light entry points stay light.

Imports are read with `ast` from every module, at any depth (an import inside a function is a
dependency too); only those under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "hfmtl"
# The data flow, bottom first: a module may import from its own layer and the layers before it.
LAYERS = [
    ("hfmtl.errors", "hfmtl.typed", "hfmtl.files", "hfmtl.run_record"),
    ("hfmtl.tasks",),
    ("hfmtl.balancing",),
    ("hfmtl.config",),
    ("hfmtl.model",),
    ("hfmtl.training",),
    ("hfmtl.publish",),
    ("hfmtl.inference",),
    ("hfmtl.serving",),
    ("hfmtl.analysis",),
    ("hfmtl.cli",),
    ("hfmtl", "hfmtl._auto"),  # the public API and the Auto-class hook sit on top
]
MAX_LINES = 350


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


class _Imports(ast.NodeVisitor):
    """Absolute names of the hfmtl modules a module imports (outside TYPE_CHECKING blocks)."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "hfmtl")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        elif node.module and node.module.split(".")[0] == "hfmtl":
            source = node.module
        else:
            return
        for alias in node.names:  # `from . import adapters` imports a module
            candidate = f"{source}.{alias.name}"
            self.found.add(candidate if candidate in MODULES else source)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    visitor = _Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return {name for name in visitor.found if name != module and name in MODULES}


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_import_goes_down_the_data_flow():
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_import_circles():
    # Tarjan's strongly connected components: a component of more than one module is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == []


def test_no_module_is_over_the_size_limit():
    sizes = {module: len(path.read_text().splitlines()) for module, path in MODULES.items()}
    assert {module: n for module, n in sorted(sizes.items()) if n > MAX_LINES} == {}


def test_the_config_and_the_package_import_without_torch():
    code = "import sys, hfmtl, hfmtl.config; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_console_script_parses_without_torch():
    """`hfmtl --help` and every command's own parser (push, predict, serve...) build without torch,
    transformers or the model: the commands import those when they run."""
    code = (
        "import sys\nfrom hfmtl.cli.main import main\n"
        "for line in (['--help'], ['push', '--help'], ['predict', '--help'], ['serve', '--help'], ['export', '--help']):\n"
        "    try:\n        main(line)\n    except SystemExit as stop:\n        assert stop.code == 0, line\n"
        "assert not {'torch', 'transformers'} & set(sys.modules), 'imported at parse time'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: hfmtl push" in result.stdout and "usage: hfmtl serve" in result.stdout


@pytest.fixture(scope="module")
def saved_model(tiny_encoder_dir, tmp_path_factory) -> Path:
    from hfmtl.model import MultiTaskModel

    path = tmp_path_factory.mktemp("saved") / "model"
    MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": {"type": "classification", "num_labels": 2}}).save_pretrained(
        path
    )
    return path


def _loads(path: Path) -> str:
    return (
        f"model = transformers.AutoModel.from_pretrained({str(path)!r})\n"
        "assert type(model).__name__ == 'MultiTaskModel', type(model)\n"
    )


def test_import_hfmtl_after_transformers_and_peft_then_automodel_loads_a_saved_model(saved_model):
    """The registration hook of hfmtl/_auto.py, when transformers and peft came first (hfmtl first:
    the AutoModel case below)."""
    code = "import sys, transformers, peft, hfmtl\n" + _loads(saved_model)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("first", ["BertModel", "AutoModel", "PreTrainedModel", "T5EncoderModel"])
def test_import_hfmtl_then_any_transformers_name(first, saved_model):
    """`import hfmtl` hooks transformers' Auto modules: the hook must not re-enter a half-imported
    transformers. `import hfmtl` alone is enough for the Auto classes to load a saved model."""
    code = f"import hfmtl\nfrom transformers import {first}\nimport transformers\ntransformers.AutoConfig.for_model('hfmtl')\n"
    if first == "AutoModel":
        code += _loads(saved_model)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
