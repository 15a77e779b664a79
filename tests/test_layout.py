"""The package's architecture, as the folder tree shows it, holds: no module reaches another's private names, no
import cycle hides among the modules, and the old module paths are the moved modules themselves."""
import ast
import importlib
from pathlib import Path

import pytest

import timm_isomax
from timm_isomax._moved import MOVED_MODULES

PACKAGE = Path(timm_isomax.__file__).parent
REPO = PACKAGE.parent


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _imports(name: str, path: Path, module_level_only: bool):
    """``(imported module, names)`` of each ``from ... import`` of the package's own modules in ``path``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else ast.walk(tree)
    for node in nodes:
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module == "timm_isomax" or module.startswith("timm_isomax."):
            yield module, [alias.name for alias in node.names]


def test_no_module_imports_a_private_name_of_another():
    # private modules (_timm_compat: every timm internal we touch; _io; _lazy) are the package's own plumbing;
    # the private names inside modules are theirs alone
    modules = dict(_modules())
    reached = [f"{name}: from {module} import {imported}" for name, path in modules.items()
               for module, names in _imports(name, path, module_level_only=False)
               for imported in names if imported.startswith("_") and f"{module}.{imported}" not in modules]
    assert reached == []


def test_tests_and_scripts_import_only_public_names():
    reached = []
    for path in [*sorted((REPO / "tests").glob("*.py")), *sorted((REPO / "scripts").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("timm_isomax"):
                reached += [f"{path.name}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.ImportFrom) and node.level and node.module not in (None, "conftest"):
                reached += [f"{path.name}: from .{node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
    assert reached == []


def test_the_modules_import_each_other_without_a_cycle():
    # module-level imports only: an import inside a function runs later, and is kept for optional dependencies
    # (pytorch-ood) and import-time cost (datasets); a cycle hidden that way would show here as one too
    modules = dict(_modules())
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names in _imports(name, path, module_level_only=True):
            for candidate in (module, *(f"{module}.{n}" for n in names)):
                parts = candidate.split(".")
                # importing a submodule imports every package above it
                targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in modules)
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for target in graph[node]:
                if target == start:
                    return trail + [start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, trail + [target]))
        return None

    cycles = [" -> ".join(c) for c in map(cycle_from, graph) if c]
    assert cycles == []


def test_every_import_of_the_package_names_something_that_exists():
    missing = []
    for name, path in _modules():
        for module, names in _imports(name, path, module_level_only=False):
            loaded = importlib.import_module(module)
            for imported in names:
                if not hasattr(loaded, imported):
                    try:
                        importlib.import_module(f"{module}.{imported}")
                    except ImportError:
                        missing.append(f"{name}: from {module} import {imported}")
    assert missing == []


@pytest.mark.parametrize("old, new", sorted(MOVED_MODULES.items()))
def test_a_moved_module_keeps_its_old_import_path_as_the_same_module(old, new):
    moved = importlib.import_module(f"timm_isomax.{new}")
    assert importlib.import_module(f"timm_isomax.{old}") is moved
    assert getattr(timm_isomax, old) is moved  # `import timm_isomax.heads; timm_isomax.heads.X` works too


def test_the_packages_that_were_modules_still_export_their_names():
    from timm_isomax import benchmark, data, hub, ood

    for package in (benchmark, data, hub, ood):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    assert hub.save_pretrained.__module__ == "timm_isomax.hub.folder"
    assert ood.predict.__module__ == "timm_isomax.ood.deploy"
