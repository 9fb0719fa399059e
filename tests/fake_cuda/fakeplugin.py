"""pytest plugin (-p fakeplugin): installs fake_cuda_impl as kernelgpt._cuda before any test imports
the cuda backend. Only for the subprocess run by test_cuda_cpu_side.py."""
import sys

import kernelgpt

import fake_cuda_impl

sys.modules["kernelgpt._cuda"] = fake_cuda_impl
kernelgpt._cuda = fake_cuda_impl
