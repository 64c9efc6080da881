"""STYLE.md: `maskfocus/` imports no Ray and no torch.distributed; Ray lives in `actors/`, `learner/` and the driver
(maskfocus/driver.py, its event loop, and maskfocus/driver_run.py, its entry point)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maskfocus"
DRIVER = {"driver.py", "driver_run.py"}


def distributed_imports(path: Path) -> list[str]:
    """The modules of Ray or torch.distributed that `path` imports, anywhere in it (a function's import too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found += [name for name in names if name.split(".")[0] == "ray" or name.startswith("torch.distributed")]
    return found


def test_only_the_driver_imports_ray_or_torch_distributed_in_the_package():
    offenders = {
        str(path.relative_to(PACKAGE)): imports
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in DRIVER and (imports := distributed_imports(path))
    }
    assert offenders == {}
    assert all(distributed_imports(PACKAGE / name) for name in DRIVER)  # the check sees their imports


def test_the_walk_finds_an_import_inside_a_function_and_a_from_import(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("import torch\n\ndef f():\n    import ray.util\n    from torch.distributed import fsdp\n")
    assert distributed_imports(source) == ["ray.util", "torch.distributed", "torch.distributed.fsdp"]
