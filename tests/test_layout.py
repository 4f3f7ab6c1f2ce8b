"""The house layout (README "Layout"): packages on floors, imports that only run downward, no loose top-level modules.

Every `import`/`from ... import` of `mvrag_jax.*` or `data_pipelines` in the sources is found by parsing them (imports
inside functions count too: a lazy import is still an arrow), and each must point to the importer's own package or
to a package on a lower floor.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Lowest floor first. A package imports only itself and packages on floors below its own.
FLOORS = (
    ("errors",),
    ("sharding", "inputs", "cluster"),
    ("models",),
    ("convert", "diffusion"),
    ("retrieval",),
    ("pipeline",),
    ("recon",),
    ("data_pipelines",),
    ("train", "eval", "verify"),
    ("bench", "demo"),
    ("cli",),
    ("__main__",),
)
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}
TOP_LEVEL_MODULES = {"__init__.py", "__main__.py", "errors.py", "sharding.py"}


def _unit(module: str) -> str | None:
    """The package (or top-level module) a dotted module name belongs to; None outside the project."""
    parts = module.split(".")
    if parts[0] == "data_pipelines":
        return "data_pipelines"
    if parts[0] != "mvrag_jax" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in the file, `from mvrag_jax import x` as mvrag_jax.x."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "mvrag_jax":
                found += [(node.lineno, f"mvrag_jax.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _source_units() -> dict[pathlib.Path, str]:
    files = {}
    for path in sorted((REPO / "mvrag_jax").rglob("*.py")):
        rel = path.relative_to(REPO / "mvrag_jax")
        files[path] = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    for path in sorted((REPO / "data_pipelines").rglob("*.py")):
        files[path] = "data_pipelines"
    return files


def test_every_package_has_a_floor():
    packages = {p.name for p in (REPO / "mvrag_jax").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages, "no packages found under mvrag_jax/"
    missing = packages - set(FLOOR)
    assert not missing, f"packages without a floor in tests/test_layout.py FLOORS: {sorted(missing)}"


def test_no_loose_top_level_modules():
    loose = {p.name for p in (REPO / "mvrag_jax").glob("*.py")} - TOP_LEVEL_MODULES
    assert not loose, f"top-level modules outside a package: {sorted(loose)}; move them where they belong"


def test_imports_run_downward():
    files = _source_units()
    assert len(files) > 50, f"only {len(files)} source files found; is REPO right? ({REPO})"
    checked, upward = 0, []
    for path, unit in files.items():
        if unit == "__init__":  # the package root's compatibility aliases name modules as strings, never imports
            continue
        for line, module in _imports(path):
            target = _unit(module)
            if target is None or target == unit:
                continue
            checked += 1
            if target not in FLOOR:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {module} (no such package)")
            elif FLOOR[target] >= FLOOR[unit]:
                upward.append(f"{path.relative_to(REPO)}:{line} ({unit}, floor {FLOOR[unit]}) imports {module} "
                              f"({target}, floor {FLOOR[target]})")
    assert checked > 100, f"only {checked} cross-package imports checked"
    assert not upward, "imports that do not run downward:\n" + "\n".join(upward)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a models module importing the pipeline is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mvrag_jax.pipeline import Pipeline\n")
    (line, module), = _imports(bad)
    assert (line, _unit(module)) == (2, "pipeline") and FLOOR["pipeline"] > FLOOR["models"]


@pytest.mark.parametrize("name, module", [("images", "mvrag_jax.inputs.images"), ("text", "mvrag_jax.inputs.text"),
                                          ("fusion", "mvrag_jax.pipeline.fusion")])
def test_moved_modules_keep_their_old_import_names(name, module):
    import importlib
    package = importlib.import_module("mvrag_jax")
    assert getattr(package, name).__name__ == module
    with pytest.raises(AttributeError, match="no attribute 'bench_train'"):
        getattr(package, "bench_train")
