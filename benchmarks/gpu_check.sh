#!/usr/bin/env bash
# One-shot check on a lent GPU machine (no internet): build kernelgpt from this checkout with the
# tools already installed (pip --no-build-isolation), run the CUDA tests, then the CUDA benchmarks,
# and print a short table last. Everything is also written to $OUT/gpu_check.log, machine-readable
# results to $OUT/gpu_results.json (build log: $OUT/build.log, test reports: $OUT/pytest_*.xml).
# Failures are reported clearly but never stop the later stages. Budget: well under 5 minutes.
# Usage: bash benchmarks/gpu_check.sh            (env: OUT, PYTHON=python3, BENCH_STEPS=8)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
PY="${PYTHON:-python3}"
export PATH="$PATH:/usr/local/cuda/bin"   # nvcc, if the image keeps it there
T0=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $* ==="; }

stage "machine"
date -u
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || cat COMMIT 2>/dev/null || echo unknown)"
nvidia-smi -L || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
$PY --version; nvcc --version | tail -1
$PY -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
$PY -c "import cupy.cublas; print('cupy.cublas.gemm ok')" || echo "cupy.cublas missing: GEMMs use the cupy.matmul fallback"

stage "build (pip install --no-build-isolation, KERNELGPT_CUDA=ON, sm_90)"
KERNELGPT_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  $PY -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1
BUILD_RC=$?
if [ $BUILD_RC -ne 0 ]; then
  echo "BUILD FAILED (rc=$BUILD_RC); full log follows"
  cat "$OUT/build.log"
else
  grep -E "warning|kgpt:" "$OUT/build.log" | head -40
  tail -3 "$OUT/build.log"
  echo "build ok"
fi

stage "import check"
$PY - <<'PYEOF'
import kernelgpt, kernelgpt._cuda as c
from kernelgpt.backends import cuda_backend, available_backends
print("kernelgpt from", kernelgpt.__file__)
print("_cuda.device_count() =", c.device_count())
r = cuda_backend.unavailable_reason()
print("cuda backend:", "AVAILABLE" if r is None else "UNAVAILABLE: " + r)
print("available backends:", available_backends())
PYEOF
IMPORT_RC=$?

# cupy may warn at import (e.g. about CUDA_PATH); pytest's filterwarnings=error must not turn that
# into a silently skipped cuda backend.
PYTEST_W=(-W "ignore:::cupy" -W "ignore:::cupy_backends" -W "ignore:::torch")
stage "tests: every CUDA-marked test (pytest -m cuda tests/)"
timeout 200 $PY -m pytest -q -m cuda -rfEs --tb=short -p no:cacheprovider "${PYTEST_W[@]}" \
  --junitxml="$OUT/pytest_cuda.xml" --durations=8 \
  tests/
TEST_RC=$?
stage "tests: CPU side of the CUDA backend"
timeout 60 $PY -m pytest -q -rfEs --tb=short -p no:cacheprovider "${PYTEST_W[@]}" \
  --junitxml="$OUT/pytest_cpu_side.xml" tests/test_cuda_cpu_side.py
CPU_RC=$?
if [ $TEST_RC -ne 0 ] || [ $CPU_RC -ne 0 ]; then
  echo "TESTS FAILED: cuda rc=$TEST_RC cpu-side rc=$CPU_RC (continuing to the benchmarks)"
else
  echo "tests passed"
fi

stage "benchmarks (bench_cuda.py)"
timeout 330 $PY benchmarks/bench_cuda.py --steps "${BENCH_STEPS:-8}" --json "$OUT/bench.json"
BENCH_RC=$?
[ $BENCH_RC -ne 0 ] && echo "BENCHMARK SCRIPT FAILED rc=$BENCH_RC"

stage "summary"
BUILD_RC=$BUILD_RC IMPORT_RC=$IMPORT_RC TEST_RC=$TEST_RC CPU_RC=$CPU_RC BENCH_RC=$BENCH_RC OUT="$OUT" \
$PY - <<'PYEOF'
import json, os, subprocess, datetime
out = os.environ["OUT"]
rc = {k: int(os.environ[k]) for k in ("BUILD_RC", "IMPORT_RC", "TEST_RC", "CPU_RC", "BENCH_RC")}
res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "rc": rc}
try:
    res["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    res["commit"] = None
try:
    import xml.etree.ElementTree as ET
    for name in ("pytest_cuda", "pytest_cpu_side"):
        r = ET.parse(os.path.join(out, name + ".xml")).getroot()
        s = r if r.tag == "testsuite" else r.find("testsuite")
        res[name] = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        res[name]["failed"] = [c.get("classname", "") + "::" + c.get("name", "") for c in s.iter("testcase")
                               if c.find("failure") is not None or c.find("error") is not None]
except Exception as e:
    res["pytest_parse_error"] = str(e)
try:
    res["bench"] = json.load(open(os.path.join(out, "bench.json")))
except Exception as e:
    res["bench_error"] = str(e)
json.dump(res, open(os.path.join(out, "gpu_results.json"), "w"), indent=1, default=str)
dev = res.get("bench", {}).get("info", {}).get("device", "?")
pc = res.get("pytest_cuda", {})
print(f"GPU_RESULTS line: {res['date'][:16]} | {dev} | {res['commit'][:10] if res['commit'] else '?'} | "
      f"build rc {rc['BUILD_RC']} | cuda tests {pc.get('tests', '?')} run, "
      f"{pc.get('failures', '?')} failed, {pc.get('errors', '?')} errors, {pc.get('skipped', '?')} skipped")
for f in pc.get("failed", []):
    print("  FAILED", f)
PYEOF
echo "total $(( $(date +%s) - T0 ))s; log: $OUT/gpu_check.log"
