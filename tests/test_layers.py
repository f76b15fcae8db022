"""The layering of docs/ARCHITECTURE.md, checked on the source: every `import` of pdfgc's own modules (top-level and
inside functions) goes downward, and no module imports itself back through others (no cycle).

Independent expectation: the layer table below is the one documented in docs/ARCHITECTURE.md; the imports are read
from the files with `ast`, not by importing anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pdfgc"

# rank of each top-level part of the package: a module may import only parts of a lower rank (and its own part)
LAYERS = {
    "constants": 0, "errors": 0, "fileio": 0,
    "data": 1, "provenance": 1,
    "models": 2,
    "losses": 3, "pipeline": 3,
    "stages": 4,
    "train": 5,
    "eval": 6,
    "demo": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """pdfgc modules imported anywhere in the file (absolute and relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name == "pdfgc" or a.name.startswith("pdfgc."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not (mod == "pdfgc" or mod.startswith("pdfgc.")):
                continue
            for alias in node.names:  # `from pdfgc.x import y` may import the submodule pdfgc.x.y
                out.add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in known else mod)
    return {m for m in out if m != name}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(m) for m in _modules() if m != "pdfgc"}
    assert parts <= set(LAYERS), f"add {sorted(parts - set(LAYERS))} to the layer table (docs/ARCHITECTURE.md)"


def test_no_upward_import():
    upward = []
    for name, deps in _graph().items():
        if name == "pdfgc":
            continue
        rank = LAYERS[_part(name)]
        for dep in deps:
            if dep == "pdfgc":
                continue
            d = _part(dep)
            if d != _part(name) and LAYERS[d] >= rank:
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_checks_can_fail():
    """The detectors themselves: a made-up upward edge and a made-up cycle are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert LAYERS[_part("pdfgc.eval.stage1")] > LAYERS[_part("pdfgc.train.checkpoint")]
    assert LAYERS[_part("pdfgc.stages.base")] < LAYERS[_part("pdfgc.train.run")]
    g = _graph()
    assert "pdfgc.train.checkpoint" in g["pdfgc.eval.stage1"]  # the parser sees function-level imports
