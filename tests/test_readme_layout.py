"""The README's layout table matches the package tree: every module it names exists, and every module is named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_rows() -> list[tuple[str, str]]:
    """(first cell, second cell) of each row of the README's "Layout" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    return [(first.strip(), second.strip()) for first, second in rows]


def _named_files() -> set[Path]:
    """Every .py file the table names, as a path under the repository root."""
    named: set[Path] = set()
    for first, second in _layout_rows():
        paths = re.findall(r"`([^`]+)`", first)
        folder = Path(paths[0]) if paths[0].endswith("/") else Path(paths[0]).parent
        for name in paths:
            named.add(ROOT / (name if "/" in name else folder / name))
        named.update(ROOT / folder / name for name in re.findall(r"`([\w/]+\.py)`", second))
    return {path for path in named if path.suffix == ".py"}


def test_every_module_the_readme_names_exists():
    missing = sorted(str(path.relative_to(ROOT)) for path in _named_files() if not path.is_file())
    assert not missing, f"README's layout table names files that do not exist: {missing}"


def test_every_module_of_the_package_is_in_the_readme():
    modules = {path for path in (ROOT / "bgflow_se3").rglob("*.py") if path.name != "__init__.py"}
    unnamed = sorted(str(path.relative_to(ROOT)) for path in modules - _named_files())
    assert not unnamed, f"README's layout table does not name these modules: {unnamed}"
