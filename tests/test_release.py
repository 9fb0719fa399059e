"""Release packaging: `kernelgpt --version`, the license, and the wheel build configuration
(CPU-only wheels whatever the build machine has; CUDA architectures beyond Hopper)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    path = ROOT / "pyproject.toml"
    if not path.exists():
        pytest.skip("no pyproject.toml next to the tests")
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    with open(path, "rb") as f:
        return tomllib.load(f)


def _source(rel: str) -> Path:
    path = ROOT / rel
    if not path.exists():
        pytest.skip(f"no {rel} next to the tests (installed package)")
    return path


def test_version_flag_prints_package_version():
    import kernelgpt
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"kernelgpt {kernelgpt.__version__}"


def test_version_has_one_source():
    import kernelgpt
    cfg = _pyproject()
    assert "version" not in cfg["project"] and "version" in cfg["project"]["dynamic"]
    src = cfg["tool"]["scikit-build"]["metadata"]["version"]["input"]
    text = _source(src).read_text(encoding="utf-8")
    assert re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1) == kernelgpt.__version__


def test_license_file_is_mit():
    cfg = _pyproject()
    text = _source("LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "the kernelgpt authors" in text
    assert cfg["project"]["license"] == {"text": "MIT"}
    assert "License :: OSI Approved :: MIT License" in cfg["project"]["classifiers"]


def test_wheels_are_cpu_only_manylinux_2_28():
    cibw = _pyproject()["tool"]["cibuildwheel"]
    # what a wheel contains must not depend on whether nvcc is on the build machine
    assert cibw["environment"]["KERNELGPT_CUDA"] == "OFF"
    assert cibw["build"] == [f"cp3{m}-*" for m in range(9, 14)]
    linux = cibw["linux"]
    assert linux["archs"] == ["x86_64", "aarch64"]
    assert linux["manylinux-x86_64-image"] == linux["manylinux-aarch64-image"] == "manylinux_2_28"
    assert "test_package.py" in cibw["test-command"]


def test_cuda_architectures_default_covers_a100_l4_h100():
    cmake = ROOT / "CMakeLists.txt"
    if not cmake.exists():
        pytest.skip("no CMakeLists.txt next to the tests")
    m = re.search(r'set\(CMAKE_CUDA_ARCHITECTURES "([^"]+)"\)', cmake.read_text(encoding="utf-8"))
    archs = m.group(1).split(";")
    for sm in ("80", "89", "90"):
        assert f"{sm}-real" in archs or sm in archs, sm
    assert any(a.endswith("-virtual") or "-" not in a for a in archs)   # PTX for newer chips
