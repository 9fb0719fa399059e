#!/usr/bin/env bash
# Developer loop without pip: configure + build the native modules into build/dev-<py> and copy
# them next to the Python sources, so `PYTHONPATH=python python -m pytest tests` uses them.
# Usage: scripts/dev_build.sh [extra cmake -D args]   (KERNELGPT_CUDA=OFF by default here)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/dev
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSKBUILD_PROJECT_NAME=kernelgpt \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v python3)" \
  -DKERNELGPT_CUDA="${KERNELGPT_CUDA:-OFF}" "$@" >/dev/null
cmake --build "$BUILD" -j "${JOBS:-2}"
for so in "$BUILD"/_native*.so "$BUILD"/_cuda*.so; do
  [ -e "$so" ] && cp -f "$so" python/kernelgpt/
done
echo "dev build ok: $(ls python/kernelgpt/*.so | xargs -n1 basename | tr '\n' ' ')"
