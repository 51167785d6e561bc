#pragma once
// Explicit instantiations of the launchers declared in kernels.h, used by the per-dtype
// translation units kernels_{f32,f64,f16,bf16}.cu (one nvcc job each).

#include "cuda/gru_kernels.cuh"
#include "cuda/ln_lstm_kernels.cuh"
#include "cuda/lstm_kernels.cuh"
#include "cuda/rnn_kernels.cuh"
#include "cuda/state_kernels.cuh"

// Every cell's launchers for storage type S reading GEMM results of type G.
#define RNNKERNELS_INSTANTIATE_CELLS(S, G)                                                     \
  template cudaError_t lstm_forward_step<S, G>(const LstmForwardStep<S, G>&, cudaStream_t);   \
  template cudaError_t gru_forward_step<S, G>(const GruForwardStep<S, G>&, cudaStream_t);     \
  template cudaError_t rnn_forward_step<S, G>(const RnnForwardStep<S, G>&, cudaStream_t);     \
  template cudaError_t store_hidden<S, G>(const StoreHidden<S, G>&, cudaStream_t);            \
  template cudaError_t lstm_backward_step<S, G>(const LstmBackwardStep<S, G>&, cudaStream_t); \
  template cudaError_t step_grad_h<S, G>(const StepGradH<S, G>&, cudaStream_t);               \
  template cudaError_t gru_backward_step<S, G>(const GruBackwardStep<S, G>&, cudaStream_t);   \
  template cudaError_t rnn_backward_step<S, G>(const RnnBackwardStep<S, G>&, cudaStream_t);     \
  template cudaError_t ln_lstm_forward_step<S, G>(const LnLstmForwardStep<S, G>&, cudaStream_t); \
  template cudaError_t ln_lstm_backward_step<S, G>(const LnLstmBackwardStep<S, G>&,             \
                                                   cudaStream_t);

// The forward steps of 16-bit storage type S that read x_proj in float32 (Note [cuda x_proj
// in float32] in recurrence_cuda.cpp).
#define RNNKERNELS_INSTANTIATE_FLOAT_INPUT(S, G)                                           \
  template cudaError_t lstm_forward_step<S, G, float>(const LstmForwardStep<S, G, float>&, \
                                                      cudaStream_t);                       \
  template cudaError_t gru_forward_step<S, G, float>(const GruForwardStep<S, G, float>&,   \
                                                     cudaStream_t);                        \
  template cudaError_t rnn_forward_step<S, G, float>(const RnnForwardStep<S, G, float>&,   \
                                                     cudaStream_t);

// The launchers that depend on the storage type only.
#define RNNKERNELS_INSTANTIATE_STORAGE(S) \
  template cudaError_t previous_hidden<S>(const PreviousHidden<S>&, cudaStream_t);
