// rnnkernels._bench_C.gemm_sequence_seconds: the benchmark's lower bound, the matrix products of
// one RNN pass issued back to back, timed in C++ on preallocated buffers.
//
// Note [gemm lower bound]
// The recurrence of an RNN cannot run faster than its matrix products. The benchmark
// (rnnkernels/bench/model.py) lists the products of a pass; this file times that list as
// plain BLAS calls with no dispatcher, no allocation and no elementwise work in between.
// torch's CPU wheels link MKL statically into libtorch_cpu and export its Fortran
// interface (sgemm_, dgemm_); they are looked up with dlsym at run time, so the extension
// builds and runs on a torch without MKL, where the same list runs through at::mm_out
// instead (which then includes the dispatcher's per-call cost; the result says which
// path ran). MKL threads: torch.set_num_threads sets MKL's global count; the loop
// also sets MKL's thread-local count to at::get_num_threads() and restores it afterwards.

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace rnnkernels::bench {
namespace {

// Fortran BLAS, LP64 (torch declares sgemm_ with int arguments in ATen's BlasKernel.cpp).
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const float*, const float*, const int*, const float*, const int*,
                          const float*, float*, const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const double*, const double*, const int*, const double*, const int*,
                          const double*, double*, const int*);
// MKL's C service functions are the mixed-case names (mkl_service.h maps the lower-case
// spellings to them); the exported lower-case symbols are the Fortran ones, taking int*.
using set_threads_local_fn = int (*)(int);
using version_string_fn = void (*)(char*, int);

struct Blas {
  sgemm_fn sgemm = nullptr;
  dgemm_fn dgemm = nullptr;
  set_threads_local_fn set_threads_local = nullptr;
  std::string version;  // MKL's version string, empty when unknown
  std::string library;  // the shared object searched first
};

const Blas& blas() {
  static const Blas found = [] {
    Blas b;
    // The library that defines at::get_num_threads is libtorch_cpu, where MKL lives.
    // It was loaded RTLD_LOCAL by torch, so RTLD_DEFAULT alone would not see it.
    void* torch_cpu = nullptr;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &info) != 0 &&
        info.dli_fname != nullptr) {
      b.library = info.dli_fname;
      torch_cpu = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);  // kept open for good
    }
    auto lookup = [&](const char* name) -> void* {
      void* symbol = torch_cpu != nullptr ? dlsym(torch_cpu, name) : nullptr;
      return symbol != nullptr ? symbol : dlsym(RTLD_DEFAULT, name);
    };
    b.sgemm = reinterpret_cast<sgemm_fn>(lookup("sgemm_"));
    b.dgemm = reinterpret_cast<dgemm_fn>(lookup("dgemm_"));
    b.set_threads_local = reinterpret_cast<set_threads_local_fn>(lookup("MKL_Set_Num_Threads_Local"));
    if (auto version = reinterpret_cast<version_string_fn>(lookup("MKL_Get_Version_String"))) {
      char buffer[256] = {0};
      version(buffer, static_cast<int>(sizeof(buffer)));
      b.version = buffer;
    }
    return b;
  }();
  return found;
}

// One product C[m, n] = op(A) @ op(B) in row-major terms: op(A) is [m, k], stored as
// A [m, k] or, when trans_a, as A [k, m]; op(B) is [k, n], stored as B [k, n] or, when
// trans_b, as B [n, k] (so x @ W^T with W [n, k] is trans_b).
struct Product {
  int m, n, k;
  bool trans_a, trans_b;
  at::Tensor a, b, c;
};

int checked_int(int64_t value, const char* what) {
  TORCH_CHECK(value > 0 && value <= std::numeric_limits<int>::max(),
              "gemm_sequence_seconds: ", what, " must be in [1, 2^31), got ", value);
  return static_cast<int>(value);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
template <typename scalar_t, typename Gemm>
void fortran_gemm(Gemm gemm, const Product& p) {
  const char trans_b = p.trans_b ? 'T' : 'N';
  const char trans_a = p.trans_a ? 'T' : 'N';
  const int ldb = p.trans_b ? p.k : p.n;
  const int lda = p.trans_a ? p.m : p.k;
  const int ldc = p.n;
  const scalar_t one = 1, zero = 0;
  gemm(&trans_b, &trans_a, &p.n, &p.m, &p.k, &one, p.b.const_data_ptr<scalar_t>(), &ldb,
       p.a.const_data_ptr<scalar_t>(), &lda, &zero, p.c.mutable_data_ptr<scalar_t>(), &ldc);
}

void torch_gemm(Product& p) {
  const at::Tensor a = p.trans_a ? p.a.t() : p.a;
  const at::Tensor b = p.trans_b ? p.b.t() : p.b;
  at::mm_out(p.c, a, b);
}

}  // namespace

// shapes: list of [m, n, k] or [m, n, k, trans_a, trans_b]; returns
// {"seconds": [one entry per repeat], "backend", "threads", "blas_version", "library"},
// plus "max_relative_error" of each distinct product against at::mm when verify is set.
pybind11::dict gemm_sequence_seconds(const std::vector<std::vector<int64_t>>& shapes,
                                     int64_t repeats, const std::string& dtype,
                                     int64_t warmup, const std::string& backend,
                                     bool verify) {
  TORCH_CHECK(repeats >= 1, "gemm_sequence_seconds: repeats must be >= 1, got ", repeats);
  TORCH_CHECK(warmup >= 0, "gemm_sequence_seconds: warmup must be >= 0, got ", warmup);
  TORCH_CHECK(dtype == "float32" || dtype == "float64",
              "gemm_sequence_seconds: dtype must be 'float32' or 'float64', got '", dtype, "'");
  TORCH_CHECK(backend == "auto" || backend == "blas" || backend == "torch",
              "gemm_sequence_seconds: backend must be 'auto', 'blas' or 'torch', got '",
              backend, "'");
  const bool is_float = dtype == "float32";
  const Blas& lib = blas();
  const bool have_blas = is_float ? lib.sgemm != nullptr : lib.dgemm != nullptr;
  TORCH_CHECK(backend != "blas" || have_blas, "gemm_sequence_seconds: backend='blas' but ",
              is_float ? "sgemm_" : "dgemm_", " was not found in ", lib.library,
              " or the global symbol scope");
  const bool use_blas = have_blas && backend != "torch";

  // One set of buffers per distinct shape: the products of the T steps of a recurrence
  // reuse theirs, as the real loop reuses W_hh and its small h.
  const auto options = at::TensorOptions().dtype(is_float ? at::kFloat : at::kDouble);
  std::map<std::vector<int64_t>, size_t> first_of_shape;
  std::vector<Product> buffers;
  std::vector<size_t> sequence;
  sequence.reserve(shapes.size());
  for (const auto& shape : shapes) {
    TORCH_CHECK(shape.size() == 3 || shape.size() == 5,
                "gemm_sequence_seconds: each shape must be [m, n, k] or "
                "[m, n, k, trans_a, trans_b], got ", shape.size(), " numbers");
    std::vector<int64_t> key = shape;
    key.resize(5, 0);
    auto found = first_of_shape.find(key);
    if (found == first_of_shape.end()) {
      Product p{checked_int(key[0], "m"), checked_int(key[1], "n"), checked_int(key[2], "k"),
                key[3] != 0, key[4] != 0, {}, {}, {}};
      // Small values keep every product far from overflow and denormals.
      p.a = (p.trans_a ? at::randn({p.k, p.m}, options) : at::randn({p.m, p.k}, options)).mul_(0.1);
      p.b = (p.trans_b ? at::randn({p.n, p.k}, options) : at::randn({p.k, p.n}, options)).mul_(0.1);
      p.c = at::empty({p.m, p.n}, options);
      found = first_of_shape.emplace(key, buffers.size()).first;
      buffers.push_back(std::move(p));
    }
    sequence.push_back(found->second);
  }

  const int threads = at::get_num_threads();
  std::vector<double> seconds;
  seconds.reserve(static_cast<size_t>(repeats));
  {
    pybind11::gil_scoped_release no_gil;
    int previous_local_threads = 0;
    if (use_blas && lib.set_threads_local != nullptr) {
      previous_local_threads = lib.set_threads_local(threads);
    }
    auto run_sequence = [&] {
      for (size_t index : sequence) {
        Product& p = buffers[index];
        if (!use_blas) {
          torch_gemm(p);
        } else if (is_float) {
          fortran_gemm<float>(lib.sgemm, p);
        } else {
          fortran_gemm<double>(lib.dgemm, p);
        }
      }
    };
    for (int64_t i = 0; i < warmup; ++i) run_sequence();
    for (int64_t i = 0; i < repeats; ++i) {
      const auto start = std::chrono::steady_clock::now();
      run_sequence();
      const auto stop = std::chrono::steady_clock::now();
      seconds.push_back(std::chrono::duration<double>(stop - start).count());
    }
    if (use_blas && lib.set_threads_local != nullptr) {
      lib.set_threads_local(previous_local_threads);
    }
  }

  pybind11::dict result;
  if (verify) {
    // The last product computed into each buffer against at::mm: checks the row-major to
    // Fortran mapping above (transposes and leading dimensions).
    double max_error = 0;
    for (Product& p : buffers) {
      const at::Tensor a = p.trans_a ? p.a.t() : p.a;
      const at::Tensor b = p.trans_b ? p.b.t() : p.b;
      const at::Tensor expected = at::mm(a, b);
      const double scale = std::max(1.0, expected.abs().max().item<double>());
      max_error = std::max(max_error, (p.c - expected).abs().max().item<double>() / scale);
    }
    result["max_relative_error"] = max_error;
  }
  result["seconds"] = seconds;
  result["backend"] = use_blas ? std::string(is_float ? "sgemm_" : "dgemm_") + " (dlsym)"
                               : std::string("at::mm_out");
  result["threads"] = threads;
  result["blas_version"] = lib.version;
  result["library"] = lib.library;
  return result;
}

}  // namespace rnnkernels::bench

// A module of its own, beside the product's _C: only the benchmark tool imports it.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkernels' benchmark helpers (rnnkernels.bench); not part of the ops.";
  m.def("gemm_sequence_seconds", &rnnkernels::bench::gemm_sequence_seconds,
        pybind11::arg("shapes"), pybind11::arg("repeats"), pybind11::arg("dtype") = "float32",
        pybind11::arg("warmup") = 1, pybind11::arg("backend") = "auto",
        pybind11::arg("verify") = false,
        "Times the products [m, n, k(, trans_a, trans_b)] issued back to back as BLAS calls "
        "(MKL's sgemm_/dgemm_ found with dlsym, else at::mm_out) on preallocated buffers, "
        "with at::get_num_threads() threads. Returns {'seconds': [per repeat], 'backend', "
        "'threads', 'blas_version', 'library'} (and 'max_relative_error' against at::mm when "
        "verify). The benchmark's lower bound.");
}
