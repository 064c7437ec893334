"""The package's layout: modules of at most 500 lines, a guide class of at most
250, and imports that only go down (reading the model never imports the
guides; heads never see the model's structure)."""

import ast
import graphlib
import inspect
from pathlib import Path

import pyro_amortized
from pyro_amortized import AutoAmortizedGuide

PACKAGE = Path(pyro_amortized.__file__).parent
READING = ("structure", "latent_sites", "prototype", "arguments", "plate_arguments", "observed")
HEADS = ("heads", "discrete_heads", "flow_heads", "global_heads")


def _imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in it)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                imported.update(name.split(".")[0] for name in names)
        graph[path.stem] = imported
    return graph


def _below(graph: dict[str, set[str]], module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for imported in graph[todo.pop()] - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def test_no_module_is_over_500_lines_and_the_guide_class_over_250():
    sizes = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: size for name, size in sizes.items() if size > 500} == {}
    assert len(inspect.getsourcelines(AutoAmortizedGuide)[0]) <= 250


def test_imports_go_one_way():
    graph = _imports()
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises on a cycle
    assert set(order) >= set(READING + HEADS)
    for module in READING:
        assert not {"guides", "family_guides", "passes", *HEADS} & _below(graph, module), module
    for module in HEADS:
        assert not {"structure", "building", "calls", "plan"} & _below(graph, module), module
