"""The layering holds: import contracts (pyproject.toml, `[tool.importlinter]`) and module sizes.

Run here so that the suite's usual command checks them; `lint-imports` alone gives the same verdict.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 850
# Modules allowed over MAX_LINES, each with the reason; an entry whose module shrinks below the limit must go.
OVERSIZE: set[str] = set()


def _lint_imports() -> list[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("lint-imports")
    if found is None:
        pytest.skip("import-linter is not installed (it comes with the `test` extra)")
    return [found]


def test_import_contracts_are_kept() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's shoal, whatever is installed
    result = subprocess.run([*_lint_imports(), "--no-cache", "--no-logo"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"lint-imports: broken contracts\n{result.stdout}\n{result.stderr}"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_modules_are_small_enough_to_hold() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): _lines(p) for p in sorted((ROOT / "shoal").rglob("*.py"))}
    too_big = {p: n for p, n in sizes.items() if n > MAX_LINES and p not in OVERSIZE}
    assert not too_big, f"modules over {MAX_LINES} lines (split them by what they own): {too_big}"
    stale = {p: sizes.get(p) for p in OVERSIZE if sizes.get(p, 0) <= MAX_LINES}
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove them from OVERSIZE: {stale}"
