// The CUDA caching allocator's peak statistics, for the benches' device memory (what
// PyTorch's torch.cuda.max_memory_allocated / max_memory_reserved report). Compiled only
// against a CUDA libtorch with CUDA's headers (build.rs: cfg elbo_cuda_memory).

#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>

#include <cstdint>
#include <exception>

#include "elbo_ops.h"

namespace {

// CUDA as PyTorch's torch.cuda calls start it (torch.cuda._lazy_init): the caching
// allocator has no device until then, and its statistics would throw "Invalid device
// argument: did you call init?" when they are the first CUDA call of the process (a test
// binary's tests run in any order). Idempotent.
void init_cuda() { at::globalContext().lazyInitDevice(c10::DeviceType::CUDA); }

}  // namespace

extern "C" {

// The peak bytes allocated to tensors and reserved from the device on `device` since
// the start or the last reset (all pools).
char* elbo_cuda_memory_peaks(int device, int64_t* allocated, int64_t* reserved) {
  try {
    init_cuda();
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(
        static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].peak;
    *reserved = stats.reserved_bytes[all].peak;
    return nullptr;
  } catch (const std::exception& e) {
    return elbo::message(e.what());
  }
}

// Starts the peaks afresh from the current use on `device`.
char* elbo_cuda_memory_reset_peaks(int device) {
  try {
    init_cuda();
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return nullptr;
  } catch (const std::exception& e) {
    return elbo::message(e.what());
  }
}

}  // extern "C"
