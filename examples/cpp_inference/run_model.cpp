// Loads a TorchScript model (saved by torch.jit.save from a model with rnnkernels modules)
// and runs it on an input [T, B, I] read from stdin (T*B*I numbers, time-major), printing
// the first output's shape and then its values, one per line.
//
//   run_model MODEL T B I [OP_LIBRARY] < input.txt
//
// OP_LIBRARY: rnnkernels' op library (python -c "import rnnkernels; print(rnnkernels.op_library_path())"),
// loaded before the model, for a model that calls our ops (torch.ops.rnnkernels.*: a
// scripted model, a trace of the layer-normalised LSTM or of zoneout); a model holding
// torch's RNN ops needs none.

#include <dlfcn.h>
#include <torch/script.h>

#include <cstdlib>
#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::cerr << "usage: run_model MODEL T B I [OP_LIBRARY] < input.txt\n";
    return 2;
  }
  // The op library registers its ops with the dispatcher when loaded (static initializers).
  if (argc == 6 && dlopen(argv[5], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::cerr << "run_model: cannot load the op library " << argv[5] << ": " << dlerror() << "\n";
    return 2;
  }
  const int64_t steps = std::atoll(argv[2]), batch = std::atoll(argv[3]),
                input_size = std::atoll(argv[4]);
  std::vector<float> values(static_cast<size_t>(steps * batch * input_size));
  for (auto& v : values) {
    if (!(std::cin >> v)) {
      std::cerr << "run_model: expected " << values.size() << " numbers on stdin\n";
      return 2;
    }
  }
  torch::jit::script::Module model = torch::jit::load(argv[1]);
  model.eval();
  const torch::NoGradGuard no_grad;
  const at::Tensor x = torch::from_blob(values.data(), {steps, batch, input_size}).clone();
  const c10::IValue result = model.forward({x});
  // A layer returns (output, h_n) or (output, (h_n, c_n)); a plain module a tensor.
  const at::Tensor output =
      result.isTuple() ? result.toTupleRef().elements()[0].toTensor() : result.toTensor();
  std::cout << output.sizes() << "\n";
  const at::Tensor flat = output.contiguous().to(at::kFloat).view(-1);
  std::cout.precision(9);
  for (int64_t i = 0; i < flat.numel(); ++i) std::cout << flat[i].item<float>() << "\n";
  return 0;
}
