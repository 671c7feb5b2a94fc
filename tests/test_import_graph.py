"""The package's import graph: no circle, and arrows only point down the layers of docs/method.md section 7.

Every ``import``/``from ... import`` of an ``ait2i`` module counts, at module level or inside a function (a late
import still is a dependency). A module may import modules of its own layer or of lower layers; ``shapes/`` (the
world) imports nothing of ait2i outside itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ait2i

SRC = Path(ait2i.__file__).resolve().parent

#: Lowest first. A module belongs to the first layer with a prefix of its dotted name.
LAYERS = (
    ("ait2i.version", "ait2i.parsing", "ait2i.io", "ait2i.shapes"),
    ("ait2i.boxes", "ait2i.losses"),
    ("ait2i.subjects", "ait2i.tokens", "ait2i.methods", "ait2i.capture"),
    ("ait2i.engine", "ait2i.hosts", "ait2i.regional"),
    ("ait2i.generate", "ait2i.viz", "ait2i.models", "ait2i.testing"),
    ("ait2i.bench",),
    ("ait2i.tuning",),
    ("ait2i",),  # the package itself: the public API (its __init__ re-exports the layers above); exact name only
    ("ait2i.demo",),
    ("ait2i.cli",),
)


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ("ait2i", *path.relative_to(SRC).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or (p != "ait2i" and name.startswith(p + ".")) for p in prefixes):
            return i
    raise AssertionError(f"{name} is in no layer of LAYERS: add it where it belongs")


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: {ait2i modules it imports}}`` (a name imported from a package counts as that package's module
    when it is one, e.g. ``from .hosts import sd3`` -> ``ait2i.hosts.sd3``)."""

    def known(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target == "ait2i" or target.startswith("ait2i."):
                    for alias in node.names:
                        deps.add(known(f"{target}.{alias.name}"))
            elif isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names if a.name == "ait2i" or a.name.startswith("ait2i.")}
        graph[name] = deps - {name}
    return graph


def test_the_scan_sees_the_package():
    mods = modules()
    graph = imports(mods)
    assert {"ait2i.engine", "ait2i.hosts.sd", "ait2i.methods.ait2i", "ait2i.cli"} <= set(mods)
    assert "ait2i.losses" in graph["ait2i.methods.ait2i"] or any(
        d.startswith("ait2i.losses") for d in graph["ait2i.methods.ait2i"]
    )


def test_no_import_circle():
    graph = imports(modules())
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_imports_only_point_down():
    graph = imports(modules())
    up = [
        f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if layer(d) > layer(m)
    ]
    assert not up, "upward imports:\n" + "\n".join(up)


def test_shapes_is_a_leaf():
    graph = imports(modules())
    out = [f"{m} imports {d}" for m, deps in graph.items() if m.startswith("ait2i.shapes") for d in deps]
    assert not [x for x in out if not x.split(" imports ")[1].startswith("ait2i.shapes")], out


def test_import_ait2i_loads_no_benchmark_cli_or_demo():
    import subprocess
    import sys

    code = (
        "import sys, ait2i; print(sorted(m for m in sys.modules if m.startswith(('ait2i.bench', 'ait2i.cli', "
        "'ait2i.demo', 'ait2i.tuning'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
    code = "import ait2i; from ait2i import tune; import ait2i.tuning; print(ait2i.tune is ait2i.tuning.tune)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"
