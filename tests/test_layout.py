"""The package's layering: imports run one way, and the engine's modules use each other's public
names only."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lcirc_fast"

# lower ranks never import higher ones (a package's __init__ may re-export its own layer)
RANK = {"errors": 0, "config": 1, "segmenting": 1, "bptt": 1, "assets": 1, "plotting": 1,
        "flops": 1, "_build_config": 1, "ops": 2, "_ext": 2, "backend": 3, "modules": 4,
        "memory": 4, "memory_file": 4, "models": 5, "data": 6, "eval": 7, "training": 8, "bench": 8, "cli": 9,
        "__main__": 10}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool):
    """(line, imported lcirc_fast module) pairs of one file."""
    name = _name(path)
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("lcirc_fast"):
                continue
            for alias in node.names:       # `from .. import bptt` imports a module
                sub = f"{target}.{alias.name}"
                as_file = PKG.parent / Path(*sub.split("."))
                yield node.lineno, sub if (as_file.with_suffix(".py").is_file()
                                           or as_file.is_dir()) else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lcirc_fast"):
                    yield node.lineno, alias.name


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lcirc_fast"


FILES = sorted(PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {_layer(_name(p)) for p in FILES} - {"lcirc_fast"} <= set(RANK)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_run_one_way(path):
    src = _layer(_name(path))
    if src == "lcirc_fast":
        return                              # the package facade re-exports
    bad = [(line, target) for line, target in _imports(path, top_level_only=False)
           if _layer(target) != "lcirc_fast" and RANK[_layer(target)] > RANK[src]]
    assert not bad, f"{path.relative_to(PKG)} imports upwards: {bad}"


def test_no_import_cycle_at_module_level():
    graph = {_name(p): {t for _, t in _imports(p, top_level_only=True)} for p in FILES}

    def parents(module):                    # importing a.b.c runs a/__init__ and a/b/__init__
        parts = module.split(".")
        return [".".join(parts[:i]) for i in range(2, len(parts))]

    for module in list(graph):
        graph[module] |= {p for t in list(graph[module]) for p in parents(t) if p != module}
    state: dict[str, int] = {}

    def visit(module, stack):
        state[module] = 1
        for nxt in graph.get(module, ()):
            if nxt == module or nxt not in graph or module.startswith(nxt + "."):
                continue                    # a package importing its own submodules
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


ENGINE = [PKG / "memory.py", PKG / "memory_file.py", *sorted((PKG / "models").glob("*.py")),
          *sorted((PKG / "training").glob("*.py"))]
TORCH_PRIVATE = {"_version", "_apply"}     # torch's own attributes the engine reads


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(PKG)))
def test_engine_modules_use_public_names_of_other_objects(path):
    """`obj._name` only on self / cls (or the same class's other instances in memory.py)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")) or node.attr in TORCH_PRIVATE:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "super":
            continue
        if path.name == "memory.py" and ast.unparse(node.value) == "first":
            continue                        # CompressedMemory.stack reads its own class
        bad.append((node.lineno, ast.unparse(node)))
    assert not bad, f"{path.relative_to(PKG)} reads private names of other objects: {bad}"
