"""How the package's modules depend on each other, read from the source with `ast`:
no import cycles among lightfmp, lightfmp.cli and lightfmp.kernels, no imports of the package's own modules
inside functions in the CLI and the small modules, and one module that reads $LIGHTFMP_HOME."""
import ast
import importlib
from pathlib import Path

from lightfmp.cache import ENV_VAR, cache_home
from lightfmp.datasets.movielens import _cache_dir

PACKAGES = ("lightfmp", "lightfmp.cli", "lightfmp.kernels")


def package_dir(name: str) -> Path:
    return Path(importlib.import_module(name).__path__[0]).resolve()


def package_modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the three packages (subpackages included)."""
    roots = {name: package_dir(name) for name in PACKAGES}
    mods = {}
    for root_name, root in roots.items():
        for f in sorted(root.rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([root_name, *parts])
            # a folder installed as its own package (cli/, kernels/) is walked from its own root only
            if any(name.startswith(other + ".") or name == other
                   for other in roots if other != root_name and other.startswith(root_name + ".")):
                continue
            mods[name] = f
    return mods


def _target(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name a `from ... import` names (before the imported names are considered)."""
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(module: str, is_package: bool, node, known) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = _target(module, is_package, node)
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}


def _imports(tree: ast.Module, inside_functions: bool):
    """Import statements that run when the module is imported: not inside a function (class bodies and
    top-level if / try blocks do run); with inside_functions, the lazy ones in function bodies too."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if not inside_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        else:
            stack.extend(ast.iter_child_nodes(node))


def import_graph(mods: dict[str, Path], inside_functions: bool = False) -> dict[str, set[str]]:
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        deps = set()
        for node in _imports(tree, inside_functions):
            deps |= _imported(name, is_package, node, mods)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_reads_relative_and_absolute_imports():
    mods = package_modules()
    assert {"lightfmp", "lightfmp.cli.app", "lightfmp.cli.common", "lightfmp.kernels.op", "lightfmp.cache"} <= set(mods)
    graph = import_graph(mods)
    assert {"lightfmp.cli.common", "lightfmp.cli.bench_cmds", "lightfmp.cli.serving_cmds"} <= graph["lightfmp.cli.app"]
    assert "lightfmp.kernels.op" in graph["lightfmp.kernels"]          # from .op import ...
    assert "lightfmp.cache" in graph["lightfmp.datasets.movielens"]   # from ..cache import ...
    assert "lightfmp.distributed" in graph["lightfmp.cli.common"]     # from lightfmp import distributed


def test_no_import_cycles():
    found = cycles(import_graph(package_modules()))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_cycles_hidden_in_imports_inside_functions():
    """A lazy import that points back up (a command module importing from the app that registers it) is a
    cycle the module-level graph cannot see."""
    found = cycles(import_graph(package_modules(), inside_functions=True))
    assert not found, "import cycles through imports inside functions: " + "; ".join(" -> ".join(c) for c in found)


# modules whose own-package imports all sit at the top (heavy optional dependencies may still load lazily)
TOP_IMPORTS_ONLY = ["lightfmp.cli.*", "lightfmp.demo", "lightfmp.inspection", "lightfmp.progress",
                    "lightfmp.distributed", "lightfmp.checkpoint", "lightfmp.metrics", "lightfmp",
                    "lightfmp.__main__", "lightfmp.cache"]


def _selected(name: str) -> bool:
    return any(name == p or (p.endswith(".*") and name.startswith(p[:-1])) for p in TOP_IMPORTS_ONLY)


def _own_imports_in_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "lightfmp"):
                found.append(f"{path.name}:{node.lineno} from {'.' * node.level}{node.module or ''}")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "lightfmp" for a in node.names):
                found.append(f"{path.name}:{node.lineno} import {', '.join(a.name for a in node.names)}")
    return sorted(set(found))


def test_own_imports_sit_at_module_top():
    mods = package_modules()
    checked = {name: path for name, path in mods.items() if _selected(name)}
    assert {"lightfmp.cli.app", "lightfmp.cli.common", "lightfmp.distributed", "lightfmp.__main__"} <= set(checked)
    found = [hit for path in checked.values() for hit in _own_imports_in_functions(path)]
    assert not found, "imports of lightfmp modules inside functions: " + "; ".join(found)


def test_inner_import_detector(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import os\nfrom lightfmp import io\n\ndef f():\n    from .x import y\n    import lightfmp.rows\n"
                 "    import numpy\n")
    assert _own_imports_in_functions(p) == ["m.py:5 from .x", "m.py:6 import lightfmp.rows"]


# ---- one place per concept: the cache home ------------------------------------------------------------------
def test_only_the_cache_module_names_the_home_variable():
    readers = []
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and node.value == ENV_VAR:
                readers.append(name)
    assert readers == ["lightfmp.cache"], readers


def test_cache_home_order_home_then_variable_then_default(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_home() == tmp_path / "user" / ".cache" / "lightfmp"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert cache_home() == tmp_path / "env"
    assert cache_home(tmp_path / "given") == tmp_path / "given"
    assert cache_home("~/x") == tmp_path / "user" / "x"
    assert _cache_dir(None) == tmp_path / "env" / "movielens-100k"


def test_the_kernels_out_of_vocabulary_id_is_the_schemas():
    """kernels/ imports nothing of the package (it is installed beside it); its OOV id must still be the schema's."""
    from lightfmp.kernels import op
    from lightfmp import schema
    assert op.OOV_ID == schema.OOV_ID
