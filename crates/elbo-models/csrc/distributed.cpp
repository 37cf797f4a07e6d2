// Data-parallel training's collectives, on torch's own distributed engine (c10d) inside
// the libtorch elbo links: a TCPStore for the rendezvous, then a ProcessGroupGloo (CPU
// tensors) or, in a CUDA build, a ProcessGroupNCCL (CUDA tensors). Nothing here
// implements a collective or a socket: every operation is c10d's. Compiled only when
// Gloo's headers were found (build.rs defines USE_C10D_GLOO; ELBO_NCCL and
// USE_C10D_NCCL when libtorch_cuda.so and NCCL's and CUDA's headers are there too). C++
// exceptions never leave: each function returns nullptr, or a message from malloc that
// names the operation and the rank (free it with elbo_free_message).

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef ELBO_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "elbo_ops.h"

struct elbo_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int world;
  // Store barriers held so far: every rank counts them alike, so the n-th of each
  // rank meets under the same key.
  int64_t store_barriers = 0;
};

namespace {

using elbo::message;

std::string where(const elbo_pg* pg, const char* op) {
  return std::string(op) + " on rank " + std::to_string(pg->rank) + " of " +
         std::to_string(pg->world);
}

std::chrono::milliseconds millis(int64_t ms) { return std::chrono::milliseconds(ms); }

// Waits for `work`, turning a failure into an exception with c10d's message.
void finish(const c10::intrusive_ptr<c10d::Work>& work, int64_t timeout_ms) {
  work->wait(millis(timeout_ms));
}

// An exception's message; for libtorch's own errors without the C++ backtrace they
// carry (which means nothing to a user of the command line).
std::string describe(const std::exception& e) {
  if (const auto* error = dynamic_cast<const c10::Error*>(&e)) {
    return error->what_without_backtrace();
  }
  return e.what();
}

}  // namespace

extern "C" {

// Rendezvous of `world` processes on the TCPStore at host:port (this process hosts it
// when `host_store` is 1, else connects to it, retrying until the timeout), under the
// key prefix `prefix`, then a process group over it: Gloo, or NCCL when `nccl` is 1, on
// the GPU `device` (made this process's current device, bound to the group, and
// connected at once, as torch.distributed.init_process_group(device_id=...) does).
// Gloo goes over the comma-separated network interfaces `gloo_interfaces` (one device
// each, as torch.distributed does with GLOO_SOCKET_IFNAME), or, when it is empty, the
// interface of the host name. The group's operations time out after `timeout_ms`.
char* elbo_pg_new(const char* host, int port, int rank, int world, int host_store,
                  const char* prefix, int64_t timeout_ms, int gloo_threads,
                  const char* gloo_interfaces, int nccl, int device, elbo_pg** out) {
  *out = nullptr;
  std::string at = std::string(host) + ":" + std::to_string(port);
  std::string stage = "the rendezvous at " + at;
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = host_store != 0;
    options.numWorkers = world;
    options.waitWorkers = false;
    options.timeout = millis(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    c10::intrusive_ptr<c10d::Backend> backend;
    if (nccl != 0) {
      stage = "creating the NCCL process group (rendezvous at " + at + ")";
#ifdef ELBO_NCCL
      const at::Device gpu(at::kCUDA, static_cast<c10::DeviceIndex>(device));
      c10::cuda::set_device(gpu.index());
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = millis(timeout_ms);
      auto nccl_group =
          c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, nccl_options);
      nccl_group->setBoundDeviceId(gpu);
      stage = "connecting the NCCL process group on cuda:" + std::to_string(device) +
              " (rendezvous at " + at + ")";
      nccl_group->eagerConnectSingleDevice(gpu);
      backend = nccl_group;
#else
      (void)device;
      return message(stage + ": this elbo was built without NCCL (it needs the CUDA "
                     "libtorch with NCCL's headers: cargo xtask setup --cuda)");
#endif
    } else {
      stage = "creating the Gloo process group (rendezvous at " + at + ")";
      auto pg_options = c10d::ProcessGroupGloo::Options::create(millis(timeout_ms));
      const std::string interfaces(gloo_interfaces);
      if (interfaces.empty()) {
        pg_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      } else {
        std::size_t begin = 0;
        while (begin <= interfaces.size()) {
          const std::size_t end = std::min(interfaces.find(',', begin), interfaces.size());
          const std::string name = interfaces.substr(begin, end - begin);
          stage = "creating Gloo's device on the network interface " + name +
                  " (GLOO_SOCKET_IFNAME)";
          pg_options->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForInterface(name));
          begin = end + 1;
        }
        stage = "creating the Gloo process group (rendezvous at " + at + ", interfaces " +
                interfaces + ")";
      }
      pg_options->threads = gloo_threads;
      backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, pg_options);
    }
    *out = new elbo_pg{store, backend, rank, world};
    return nullptr;
  } catch (const std::exception& e) {
    return message(stage + " failed on rank " + std::to_string(rank) + " of " +
                   std::to_string(world) + ": " + describe(e));
  } catch (...) {
    return message(stage + " failed with an unknown C++ exception");
  }
}

// Shuts the group down (NCCL's communicators and watchdog; nothing for Gloo), then frees
// it. A failure to shut down cannot be reported from here and does not keep the memory.
void elbo_pg_free(elbo_pg* pg) {
  try {
    pg->backend->shutdown();
  } catch (...) {
  }
  delete pg;
}

}  // extern "C"

namespace {

// Starts `start(tensor)` for each of the n tensors, then waits for all of them; a failure
// becomes a message naming `op` and the rank.
template <typename Start>
char* each_tensor(elbo_pg* pg, const char* op, at::Tensor** tensors, int64_t n,
                  int64_t timeout_ms, Start start) {
  try {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      works.push_back(start(one));
    }
    for (auto& work : works) {
      finish(work, timeout_ms);
    }
    return nullptr;
  } catch (const std::exception& e) {
    return message(where(pg, op) + ": " + describe(e));
  } catch (...) {
    return message(where(pg, op) + ": unknown C++ exception");
  }
}

}  // namespace

extern "C" {

// Sums each of the n tensors (contiguous; on the CPU for Gloo, on the process's GPU for
// NCCL) over the processes, in place: the operations are all started, then all waited
// for.
char* elbo_pg_allreduce_sum(elbo_pg* pg, at::Tensor** tensors, int64_t n, int64_t timeout_ms) {
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::SUM;
  options.timeout = millis(timeout_ms);
  return each_tensor(pg, "all-reduce", tensors, n, timeout_ms, [&](std::vector<at::Tensor>& one) {
    return pg->backend->allreduce(one, options);
  });
}

// Overwrites each of the n tensors with the one of rank `root`.
char* elbo_pg_broadcast(elbo_pg* pg, at::Tensor** tensors, int64_t n, int root,
                        int64_t timeout_ms) {
  c10d::BroadcastOptions options;
  options.rootRank = root;
  options.timeout = millis(timeout_ms);
  return each_tensor(pg, "broadcast", tensors, n, timeout_ms, [&](std::vector<at::Tensor>& one) {
    return pg->backend->broadcast(one, options);
  });
}

// Returns when every process has called it (or fails after the timeout).
char* elbo_pg_barrier(elbo_pg* pg, int64_t timeout_ms) {
  try {
    c10d::BarrierOptions options;
    options.timeout = millis(timeout_ms);
    finish(pg->backend->barrier(options), timeout_ms);
    return nullptr;
  } catch (const std::exception& e) {
    return message(where(pg, "barrier") + ": " + describe(e));
  } catch (...) {
    return message(where(pg, "barrier") + ": unknown C++ exception");
  }
}

// Returns when every process has called it, or fails after `timeout_ms`: a barrier
// through the rendezvous store, not a collective of the process group. NCCL times every
// collective with the group's own timeout, whatever the caller waits, so a barrier that
// may have to wait longer than a step (the other ranks while rank 0 writes a checkpoint
// and evaluates) goes through the store, whose waits take their own timeout.
char* elbo_pg_store_barrier(elbo_pg* pg, int64_t timeout_ms) {
  try {
    const std::string key = "elbo/barrier/" + std::to_string(pg->store_barriers++);
    const int64_t arrived = pg->store->add(key + "/arrived", 1);
    if (arrived == pg->world) {
      pg->store->set(key + "/all", std::vector<uint8_t>{1});
    }
    pg->store->wait({key + "/all"}, millis(timeout_ms));
    return nullptr;
  } catch (const std::exception& e) {
    return message(where(pg, "waiting for the other processes") + ": " + describe(e));
  } catch (...) {
    return message(where(pg, "waiting for the other processes") + ": unknown C++ exception");
  }
}

#ifdef ELBO_NCCL
// The NCCL version the loaded libtorch uses, as c10d reports it ("2.29.7").
char* elbo_nccl_version() {
  try {
    return message(c10d::getNcclVersion());
  } catch (const std::exception& e) {
    return message(std::string("unknown: ") + describe(e));
  }
}
#endif

}  // extern "C"
