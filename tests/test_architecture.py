"""The package's shape, enforced: import direction and circles, TransformerLens behind the backend
seam; long modules and functions reported as warnings. Static (reads the source with ``ast``),
so it runs in a second.

The layer order is docs/architecture.md's: a module may import only modules of lower rank (or
its own subpackage's siblings). Function-level imports count; ``if TYPE_CHECKING:`` imports do
not.

    python -m pytest tests/test_architecture.py -q
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "unlearn_interp"

# Rank of each top-level unit (a module, or a subpackage as a whole); imports go downwards only.
RANKS = {
    "errors": 0,
    "artifacts": 1,
    "checks": 1,
    "executors": 1,  # serial / Ray executors of the sweep engine: imports only errors (and ray)
    "data": 2,
    "stats": 2,
    "sources": 2,
    "variants": 3,
    "real_data": 3,
    "plotting": 3,
    "hf_convert": 4,
    "backend_decode": 4,  # the buffered cache entry and the rotated-key decode attention
    "backend_components": 5,  # the toolkit's TransformerLens components, put on built models
    "loader": 6,  # models.load_model (whole or first blocks), re-exported by models
    "models": 7,
    "kv_cache": 8,  # decoding caches, re-exported by activations
    "activations": 9,
    "interventions": 10,
    "training": 10,
    "directions": 11,
    "evaluation": 12,
    "rmu": 12,
    "grad_diff": 12,
    "organism": 13,
    "attacks": 13,
    "analysis": 14,
    "pipeline": 15,
    "cli_options": 16,  # options several commands share (cli.py declares the commands)
    "cli": 17,
    "__init__": 18,
}
# Plotting draws DataFrames: it may not import model code, whatever the ranks say.
PLOTTING_MAY_IMPORT = {"errors", "artifacts", "data", "stats", "plotting"}

# Where TransformerLens may be named: the backend seam (docs/architecture.md).
SEAM = {
    "models",
    "loader",  # load_model: HF config -> TL, tensors streamed, first blocks
    "hf_convert",
    "backend_components",  # the toolkit's components on the models it builds
    "backend_decode",  # cached decoding (rotated keys, grouped attention)
    "kv_cache",  # TransformerLens' key-value cache classes
    "activations",
    "interventions",
    "variants",
}
TL_NAMES = [
    r"\btransformer_lens\b",
    r"\bHookedTransformer\w*",
    r"\bmodel\.cfg\b",
    r"\bstop_at_layer\b",
    r"\bstart_at_layer\b",
    r"\bpast_kv_cache\b",
    r"KeyValueCache",
    r"\bmodel\.(ln_final|unembed|embed|blocks|hooks|run_with_cache)\b",
    r"hook_resid_(post|pre|mid)",
]

# Sizes are smells, not limits: a module or function over these is reported (as a warning in
# the test summary) for a look, never failed. Split a module when it holds two ideas.
MODULE_LINES_WORTH_A_LOOK = 500
FUNCTION_LINES_WORTH_A_LOOK = 60


def _sources() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _unit(module: str) -> str:
    """The top-level unit of a dotted name: ``unlearn_interp.rmu.train`` -> ``rmu``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Package modules ``module`` imports at run time (a package's ``__init__`` counts as itself)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for s in ast.walk(tree) if isinstance(s, ast.If) and _is_type_checking(s)
               for n in ast.walk(s)}  # fmt: skip
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("unlearn_interp")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("unlearn_interp"):
                continue
            if base != "unlearn_interp":  # the root package: always loaded, imports nothing
                found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return {name for name in found if name in known and name != module}


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    return {m: _imports(p, m, set(sources)) for m, p in sources.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    assert _cycle(_graph()) is None, f"import circle: {' -> '.join(_cycle(_graph()))}"


def test_every_unit_has_a_rank():
    units = {_unit(m) for m in _sources()}
    assert units <= set(RANKS), (
        f"add these to RANKS (tests/test_architecture.py): {units - set(RANKS)}"
    )


def test_imports_only_go_down():
    upward = []
    for module, targets in _graph().items():
        src = _unit(module)
        for target in targets:
            dst = _unit(target)
            if src == dst:
                continue
            if RANKS[dst] >= RANKS[src] or (src == "plotting" and dst not in PLOTTING_MAY_IMPORT):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run upwards or sideways:\n" + "\n".join(sorted(upward))


def test_subpackage_files_do_not_import_their_own_init():
    inward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if (_sources()[module].name != "__init__.py" and module.startswith(target + "."))
    ]
    assert not inward, "import siblings directly, not the package:\n" + "\n".join(inward)


def _code_lines(path: Path) -> list[str]:
    """Source lines with string literals (docstrings, messages) blanked out, so only code is
    searched for TransformerLens names."""
    text = path.read_text()
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for n in range(node.lineno - 1, node.end_lineno):
                lines[n] = ""
    return lines


def test_transformer_lens_only_behind_the_seam():
    found = []
    for module, path in _sources().items():
        if _unit(module) in SEAM:
            continue
        for number, line in enumerate(_code_lines(path), start=1):
            code = line.split("#", 1)[0]
            if any(re.search(pattern, code) for pattern in TL_NAMES):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not found, "TransformerLens names outside the backend seam:\n" + "\n".join(found)


def test_the_seam_check_finds_what_it_looks_for(tmp_path):
    path = tmp_path / "x.py"
    path.write_text('"""stop_at_layer in a docstring is fine."""\nh = model(x, stop_at_layer=3)\n')
    code = [line for line in _code_lines(path) if line]
    assert any(re.search(p, code[0]) for p in TL_NAMES) and len(code) == 1


class SizeSmell(UserWarning):
    """A module or function long enough to be worth a look."""


def test_sizes_worth_a_look_are_reported_not_failed():
    for module, path in _sources().items():
        lines = len(path.read_text().splitlines())
        if lines > MODULE_LINES_WORTH_A_LOOK:
            warnings.warn(
                SizeSmell(f"{module} has {lines} lines: does it hold two ideas?"), stacklevel=1
            )
    for name, lines in _function_lengths().items():
        if lines > FUNCTION_LINES_WORTH_A_LOOK:
            warnings.warn(SizeSmell(f"{name} has {lines} lines: worth a look"), stacklevel=1)


def _function_lengths() -> dict[str, int]:
    lengths = {}
    for module, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lengths[f"{module}:{node.lineno}:{node.name}"] = node.end_lineno - first + 1
    return lengths
