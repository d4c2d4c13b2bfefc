"""The package's layout: its import graph, and the README's layout section made from the tree.

``python tests/support/layout.py`` rewrites the README section between the layout markers
from the real tree, and each dvc.yaml stage's code dependencies (the files its module
imports, transitively) from the import graph; tests/unit/test_layout.py checks both agree.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "mlplatform"
README = ROOT / "README.md"
START, END = "<!-- layout:start (tests/support/layout.py) -->", "<!-- layout:end -->"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file, functions too)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in known}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                if base in known:
                    deps.add(base)
                deps |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle (as a list of modules), found by depth-first search."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _summary(init: Path) -> str:
    """What a folder holds: its docstring's first sentence, after "Room: " if it has one."""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip().rstrip(".")
    return first.partition(": ")[2] or first


def render() -> str:
    """The layout section: each folder, its modules, and the first words of its docstring."""
    lines = []
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    lines.append(f"src/mlplatform/    {' '.join(top)}")
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        names = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
        names += sorted(f"{p.name}/" for p in folder.iterdir() if (p / "__init__.py").is_file())
        if (folder / "templates").is_dir():
            names.append("templates/")
        for i, chunk in enumerate(textwrap.wrap(_summary(folder / "__init__.py"), 100 - 19)):
            lines.append(f"  {(folder.name + '/') if i == 0 else '':16} {chunk}")
        lines += [" " * 19 + chunk for chunk in textwrap.wrap(" ".join(names), 100 - 19)]
    lines += [
        "tests/unit/<room>/ fast tests of the pure cores, mirroring the rooms (make test-fast)",
        "tests/e2e/<room>/  real MLflow, DVC, Optuna, serving (marked e2e)",
        "tests/support/     helpers the tests import; fixtures in conftest.py and tests/fixtures/",
        "bench/             side-by-side benchmarks; figures in docs/benchmarks.md",
    ]
    return "```\n" + "\n".join(lines) + "\n```"


# --------------------------------------------------------------------------------------
# Code as a DVC dependency: each stage depends on the files its module imports.

DVC_YAML = ROOT / "dvc.yaml"
CODE_PREFIX = "src/mlplatform/"


def stage_modules() -> dict[str, str]:
    """DVC stage -> the module whose run() it calls (from the CLI's own table)."""
    from mlplatform.cli.pipeline import STAGE_MODULES

    return dict(STAGE_MODULES)


def closure(module: str, graph: dict[str, set[str]] | None = None) -> set[str]:
    """A module and everything it imports, transitively (the package's own modules)."""
    graph = graph if graph is not None else import_graph()
    seen: set[str] = set()
    stack = [module, "mlplatform"]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(graph.get(name, ()))
    return seen


def stage_code_deps(module: str, graph: dict[str, set[str]] | None = None) -> list[str]:
    """The source files (and template folders) a stage's module runs, as DVC deps."""
    known = modules()
    files = set()
    for name in closure(module, graph):
        path = known[name]
        files.add(str(path.relative_to(ROOT)))
        templates = path.parent / "templates"
        if templates.is_dir() and "templates" in path.read_text():
            files.add(str(templates.relative_to(ROOT)))
    return sorted(files)


def dvc_code_deps(text: str) -> dict[str, list[str]]:
    """Stage -> the code deps dvc.yaml lists for it."""
    import yaml

    stages = yaml.safe_load(text)["stages"]
    return {
        name: sorted(d for d in stage.get("deps", []) if str(d).startswith(CODE_PREFIX))
        for name, stage in stages.items()
    }


def render_dvc_yaml(text: str) -> str:
    """dvc.yaml with each stage's code deps replaced by the computed ones (comments kept)."""
    graph = import_graph()
    wanted = {s: stage_code_deps(m, graph) for s, m in stage_modules().items()}
    out, stage, in_deps = [], None, False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage, in_deps = stripped[:-1], False
        elif stage and line.startswith("    ") and not line.startswith("     "):
            in_deps = stripped == "deps:"
        if not (in_deps and stripped.startswith(f"- {CODE_PREFIX}")):
            out.append(line)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        ends_deps = in_deps and not following.startswith("      ")
        if ends_deps and stage in wanted:
            out += [f"      - {dep}" for dep in wanted[stage]]
            in_deps = False
    return "\n".join(out) + "\n"


def readme_section(text: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip()


def write_readme() -> None:
    text = README.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    README.write_text(text[:start] + "\n" + render() + "\n" + text[end:])


if __name__ == "__main__":
    write_readme()
    DVC_YAML.write_text(render_dvc_yaml(DVC_YAML.read_text()))
    sys.stdout.write(render() + "\n")
