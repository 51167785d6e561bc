#pragma once
// CI-only stand-in for the header a CUDA build of torch generates (a CPU wheel ships c10/cuda/*.h without it); see tests/test_cuda_compile.py.
#define C10_CUDA_BUILD_SHARED_LIBS
