// Device discovery for kernelgpt._cuda. Linked against the static CUDA runtime, so the module
// imports on a machine without a GPU and reports 0 devices there.
#include <cuda_runtime.h>

#include "cuda/kernels.h"

namespace kgpt { namespace cuda {
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}
}}  // namespace kgpt::cuda
