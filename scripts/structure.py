"""The package's shape, as a newcomer would measure it: module sizes, long functions, and the
import graph's circles (strongly connected components of `stocklab.*` imports, lazy imports
inside functions included, `if TYPE_CHECKING:` imports left out: they never run).

    python scripts/structure.py              # the summary
    python scripts/structure.py --max-lines 450 --max-function 60 --check   # exit 1 past the limits
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "stocklab").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The stocklab modules `name` imports (a package import counts as its __init__)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type checkers only never run: not part of the graph
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def long_functions(path: Path, limit: int) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append((node.name, n))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-lines", type=int, default=450)
    ap.add_argument("--max-function", type=int, default=60)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    mods = modules()
    graph = {m: imports(m, p, set(mods)) for m, p in mods.items()}
    sizes = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
    big = {m: n for m, n in sizes.items() if n > a.max_lines}
    longf = {m: long_functions(p, a.max_function) for m, p in mods.items()}
    longf = {m: f for m, f in longf.items() if f}
    circles = cycles(graph)

    # the same graph between the package's first-level parts (stocklab.pipeline.* as one node)
    def top(m):
        return ".".join(m.split(".")[:2])

    packages = {}
    for m, deps in graph.items():
        packages.setdefault(top(m), set()).update(top(d) for d in deps if top(d) != top(m))
    package_circles = cycles(packages)
    print(f"modules: {len(mods)}, lines: {sum(sizes.values())}, largest: "
          + ", ".join(f"{m} {n}" for m, n in sorted(sizes.items(), key=lambda kv: -kv[1])[:5]))  # fmt: skip
    print(f"modules over {a.max_lines} lines: " + (", ".join(f"{m} ({n})" for m, n in big.items()) or "none"))
    print(f"functions over {a.max_function} lines: "
          + (", ".join(f"{m}.{f} ({n})" for m, fs in longf.items() for f, n in fs) or "none"))  # fmt: skip
    print("import circles: " + ("; ".join(" <-> ".join(c) for c in circles) or "none"))
    print("circles between packages: " + ("; ".join(" <-> ".join(c) for c in package_circles) or "none"))
    return 1 if a.check and (big or longf or circles or package_circles) else 0


if __name__ == "__main__":
    raise SystemExit(main())
