"""The public API is typed: a user's script type-checks under `mypy --strict` with real types
(tests/typing/user_ok.py: assert_type fails on Any), a script with deliberate errors is refused on
exactly the marked lines (tests/typing/user_error.py), and the stubs of the compiled modules
(_native.pyi, _cuda.pyi) declare every binding. The mypy tests skip when mypy is not installed."""
from __future__ import annotations

import ast
import os
import re
import site
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

import kernelgpt

HERE = Path(__file__).resolve().parent
CASES = HERE / "typing"
PKG = Path(kernelgpt.__file__).resolve().parent
SRC = HERE.parent / "csrc"


def _run_mypy(files: List[Path], tmp_path: Path) -> Tuple[int, str]:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    env = dict(os.environ)
    # the kernelgpt these tests import: an installed one is found by mypy itself (py.typed);
    # a source tree (PYTHONPATH=python) is named through MYPYPATH, which may not hold
    # site-packages
    parent = str(PKG.parent)
    site_dirs = set(site.getsitepackages()) | {site.getusersitepackages()}
    env.pop("MYPYPATH", None)
    if parent not in site_dirs and not parent.endswith(("site-packages", "dist-packages")):
        env["MYPYPATH"] = parent
    # errors inside kernelgpt itself are not the user's: silent, as for any installed package
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
           "--no-error-summary", "--show-error-codes", "--cache-dir", str(tmp_path / "cache"),
           "--config-file", os.devnull, *map(str, files)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                       cwd=str(tmp_path))
    return r.returncode, r.stdout + r.stderr


def _errors(out: str, path: Path) -> Dict[int, Set[str]]:
    """{line: {error codes}} that mypy reported in ``path``."""
    found: Dict[int, Set[str]] = {}
    for m in re.finditer(r"^(.*?):(\d+): error: .*\[([a-z-]+)\]$", out, re.M):
        if Path(m.group(1)).resolve() == path.resolve():
            found.setdefault(int(m.group(2)), set()).add(m.group(3))
    return found


@pytest.fixture(scope="module")
def mypy_result(tmp_path_factory: pytest.TempPathFactory) -> Tuple[int, str]:
    # one mypy run for both scripts (about 2 s with a cold cache)
    return _run_mypy([CASES / "user_ok.py", CASES / "user_error.py"],
                     tmp_path_factory.mktemp("mypy"))


def test_user_script_type_checks_strict(mypy_result: Tuple[int, str]) -> None:
    _, out = mypy_result
    assert _errors(out, CASES / "user_ok.py") == {}, out
    assert not re.search(r"^(?!.*user_error\.py).*: error:", out, re.M), out  # nothing else


def test_user_script_errors_are_reported(mypy_result: Tuple[int, str]) -> None:
    rc, out = mypy_result
    src = (CASES / "user_error.py").read_text(encoding="utf-8").splitlines()
    expected = {i: {m.group(1)} for i, line in enumerate(src, 1)
                if (m := re.search(r"# E: ([a-z-]+)$", line))}
    assert len(expected) >= 4
    assert rc == 1
    # among them `tok.vocab_size + "x"`, which passed while kernelgpt's names were Any
    assert _errors(out, CASES / "user_error.py") == expected, out


def test_package_passes_its_mypy_config(tmp_path: Path) -> None:
    """`python -m mypy` with pyproject's [tool.mypy]: --strict over every module of the package,
    no error silenced (about 3 s with a warm cache)."""
    root = HERE.parent
    if not (root / "python" / "kernelgpt").is_dir() or not (root / "pyproject.toml").is_file():
        pytest.skip("no source tree next to the tests (installed package)")
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues found in" in r.stdout


# ---------------------------------------------------------------------------------- the stubs
def _stub_names(stub: Path) -> Tuple[Set[str], Dict[str, Set[str]]]:
    """Module-level names a .pyi declares, and the public members of each class it declares."""
    tree = ast.parse(stub.read_text(encoding="utf-8"))
    names: Set[str] = set()
    members: Dict[str, Set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            members[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)
                                  and not n.name.startswith("_")}
    # module-private aliases of the stub itself (_F32, ...) are not bindings
    names -= {t.id for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
    return names, members


def test_stubs_ship_with_the_package() -> None:
    for name in ("_native.pyi", "_cuda.pyi", "py.typed"):
        assert (PKG / name).is_file(), name


def test_native_stub_declares_every_binding() -> None:
    try:
        from kernelgpt import _native
    except ImportError as e:
        pytest.skip(f"kernelgpt._native is not built: {e}")
    names, members = _stub_names(PKG / "_native.pyi")
    built = {n for n in dir(_native) if not n.startswith("__")}
    assert names == built, (f"missing from _native.pyi: {sorted(built - names)}; "
                            f"not in the module: {sorted(names - built)}")
    for cls, declared in members.items():
        have = {n for n in dir(getattr(_native, cls)) if not n.startswith("_")}
        assert declared == have, cls


def test_cuda_stub_declares_every_binding() -> None:
    sources = sorted(SRC.glob("bindings/cuda_*.cpp"))
    if not sources:
        pytest.skip("no csrc/ next to the tests (installed package)")
    bound = set()
    for f in sources:
        bound |= set(re.findall(r'\bm\.def\("([A-Za-z_0-9]+)"', f.read_text(encoding="utf-8")))
    names, _ = _stub_names(PKG / "_cuda.pyi")
    assert names == bound, (f"missing from _cuda.pyi: {sorted(bound - names)}; "
                            f"not bound: {sorted(names - bound)}")
