"""The house rules of docs/architecture.md, read from the source itself (AST of every module):
layers only import downwards (model -> probe -> analysis -> rendering -> CLI), no import cycles
between modules or between subpackages, a top level of subpackages only, files under ~500 lines,
every subpackage says what it is, and every path the architecture page names exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import featvis

ROOT = Path(featvis.__file__).resolve().parent
REPO = ROOT.parent
#: The layers, lowest first: a module may import only from its own layer or below.
LAYERS = {
    "_util": 0, "data": 0,
    "models": 1,
    "core": 2,
    "reference": 3, "receptive_field": 3, "inspect": 3, "saliency": 3, "optvis": 3, "examples": 3, "circuits": 3, "explain": 3,
    "dictionary": 3,
    "gallery": 4, "serve": 4,
    "cli": 5, "__main__": 5,
}
MAX_LINES = 520


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: Path) -> set[str]:
    """The featvis modules ``path`` imports, at module level or inside functions (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "featvis"}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "featvis":
                continue
            submodules = [f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")]
            found |= set(submodules) if len(submodules) == len(node.names) else {target, *submodules}
    return found


GRAPH = {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Edges (importer, imported) where the imported module sits in a higher layer."""
    return [(m, d) for m, deps in graph.items() for d in deps
            if layer(m) is not None and layer(d) is not None and layer(d) > layer(m)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), or a node importing itself."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_subpackage_has_a_layer_and_imports_only_downwards():
    top = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.name != "__pycache__" and p.name != "__init__.py"}
    assert top <= set(LAYERS), f"unplaced top-level entries: {sorted(top - set(LAYERS))}; add them to LAYERS and docs/architecture.md"
    assert not upward_imports(GRAPH), f"imports running up the layers: {upward_imports(GRAPH)}"


def test_no_import_cycles_between_modules_or_subpackages():
    assert not cycles(GRAPH), cycles(GRAPH)
    packages: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        if layer(m) is not None:
            packages.setdefault(m.split(".")[1], set()).update(d.split(".")[1] for d in deps if layer(d) is not None and d.split(".")[1] != m.split(".")[1])
    assert not cycles(packages), cycles(packages)


def test_the_checks_above_catch_what_they_forbid():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert "featvis.examples" in GRAPH["featvis.gallery.job"]  # the gallery uses the examples engine (downwards)
    # the import this regrouping removed (examples -> gallery.job) would be caught again, and so would its cycle
    before = {**GRAPH, "featvis.examples.engine": GRAPH["featvis.examples.engine"] | {"featvis.gallery.job"}}
    assert ("featvis.examples.engine", "featvis.gallery.job") in upward_imports(before)
    assert any("featvis.examples.engine" in c and "featvis.gallery.job" in c for c in cycles(before))


def test_top_level_holds_subpackages_only_and_files_stay_small():
    files = sorted(p.name for p in ROOT.glob("*.py"))
    assert files == ["__init__.py", "__main__.py"], files
    long = {str(p.relative_to(REPO)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concept: {long}"


def test_every_subpackage_opens_by_saying_what_it_is():
    for init in sorted(ROOT.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 12, f"{init.relative_to(REPO)} needs a docstring saying what it holds"


def test_architecture_page_names_only_paths_that_exist():
    text = (REPO / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`(featvis/[\w/.]+|tests/[\w/.]+|benchmarks/[\w/.]+)`", text))
    assert len(paths) >= 20
    missing = sorted(p for p in paths if not (REPO / p.rstrip("/")).exists())
    assert not missing, missing
    for package in {p.split(".")[1] for p in GRAPH if layer(p) is not None} - {"__main__"}:
        assert f"featvis/{package}/" in text, f"docs/architecture.md does not place featvis/{package}/"


def test_modules_users_import_keep_working():
    """featvis.reference, .saliency, .receptive_field, .optvis, .examples, .circuits, .explain, checked on
    numbers known without featvis: a 3x3 stride-2 conv then a 3x3 conv see 3 + 2 * 2 = 7 px with stride 2."""
    import featvis.circuits
    import featvis.examples
    import featvis.explain
    import featvis.optvis
    import featvis.receptive_field
    import featvis.reference
    import featvis.saliency

    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    model = featvis.as_model(net, input_size=33)
    field = featvis.receptive_field(model, "2")
    assert (field.size, field.stride) == ((7, 7), (2, 2))
    x, w = torch.randn(1, 3, 9, 9, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    assert torch.allclose(featvis.reference.conv2d(x, w), torch.nn.functional.conv2d(x, w))
    assert callable(featvis.saliency) and featvis.saliency.REGIONAL and callable(featvis.explain)
    for module, name in ((featvis.optvis, "render"), (featvis.examples, "dataset_examples"), (featvis.examples, "activation_atlas"),
                         (featvis.circuits, "expanded_weights"), (featvis.saliency, "cascading_randomization")):
        assert callable(getattr(module, name)), f"{module.__name__}.{name}"


@pytest.mark.parametrize("name", sorted(featvis.__all__))
def test_every_public_name_resolves_to_the_module_featvis_init_names(name):
    value = getattr(featvis, name)
    home = f"featvis.{featvis._EXPORTS[name]}"
    defined_in = value.__name__ if isinstance(value, type(featvis)) else value.__module__
    assert defined_in.startswith(home), f"featvis.{name} comes from {defined_in}, not from {home} as _EXPORTS says"
