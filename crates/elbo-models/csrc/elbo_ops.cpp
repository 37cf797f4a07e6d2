// The few libtorch operations that tch 0.26 does not expose and elbo needs, behind a C
// ABI (see src/ffi.rs). A tensor handle here is what tch passes to libtorch: an
// at::Tensor*. Every function catches C++ exceptions and returns them as a message
// (allocated with malloc; free it with elbo_free_message), or nullptr on success.

#include <unistd.h>
#include <cstdio>
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/headeronly/version.h>

#include "elbo_ops.h"

#include <cstdlib>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <cstring>
#include <exception>
#include <string>
#include <vector>

char* elbo::message(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, text.c_str(), text.size() + 1);
  }
  return out;
}

namespace {

using elbo::message;

std::vector<at::Tensor> gather(at::Tensor** handles, int64_t n) {
  std::vector<at::Tensor> tensors;
  tensors.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    tensors.push_back(*handles[i]);
  }
  return tensors;
}

}  // namespace

extern "C" {

void elbo_free_message(char* text) { std::free(text); }

// One step of Adam (decoupled = 0) or AdamW (decoupled = 1) over n parameters with
// libtorch's fused kernel (aten::_fused_adam_ / _fused_adamw_): one pass over each
// parameter's memory instead of one per elementary operation. `step` is a float tensor
// holding the step number t (from 1), which the kernel uses for the bias corrections.
// `held` (may be null) is a one-element float tensor on the parameters' device: when it
// holds 1 the kernel changes nothing (libtorch's `found_inf`), so that a step can be held
// back by a flag computed on the device without the host reading it.
char* elbo_fused_adam(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                      at::Tensor** exp_avg_sqs, int64_t n, at::Tensor* step, at::Tensor* held,
                      double lr, double beta1, double beta2, double weight_decay, double eps,
                      int decoupled) {
  try {
    std::vector<at::Tensor> p = gather(params, n);
    std::vector<at::Tensor> g = gather(grads, n);
    std::vector<at::Tensor> m = gather(exp_avgs, n);
    std::vector<at::Tensor> v = gather(exp_avg_sqs, n);
    std::vector<at::Tensor> steps(static_cast<size_t>(n), *step);
    std::vector<at::Tensor> no_max;
    std::optional<at::Tensor> found_inf;
    if (held != nullptr) {
      found_inf = *held;
    }
    at::NoGradGuard no_grad;
    if (decoupled != 0) {
      at::_fused_adamw_(p, g, m, v, no_max, steps, lr, beta1, beta2, weight_decay, eps,
                        /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/{}, found_inf);
    } else {
      at::_fused_adam_(p, g, m, v, no_max, steps, lr, beta1, beta2, weight_decay, eps,
                       /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/{}, found_inf);
    }
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in elbo_fused_adam");
  }
}

// Drops the gradients of n tensors (grad becomes undefined, as PyTorch's
// zero_grad(set_to_none=True)): the next backward pass then writes each gradient into a
// fresh buffer instead of adding it to a zeroed one.
char* elbo_clear_grads(at::Tensor** tensors, int64_t n) {
  try {
    for (int64_t i = 0; i < n; ++i) {
      tensors[i]->mutable_grad().reset();
    }
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in elbo_clear_grads");
  }
}

// Sets the gradient of `tensor` to `grad` (tch can read a gradient but not set one):
// for a parameter that had none in this process while another process's had one.
char* elbo_set_grad(at::Tensor* tensor, at::Tensor* grad) {
  try {
    tensor->mutable_grad() = *grad;
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in elbo_set_grad");
  }
}

// Whether autograd records operations now (not inside a no-grad region).
int elbo_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

// Ends the process at once with `code`: no atexit handlers, no static destructors (a
// second Ctrl-C arrives while another thread is inside libtorch, whose destructors
// would then run under its feet).
void elbo_exit_now(int code) {
  std::fflush(nullptr);
  _exit(code);
}

// glibc malloc: serve blocks up to mmap_threshold bytes from the heap (not from mmap)
// and never give the heap's free top back to the kernel below trim_threshold bytes, so
// that a freed tensor's memory is reused by the next one without page faults.
char* elbo_retain_freed_memory(int mmap_threshold, int trim_threshold) {
#if defined(__GLIBC__)
  if (mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1) {
    return message("glibc refused M_MMAP_THRESHOLD = " + std::to_string(mmap_threshold));
  }
  if (mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1) {
    return message("glibc refused M_TRIM_THRESHOLD = " + std::to_string(trim_threshold));
  }
  return nullptr;
#else
  (void)mmap_threshold;
  (void)trim_threshold;
  return message("not glibc: the allocator is left as it is");
#endif
}

// Makes CUDA autocast regions (tch::autocast) compute in bfloat16 instead of libtorch's
// default float16.
char* elbo_set_cuda_autocast_bf16() {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  }
}

// Whether float32 matrix products (cuBLAS) and convolutions (cuDNN) may use TF32 on
// CUDA: libtorch's two process-wide flags (what PyTorch's
// torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 set).
char* elbo_set_cuda_tf32(int matmul, int convolution) {
  try {
    at::globalContext().setAllowTF32CuBLAS(matmul != 0);
    at::globalContext().setAllowTF32CuDNN(convolution != 0);
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  }
}

// The two flags: bit 0 cuBLAS, bit 1 cuDNN (for the benches' reports and tests); -1
// when libtorch refuses to say (it checks that its old and new precision settings
// agree).
int elbo_cuda_tf32() {
  try {
    int bits = 0;
    if (at::globalContext().allowTF32CuBLAS()) bits |= 1;
    if (at::globalContext().allowTF32CuDNN()) bits |= 2;
    return bits;
  } catch (const std::exception&) {
    return -1;
  }
}

// The dtype CUDA autocast regions use, as libtorch names it (for tests).
char* elbo_cuda_autocast_dtype() {
  try {
    return message(c10::toString(at::autocast::get_autocast_dtype(at::kCUDA)));
  } catch (const std::exception& e) {
    return message(std::string("error: ") + e.what());
  }
}

// Deterministic algorithms everywhere, or not (torch.use_deterministic_algorithms, with
// cuDNN's deterministic choice and without its benchmark search): an operation without
// a deterministic kernel then fails, naming itself, instead of making a run that
// cannot be repeated.
char* elbo_set_deterministic(int on) {
  try {
    at::globalContext().setDeterministicAlgorithms(on != 0, /*warn_only=*/false);
    at::globalContext().setDeterministicCuDNN(on != 0);
    if (on != 0) at::globalContext().setBenchmarkCuDNN(false);
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  }
}

// Whether deterministic algorithms are on.
int elbo_deterministic() { return at::globalContext().deterministicAlgorithms() ? 1 : 0; }

// The loaded libtorch's version, as its headers name it (e.g. "2.13.0").
char* elbo_torch_version() { return message(TORCH_VERSION); }

}  // extern "C"
