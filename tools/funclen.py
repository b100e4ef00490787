"""Function length of a package: count, median, p90 and max of every def, in source lines
(signature + body) and in statements (the AST's, nested ones included: independent of how the
formatter wraps a call).

    python -m tools.funclen [orchestrate]

Used for the architecture notes (issue 12): the before/after of a refactor.
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path


def statements(node: ast.AST) -> int:
    """Statements under a def, nested defs' bodies included (they are part of it)."""
    return sum(isinstance(n, ast.stmt) for n in ast.walk(node)) - 1


def lengths(root: Path, measure: str = "lines") -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                end = node.end_lineno or node.lineno
                size = end - node.lineno + 1 if measure == "lines" else statements(node)
                out.append((size, f"{path}:{node.lineno} {node.name}"))
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "orchestrate")
    for measure in ("lines", "statements"):
        found = lengths(root, measure)
        sizes = sorted(n for n, _ in found)
        p90 = sizes[int(0.9 * (len(sizes) - 1))]
        print(
            f"{root}: {len(sizes)} functions, {measure}: median {statistics.median(sizes):g}, "
            f"p90 {p90}, max {sizes[-1]}"
        )
        for n, where in sorted(found, reverse=True)[:5]:
            print(f"  {n:4d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
