"""The package's import graph has no circles, and the layers import only downwards.

The graph: one node per module of rlhf_jax (a package is its __init__), an edge A -> B for
every `import` / `from ... import` in A's source that names B, read with `ast` (nothing is
imported). Both module-level imports and imports inside functions count: a circle closed by an
import deferred into a function still makes the two modules depend on each other; deferring only
hides it from the interpreter (all three circles issue 18 found were closed that way, and a graph
of module-level imports alone shows none of them). Imports under `if TYPE_CHECKING:` do not count.
`from P import X` is an edge to the module P.X when that is a module, else to P; importing a
submodule is not counted as an edge to its parent packages' __init__ (which Python also runs),
so a package's __init__ may re-export its submodules.

KNOWN_CYCLES lists circles tolerated for now (none); an entry must match a circle exactly, and
the test fails once a listed circle is gone so that its entry is deleted with it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rlhf_jax"

# frozenset of modules -> why it is still there.
KNOWN_CYCLES: dict = {}


def module_files(folder: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every .py under `folder` (the package `package`)."""
    out = {}
    for path in sorted(folder.rglob("*.py")):
        parts = [package, *path.relative_to(folder).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(dotted name, line) for every import in `tree`, at any depth; `from P import X` gives P.X
    (the caller decides whether that is a module). Relative imports are made absolute."""
    out = []

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".") if is_package else module.split(".")[:-1]
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            out.extend((f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(folder: Path = ROOT / PACKAGE, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """{module: {imported module of the package: first line importing it}}."""
    files = module_files(folder, package)
    graph = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in imported_names(tree, module, path.name == "__init__.py"):
            while name and name not in files:  # P.X that is no module -> P; a.b.c of a class -> a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.setdefault(name, line)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def describe(component: frozenset[str], graph: dict[str, dict[str, int]]) -> str:
    """The component's modules with the imports (file:line) that join them."""
    lines = [" <-> ".join(sorted(component))]
    for module in sorted(component):
        for target, line in sorted(graph[module].items()):
            if target in component:
                path = module.replace(".", "/") + ("/__init__.py" if (ROOT / module.replace(".", "/")).is_dir()
                                                   else ".py")
                lines.append(f"    {path}:{line} imports {target}")
    return "\n".join(lines)


def test_the_package_has_no_import_cycles_but_the_known_ones():
    graph = import_graph()
    assert len(graph) > 50 and "rlhf_jax.data.corpora" in graph  # the walk found the package
    found = cycles(graph)
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles in rlhf_jax:\n" + "\n".join(describe(c, graph) for c in new)
    gone = [f"{' <-> '.join(sorted(c))} ({why})" for c, why in KNOWN_CYCLES.items() if c not in found]
    assert not gone, "listed in KNOWN_CYCLES but no longer a cycle; delete the entries:\n" + "\n".join(gone)


def test_cycle_finder_on_a_hand_made_graph():
    """a -> b -> c -> a is one circle; d -> a and e -> e (a self-import) are none; f <-> g is another."""
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}, "e": {"e": 1}, "f": {"g": 1},
             "g": {"f": 1}}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["f", "g"]]


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    """A circle closed inside a function is found; `from . import x`, `from .x import y` and
    `import pkg.x as z` resolve to the module; TYPE_CHECKING imports are left out."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .inner import thing\n")
    (pkg / "sub" / "inner.py").write_text("def thing():\n    from .. import top\n    return top\n")
    (pkg / "top.py").write_text("import pkg.sub as s\nfrom pkg.sub.inner import thing\n")
    (pkg / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import top\n")
    (pkg / "other.py").write_text("from . import typed\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.sub"] == {"pkg.sub.inner": 1}
    assert graph["pkg.sub.inner"] == {"pkg.top": 2}
    assert graph["pkg.top"] == {"pkg.sub": 1, "pkg.sub.inner": 2}
    assert graph["pkg.typed"] == {} and graph["pkg.other"] == {"pkg.typed": 1}
    assert cycles(graph) == [frozenset({"pkg.sub", "pkg.sub.inner", "pkg.top"})]


def _top_level_packages_imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {name.split(".")[0] for name, _ in imported_names(tree, path.stem, False)}


def test_layers_import_downwards():
    """The library imports none of the scripts around it, and no script imports the tests
    (tools/benchmark_language.py read its samples from tests/ until they moved into rlhf_jax/data)."""
    upper = {"tests", "tools", "experiments"}
    offenders = [f"{p.relative_to(ROOT)} imports {sorted(_top_level_packages_imported(p) & upper)}"
                 for p in sorted((ROOT / PACKAGE).rglob("*.py")) if _top_level_packages_imported(p) & upper]
    offenders += [f"{p.relative_to(ROOT)} imports tests" for folder in ("tools", "experiments", "configs")
                  for p in sorted((ROOT / folder).rglob("*.py")) if "tests" in _top_level_packages_imported(p)]
    assert not offenders, "\n".join(offenders)
