#!/usr/bin/env bash
# One-shot check on a lent GPU machine (no internet): build kernelgpt from this checkout with the
# tools already installed (pip --no-build-isolation), run the CUDA tests, then the CUDA benchmarks,
# and print a short table last. Everything is also written to $OUT/gpu_check.log, machine-readable
# results to $OUT/gpu_results.json (build log: $OUT/build.log, test reports: $OUT/pytest_*.xml).
# Failures are reported clearly but never stop the later stages. Budget: about 4-5 minutes; every
# stage has its own time limit (worst case ~8 min), and the log is written as it goes.
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
if [ "${SKIP_BUILD:-0}" = 1 ]; then
  echo "SKIP_BUILD=1: using the kernelgpt already importable" > "$OUT/build.log"
else
  KERNELGPT_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    $PY -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1
fi
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
# Separate processes, riskiest kernels (attention) on their own: a device fault poisons the CUDA
# context of its process only. KERNELGPT_CUDA_SYNC=1 pins an asynchronous fault on its kernel.
TEST_RC=0
run_tests() {  # name, time limit (s), then pytest args
  local name=$1 limit=$2; shift 2
  stage "tests: $name"
  KERNELGPT_CUDA_SYNC=1 timeout "$limit" $PY -m pytest -q -m cuda -rfEs --tb=short -p no:cacheprovider \
    "${PYTEST_W[@]}" --junitxml="$OUT/pytest_$name.xml" --durations=5 "$@"
  local rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 5 ] && TEST_RC=$rc   # 5 = nothing collected
  echo "[$name] pytest rc=$rc"
}
run_tests ops 90 tests/test_cuda_ops.py -k "not attention"
run_tests attention 60 tests/test_cuda_ops.py -k "attention"
run_tests model 100 tests/test_cuda_model.py
run_tests other_cuda_params 45 tests/ --ignore=tests/test_cuda_ops.py --ignore=tests/test_cuda_model.py
stage "tests: CPU side of the CUDA backend"
timeout 30 $PY -m pytest -q -rfEs --tb=short -p no:cacheprovider "${PYTEST_W[@]}" \
  --junitxml="$OUT/pytest_cpu_side.xml" tests/test_cuda_cpu_side.py
CPU_RC=$?
if [ $TEST_RC -ne 0 ] || [ $CPU_RC -ne 0 ]; then
  echo "TESTS FAILED: cuda rc=$TEST_RC cpu-side rc=$CPU_RC (continuing to the benchmarks)"
else
  echo "tests passed"
fi

stage "benchmarks (bench_cuda.py)"
# one process per config: a device fault in one cannot take the others down
BENCH_RC=0
for cfg in S M GPT-2; do
  case $cfg in S) limit=90 ;; M) limit=75 ;; *) limit=120 ;; esac
  timeout "$limit" $PY benchmarks/bench_cuda.py --steps "${BENCH_STEPS:-8}" --configs "$cfg" \
    --json "$OUT/bench_$cfg.json"
  rc=$?
  [ $rc -ne 0 ] && { BENCH_RC=$rc; echo "BENCHMARK $cfg FAILED rc=$rc"; }
done

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
    for name in ("pytest_ops", "pytest_attention", "pytest_model", "pytest_other_cuda_params",
                 "pytest_cpu_side"):
        path = os.path.join(out, name + ".xml")
        if not os.path.exists(path):
            res[name] = "no report"
            continue
        r = ET.parse(path).getroot()
        s = r if r.tag == "testsuite" else r.find("testsuite")
        res[name] = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        res[name]["failed"] = [c.get("classname", "") + "::" + c.get("name", "") for c in s.iter("testcase")
                               if c.find("failure") is not None or c.find("error") is not None]
except Exception as e:
    res["pytest_parse_error"] = str(e)
res["bench"] = {"train_step": [], "attention": [], "raw": {}}
for cfg in ("S", "M", "GPT-2"):
    try:
        b = json.load(open(os.path.join(out, f"bench_{cfg}.json")))
        res["bench"]["info"] = b["info"]
        for k in ("train_step", "attention"):
            res["bench"][k] += b[k]
        res["bench"]["raw"].update(b["raw"])
    except Exception as e:
        res["bench"].setdefault("errors", {})[cfg] = str(e)
json.dump(res, open(os.path.join(out, "gpu_results.json"), "w"), indent=1, default=str)
dev = res.get("bench", {}).get("info", {}).get("device", "?")
print(f"GPU_RESULTS line: {res['date'][:16]} | {dev} | {res['commit'][:10] if res['commit'] else '?'} | "
      f"build rc {rc['BUILD_RC']} | test rc {rc['TEST_RC']} / cpu-side rc {rc['CPU_RC']} | bench rc {rc['BENCH_RC']}")
for name, pc in res.items():
    if name.startswith("pytest_") and isinstance(pc, dict):
        print(f"  {name}: {pc['tests']} run, {pc['failures']} failed, {pc['errors']} errors, "
              f"{pc['skipped']} skipped")
        for f in pc.get("failed", []):
            print("    FAILED", f)
    elif name.startswith("pytest_"):
        print(f"  {name}: {pc}")
ran = sum(pc["tests"] - pc["skipped"] for n, pc in res.items()
          if n.startswith("pytest_") and n != "pytest_cpu_side" and isinstance(pc, dict))
if ran == 0:
    print("  WARNING: no CUDA test actually ran (all skipped): see the import check above")
b = res.get("bench", {})
for r in b.get("train_step", []):
    print(f"  step {r['config']}: ours {r.get('ours_ms', float('nan')):.1f} ms, torch "
          f"{r.get('torch_ms', float('nan')):.1f} ms, speedup {r.get('speedup_vs_torch', float('nan')):.2f}x, "
          f"ours {r.get('ours_tflops', float('nan')):.1f} TFLOP/s")
for r in b.get("attention", []):
    print(f"  attn {r['config']}: ours {r.get('ours_ms', float('nan')):.2f} ms, sdpa "
          f"{r.get('torch_ms', float('nan')):.2f} ms, ours/sdpa {r.get('ratio_ours_over_torch', float('nan')):.2f}")
PYEOF
echo "total $(( $(date +%s) - T0 ))s; log: $OUT/gpu_check.log"
