// The CUDA caching allocator's peak statistics, for the benches' device memory (what
// PyTorch's torch.cuda.max_memory_allocated / max_memory_reserved report). Compiled only
// against a CUDA libtorch with CUDA's headers (build.rs: cfg elbo_cuda_memory).

#include <c10/cuda/CUDACachingAllocator.h>

#include <cstdint>
#include <exception>

#include "elbo_ops.h"

extern "C" {

// The peak bytes allocated to tensors and reserved from the device on `device` since
// the start or the last reset (all pools).
char* elbo_cuda_memory_peaks(int device, int64_t* allocated, int64_t* reserved) {
  try {
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
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return nullptr;
  } catch (const std::exception& e) {
    return elbo::message(e.what());
  }
}

}  // extern "C"
