"""The house's layering (docs/design.md): data flows one way, and each layer imports only those below it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tavcli"
# What each layer may import from tavcli; the top-level package (its version), `errors` and `settings` are for all.
ALLOWED = {
    "engine": {"engine"},
    "method": {"engine", "method"},
    "app": {"engine", "method", "app"},
    "faces": {"engine", "method", "app", "faces"},
}
COMMON = {"", "errors", "settings"}  # dependency-free: errors, the settings mechanism


def _tavcli_imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, first subpackage) of every import of tavcli in a module, relative imports resolved."""
    package = ["tavcli", *path.relative_to(root).parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names = ([".".join(base + [node.module])] if node.module
                     else [".".join(base + [a.name]) for a in node.names])  # from . import x, y
        else:
            continue
        for name in names:
            if name == "tavcli" or name.startswith("tavcli."):
                found.append((node.lineno, (name.split(".") + [""])[1]))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    offending = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, target in _tavcli_imports(path):
            if target not in ALLOWED[layer] | COMMON:
                offending.append(f"{path.relative_to(PACKAGE)}:{line} imports tavcli.{target}")
    assert not offending, "\n".join(offending)


def test_the_errors_module_depends_on_nothing():
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__"}, imported


def test_the_layering_check_sees_a_violation(tmp_path):
    """The check above can fail: a method module importing the store, absolutely or relatively, is seen."""
    fake = tmp_path / "tavcli"
    (fake / "method").mkdir(parents=True)
    (fake / "method" / "bad.py").write_text("from tavcli.app.store import Store\nfrom ..app import jobs\n"
                                            "from . import video\nfrom .. import errors\n")
    assert [t for _, t in _tavcli_imports(fake / "method" / "bad.py", fake)] == ["app", "app", "method", "errors"]


# Copied verbatim into `tav export --format diffusers` folders, which must load without tav installed.
SELF_CONTAINED = ("attention.py", "ddim.py", "tune_a_video_pipeline.py", "tune_a_video_unet.py")


@pytest.mark.parametrize("module", SELF_CONTAINED)
def test_exported_modules_import_nothing_of_tav_but_each_other(module):
    path = PACKAGE / "method" / module
    tree = ast.parse(path.read_text())
    absolute = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                and not getattr(n, "level", 0) and any(a.startswith("tavcli") for a in
                                                        ([x.name for x in n.names] if isinstance(n, ast.Import)
                                                         else [n.module or ""]))]
    relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert not absolute, f"{module} imports tavcli at lines {absolute}"
    assert relative <= {m.removesuffix(".py") for m in SELF_CONTAINED}, relative
