# The CUDA part of rnnkernels._C for the CMake build (the counterpart of setup.py's
# CUDAExtension branch).
#
# Interface. include() it at directory scope (not inside a function), after
# find_package(Torch) and after the extension target exists:
#   in   RNNKERNELS_WITH_CUDA   option; this file does nothing when it is OFF
#        RNNKERNELS_TARGET      the extension target, e.g. _C
#        RNNKERNELS_CSRC        <repo>/csrc
#        TORCH_CUDA_ARCH_LIST   cache variable or environment variable, setup.py's syntax:
#                               "8.0;9.0", "9.0+PTX", "9.0a" (default: setup.py's,
#                               8.0;9.0+PTX: sm_90 PTX for GPUs newer than the list)
#        Python_EXECUTABLE      the interpreter whose torch is built against (for the CUDA
#                               version check)
#   out  RNNKERNELS_TARGET gets csrc/cuda/*.cu and csrc/cuda/*.cpp, the compile definition
#        RNNKERNELS_WITH_CUDA (build_info.cpp reads it), the CUDA_ARCHITECTURES property,
#        the nvcc options setup.py uses, and CUDA::cudart.
#        RNNKERNELS_CUDA_ARCHITECTURES  the architectures, in CMake's syntax ("80-real;90")
#
# It stops with a clear message when torch was built without CUDA or is older than 2.8
# (the host code needs at::mm_out with an out dtype, as setup.py's CUDA_MIN_TORCH says), or
# when nvcc's CUDA major version differs from torch's. A CUDA build of torch enables the
# CUDA language in find_package(Torch) (its Caffe2/public/cuda.cmake) and sets
# CMAKE_CUDA_ARCHITECTURES OFF; the architectures are therefore set on the target, which
# that does not override.

if(NOT RNNKERNELS_WITH_CUDA)
  return()
endif()

foreach(_var RNNKERNELS_TARGET RNNKERNELS_CSRC)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "rnnkernels_cuda.cmake: set ${_var} before include()")
  endif()
endforeach()

# ---------------------------------------------------------------- torch must have CUDA

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import torch; print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _rk_torch_cuda
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _rk_torch_cuda_result)
if(NOT _rk_torch_cuda_result EQUAL 0)
  message(FATAL_ERROR "rnnkernels: `${Python_EXECUTABLE} -c 'import torch'` failed")
endif()
if(_rk_torch_cuda STREQUAL "")
  message(FATAL_ERROR
    "rnnkernels: RNNKERNELS_WITH_CUDA=ON but this torch has no CUDA (torch.version.cuda is "
    "None). Install a CUDA build of torch, or configure with -DRNNKERNELS_WITH_CUDA=OFF.")
endif()
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import torch; print(torch.__version__)"
  OUTPUT_VARIABLE _rk_torch_version
  OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REGEX MATCH "^[0-9]+\\.[0-9]+" _rk_torch_release "${_rk_torch_version}")
if(_rk_torch_release VERSION_LESS 2.8)
  message(FATAL_ERROR
    "rnnkernels: the CUDA kernels need torch >= 2.8 (16-bit products written in float32: "
    "at::mm_out with an out dtype), but this is torch ${_rk_torch_version}. Upgrade torch, or "
    "configure with -DRNNKERNELS_WITH_CUDA=OFF.")
endif()

if(NOT CMAKE_CUDA_COMPILER_LOADED)
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    message(FATAL_ERROR
      "rnnkernels: RNNKERNELS_WITH_CUDA=ON but no CUDA compiler was found (set CUDACXX or "
      "CMAKE_CUDA_COMPILER to nvcc), or configure with -DRNNKERNELS_WITH_CUDA=OFF.")
  endif()
  enable_language(CUDA)
endif()

string(REGEX MATCH "^[0-9]+" _rk_torch_cuda_major "${_rk_torch_cuda}")
string(REGEX MATCH "^[0-9]+" _rk_nvcc_major "${CMAKE_CUDA_COMPILER_VERSION}")
if(NOT _rk_torch_cuda_major STREQUAL _rk_nvcc_major)
  message(FATAL_ERROR
    "rnnkernels: nvcc ${CMAKE_CUDA_COMPILER} is CUDA ${CMAKE_CUDA_COMPILER_VERSION} but torch "
    "was built with CUDA ${_rk_torch_cuda}; the major versions must match. Point "
    "CMAKE_CUDA_COMPILER at a CUDA ${_rk_torch_cuda_major}.x nvcc, or configure with "
    "-DRNNKERNELS_WITH_CUDA=OFF.")
endif()
find_package(CUDAToolkit REQUIRED)

# ---------------------------------------------------------------- architectures

# TORCH_CUDA_ARCH_LIST "8.0;9.0+PTX;9.0a" -> CUDA_ARCHITECTURES "80-real;90;90a-real"
# ("+PTX" keeps the PTX too, as setup.py's -gencode code=compute_XY does).
if(DEFINED TORCH_CUDA_ARCH_LIST AND NOT "${TORCH_CUDA_ARCH_LIST}" STREQUAL "")
  set(_rk_arch_list "${TORCH_CUDA_ARCH_LIST}")
elseif(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
  set(_rk_arch_list "$ENV{TORCH_CUDA_ARCH_LIST}")
else()
  set(_rk_arch_list "${RNNKERNELS_DEFAULT_CUDA_ARCH_LIST}")  # setup.py's, via cmake-config
endif()
string(REPLACE " " ";" _rk_arch_list "${_rk_arch_list}")
set(RNNKERNELS_CUDA_ARCHITECTURES)
foreach(_arch IN LISTS _rk_arch_list)
  if(_arch STREQUAL "")
    continue()
  endif()
  if(NOT _arch MATCHES "^([0-9]+)\\.([0-9]+)(a?)(\\+PTX)?$")
    message(FATAL_ERROR "rnnkernels: cannot read '${_arch}' in TORCH_CUDA_ARCH_LIST "
                        "(expected entries like 8.0, 9.0+PTX or 9.0a)")
  endif()
  set(_number "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
  if(CMAKE_MATCH_4)
    list(APPEND RNNKERNELS_CUDA_ARCHITECTURES "${_number}")
  else()
    list(APPEND RNNKERNELS_CUDA_ARCHITECTURES "${_number}-real")
  endif()
endforeach()
message(STATUS "rnnkernels: CUDA ${CMAKE_CUDA_COMPILER_VERSION} for torch CUDA ${_rk_torch_cuda}; "
               "architectures ${RNNKERNELS_CUDA_ARCHITECTURES}")

# ---------------------------------------------------------------- sources and flags

# setup.py's CUDA sources (RNNKERNELS_CUDA_SOURCES from `setup.py cmake-config`).
target_sources(${RNNKERNELS_TARGET} PRIVATE ${RNNKERNELS_CUDA_SOURCES})
target_compile_definitions(${RNNKERNELS_TARGET} PRIVATE RNNKERNELS_WITH_CUDA)
set_target_properties(${RNNKERNELS_TARGET} PROPERTIES
  CUDA_ARCHITECTURES "${RNNKERNELS_CUDA_ARCHITECTURES}"
  CUDA_EXTENSIONS OFF)
# C++20, as setup.py compiles the CUDA sources, where this CMake knows nvcc's C++20 flag;
# else C++17, which the kernels need at least (CMake 3.25 does not know C++20 for CUDA 13,
# and would otherwise apply CXX_STANDARD 20 to the .cu files and stop).
if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
  set_target_properties(${RNNKERNELS_TARGET} PROPERTIES CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON)
else()
  message(STATUS "rnnkernels: this CMake does not know C++20 for nvcc; CUDA sources use C++17")
  set_target_properties(${RNNKERNELS_TARGET} PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON)
endif()
# setup.py's NVCC_FLAGS (-O3 comes with the Release build type).
target_compile_options(${RNNKERNELS_TARGET} PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
target_link_libraries(${RNNKERNELS_TARGET} PRIVATE CUDA::cudart)
