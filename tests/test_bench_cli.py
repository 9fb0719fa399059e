"""`kernelgpt bench --quick`: one table, a JSON report with every workload and its same-run
ratios, a PNG chart when matplotlib is installed, and the machine's dispatch and threads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_kernelgpt

pytest.importorskip("kernelgpt._native", reason="the native module is not built")

from kernelgpt import bench  # noqa: E402


def kgpt(*args, cwd):
    return run_kernelgpt(*args, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    # no peers: PyTorch's import alone takes seconds; one repeat keeps the test short
    r = kgpt("bench", "--quick", "--no-peers", "--rounds", "1", "--threads", "2",
             "--out", d / "out", cwd=d)
    assert r.returncode == 0, r.stderr
    return d, r


def test_quick_json_has_every_workload_and_ratios(quick_run):
    d, _ = quick_run
    rep = json.loads((d / "out" / "bench.json").read_text())
    assert rep["mode"] == "quick"
    names = [w["name"] for w in rep["workloads"]]
    assert names == ["tokenizer_train", "tokenizer_encode", "train_step_xs", "sample_xs"]
    by = {w["name"]: w for w in rep["workloads"]}
    for n in names:
        assert by[n]["errors"] == {}, by[n]["errors"]
        ours = by[n]["results"]["kernelgpt"]
        assert ours["median_s"] > 0 and len(ours["times_s"]) == 1
    # the baseline of each workload ran in the same run, and its ratio is the medians' quotient
    for n, base in (("tokenizer_train", "reference"), ("tokenizer_encode", "reference"),
                    ("train_step_xs", "numpy"), ("sample_xs", "numpy")):
        w = by[n]
        want = w["results"][base]["median_s"] / w["results"]["kernelgpt"]["median_s"]
        assert w["ratios"][base] == pytest.approx(want)
    # the C++ tokenizer trainer is far ahead of the pure-Python reference even on a busy machine
    assert by["tokenizer_train"]["ratios"]["reference"] > 5
    # peers were not asked for: listed as skipped, never run
    assert set(rep["skipped"]) == {"torch", "rustbpe", "tokenizers", "tiktoken"}


def test_quick_header_names_cpu_dispatch_and_threads(quick_run):
    d, r = quick_run
    rep = json.loads((d / "out" / "bench.json").read_text())
    m = rep["machine"]
    assert m["threads"] == 2
    from kernelgpt import _native
    assert m["isa"]["gemm_kernel"] == _native.gemm_kernel_name()
    assert m["isa"]["ops_isa"] in ("avx512", "avx2", "portable")
    assert "2 thread(s) per engine" in r.stdout
    assert f"GEMM kernel {m['isa']['gemm_kernel']}" in r.stdout
    # one table: a row per engine of each workload
    assert "NumPy backend" in r.stdout and "pure-Python reference" in r.stdout
    assert "skipped torch: peers not asked for" in r.stdout


def test_quick_png_written(quick_run):
    pytest.importorskip("matplotlib")
    d, r = quick_run
    png = d / "out" / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((d / "out" / "bench.json").read_text())["png"] == str(png)


def test_png_skipped_without_matplotlib(tmp_path, monkeypatch):
    """Without matplotlib the report says so and no PNG is written."""
    import builtins
    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    rep = {"workloads": [], "mode": "quick", "machine": {"cpu": "x", "threads": 1}}
    assert bench.write_png(rep, tmp_path / "x.png") is False
    assert not (tmp_path / "x.png").exists()


def test_output_paths():
    assert bench.output_paths(None) == (Path("bench.json"), Path("bench.png"))
    assert bench.output_paths("r/a.json") == (Path("r/a.json"), Path("r/a.png"))
    assert bench.output_paths("r") == (Path("r/bench.json"), Path("r/bench.png"))


def test_missing_peer_is_reported_not_run(monkeypatch):
    monkeypatch.setitem(bench.PEERS, "torch", ("kernelgpt_no_such_module", "pip install x"))
    assert bench.peer_missing("torch") == "not installed (pip install x)"
    assert bench.peer_missing("numpy") is None


def test_bad_options_exit_2(tmp_path):
    r = kgpt("bench", "--rounds", "0", cwd=tmp_path)
    assert r.returncode == 2 and "must be >= 1" in r.stderr
    with pytest.raises(ValueError, match="mode"):
        bench.run("huge")
