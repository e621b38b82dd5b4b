"""`pip install .` carries every part of the package: each source folder is a configured package."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")

ROOT = Path(__file__).resolve().parents[1]


def configured() -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setuptools["packages"], setuptools.get("package-dir", {}), setuptools.get("package-data", {})


def source_folder(package: str, package_dir: dict[str, str]) -> Path:
    """The folder a dotted package name is built from, through the longest `package-dir` mapping."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in package_dir:
            return ROOT / package_dir[head] / Path(*parts[cut:])
    return ROOT / Path(*parts)


def test_every_source_folder_is_a_configured_package():
    """A folder with Python modules or shipped data that is not listed would be missing from a wheel (the
    connectome tokenizer once was: an editable install hid it)."""
    packages, package_dir, package_data = configured()
    folders = {source_folder(p, package_dir).resolve() for p in packages}
    assert all(f.is_dir() for f in folders), "a configured package has no source folder"
    roots = {source_folder(p, package_dir).resolve() for p in packages if "." not in p} | {
        (ROOT / d).resolve() for d in package_dir.values()
    }
    missing = []
    for root in roots:
        for folder in [root, *root.rglob("*")]:
            if not folder.is_dir() or folder.name == "__pycache__" or folder.name.startswith("."):
                continue
            shipped = any(f.suffix in (".py", ".yaml") for f in folder.iterdir())
            if shipped and folder.resolve() not in folders:
                missing.append(str(folder.relative_to(ROOT)))
    assert not missing, f"source folders missing from [tool.setuptools] packages: {missing}"


def test_the_shipped_data_files_are_declared():
    """Task specs and presets are YAML, not modules: package-data must name them."""
    packages, package_dir, package_data = configured()
    for package, patterns in package_data.items():
        folder = source_folder(package, package_dir)
        assert any(any(folder.glob(p)) for p in patterns), f"{package}: {patterns} match no file"
    assert any((source_folder("fmrilm.instructions", package_dir) / "tasks").glob("*.yaml"))
