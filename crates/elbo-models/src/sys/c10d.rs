//! torch's distributed engine, c10d, as the libtorch elbo links ships it: a `TCPStore`
//! rendezvous and a Gloo process group for CPU tensors, or an NCCL one for CUDA tensors
//! in a CUDA build (`csrc/distributed.cpp`), with the three collectives data-parallel
//! training needs: all-reduce (sum), broadcast and barrier.
//!
//! Every call passes tch's tensor handles (`at::Tensor*`) to C functions that read them
//! during the call only; c10d's C++ exceptions come back as messages naming the
//! operation and the rank. Built without Gloo's headers (see build.rs), [`AVAILABLE`] is
//! false and [`ProcessGroup::connect`] says so.
#![allow(unsafe_code)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

/// The collective this process is waiting in, and since when (one at a time: a process
/// group's calls come from the training thread).
static WAITING: Mutex<Option<(&'static str, Instant)>> = Mutex::new(None);

/// The collective this process is inside (`all-reduce`, `broadcast`, `barrier`), and
/// when it began; `None` outside one. A signal handler's thread reads it to tell a step
/// that will end from a wait for processes that will not come.
pub fn waiting_in() -> Option<(&'static str, Instant)> {
    *WAITING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks this process as inside the collective `what` until dropped.
#[cfg_attr(not(elbo_gloo), allow(dead_code))]
struct Waiting;

#[cfg_attr(not(elbo_gloo), allow(dead_code))]
impl Waiting {
    fn begin(what: &'static str) -> Waiting {
        *WAITING.lock().unwrap_or_else(|p| p.into_inner()) = Some((what, Instant::now()));
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        *WAITING.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Whether this build has the Gloo process group (Gloo's headers were found).
pub const AVAILABLE: bool = cfg!(elbo_gloo);

/// Whether this build has the NCCL process group (a CUDA libtorch with NCCL's headers).
pub const NCCL: bool = cfg!(elbo_nccl);

/// The engine of a process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors, over TCP.
    Gloo,
    /// NCCL: tensors on this process's GPU.
    Nccl {
        /// The GPU's index.
        device: usize,
    },
}

impl Backend {
    /// The device the group's tensors live on.
    pub fn device(self) -> Device {
        match self {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl { device } => Device::Cuda(device),
        }
    }
}

/// Why data-parallel training is unavailable when [`AVAILABLE`] is false.
pub const UNAVAILABLE: &str = "this elbo was built without Gloo's headers, so without \
     data-parallel training: run `cargo xtask setup` (or set ELBO_GLOO_INCLUDE to the \
     folder holding gloo/) and build again";

/// Where and how the processes meet.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    /// The store's host (`MASTER_ADDR`).
    pub host: String,
    /// The store's port (`MASTER_PORT`).
    pub port: u16,
    /// This process's rank, in `0..world`.
    pub rank: usize,
    /// The number of processes.
    pub world: usize,
    /// This process hosts the store (rank 0, unless a launcher's agent hosts it).
    pub host_store: bool,
    /// The prefix of every key this group puts in the store.
    pub prefix: String,
    /// How long the rendezvous and each operation may take before failing.
    pub timeout: Duration,
    /// Gloo's worker threads per process.
    pub gloo_threads: usize,
    /// The network interfaces Gloo uses (empty: the host name's).
    pub gloo_interfaces: Vec<String>,
    /// Gloo or NCCL.
    pub backend: Backend,
}

#[cfg(elbo_gloo)]
mod raw {
    use std::os::raw::{c_char, c_int};
    use torch_sys::C_tensor;

    /// The C side's `elbo_pg`.
    #[repr(C)]
    pub struct Pg {
        _private: [u8; 0],
    }

    unsafe extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn elbo_pg_new(
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            host_store: c_int,
            prefix: *const c_char,
            timeout_ms: i64,
            gloo_threads: c_int,
            gloo_interfaces: *const c_char,
            nccl: c_int,
            device: c_int,
            out: *mut *mut Pg,
        ) -> *mut c_char;
        pub fn elbo_pg_free(pg: *mut Pg);
        pub fn elbo_pg_allreduce_sum(
            pg: *mut Pg,
            tensors: *const *mut C_tensor,
            n: i64,
            timeout_ms: i64,
        ) -> *mut c_char;
        pub fn elbo_pg_broadcast(
            pg: *mut Pg,
            tensors: *const *mut C_tensor,
            n: i64,
            root: c_int,
            timeout_ms: i64,
        ) -> *mut c_char;
        pub fn elbo_pg_barrier(pg: *mut Pg, timeout_ms: i64) -> *mut c_char;
        pub fn elbo_pg_store_barrier(pg: *mut Pg, timeout_ms: i64) -> *mut c_char;
        #[cfg(elbo_nccl)]
        pub fn elbo_nccl_version() -> *mut c_char;
    }
}

/// The NCCL version the loaded libtorch uses (`None`: this build has no NCCL).
pub fn nccl_version() -> Option<String> {
    #[cfg(elbo_nccl)]
    {
        // SAFETY: no arguments; the message it returns is freed by `check`.
        super::ffi::sys::check(unsafe { raw::elbo_nccl_version() }).err()
    }
    #[cfg(not(elbo_nccl))]
    None
}

/// A c10d process group of this process and its peers.
pub struct ProcessGroup {
    #[cfg(elbo_gloo)]
    raw: std::ptr::NonNull<raw::Pg>,
    rank: usize,
    world: usize,
    timeout: Duration,
    backend: Backend,
}

// SAFETY: c10d's process groups are used from any thread (PyTorch calls them from
// Python threads and autograd hooks); the handle is only freed on drop.
unsafe impl Send for ProcessGroup {}
// SAFETY: as above; every operation goes through the group's own locking.
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {} of {})", self.rank, self.world)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl ProcessGroup {
    /// Meets the other processes as `rendezvous` says and builds the Gloo group: returns
    /// when all `world` processes have joined, or fails after the timeout.
    pub fn connect(rendezvous: &Rendezvous) -> Result<ProcessGroup, String> {
        let r = rendezvous;
        if r.world == 0 || r.rank >= r.world {
            return Err(format!("rank {} is not in a world of {}", r.rank, r.world));
        }
        #[cfg(elbo_gloo)]
        {
            let text =
                |s: &str| std::ffi::CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
            let (host, prefix) = (text(&r.host)?, text(&r.prefix)?);
            let interfaces = text(&r.gloo_interfaces.join(","))?;
            let mut out: *mut raw::Pg = std::ptr::null_mut();
            // SAFETY: three NUL-terminated strings borrowed for the call and integers; on
            // success the C side stores a new group in `out`, which we then own.
            super::ffi::sys::check(unsafe {
                raw::elbo_pg_new(
                    host.as_ptr(),
                    i32::from(r.port),
                    r.rank as i32,
                    r.world as i32,
                    i32::from(r.host_store),
                    prefix.as_ptr(),
                    millis(r.timeout),
                    r.gloo_threads.max(1) as i32,
                    interfaces.as_ptr(),
                    i32::from(matches!(r.backend, Backend::Nccl { .. })),
                    match r.backend {
                        Backend::Nccl { device } => device as i32,
                        Backend::Gloo => -1,
                    },
                    &mut out,
                )
            })?;
            let raw = std::ptr::NonNull::new(out).ok_or("c10d returned no process group")?;
            Ok(ProcessGroup {
                raw,
                rank: r.rank,
                world: r.world,
                timeout: r.timeout,
                backend: r.backend,
            })
        }
        #[cfg(not(elbo_gloo))]
        Err(
            "this elbo was built without Gloo's headers, so without data-parallel training: \
             run `cargo xtask setup` (or set ELBO_GLOO_INCLUDE to the folder holding gloo/) \
             and build again"
                .to_string(),
        )
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The timeout of every operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Gloo or NCCL.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Replaces each tensor by its sum over the processes, in place. Each must be
    /// contiguous and on the group's device ([`Backend::device`]), of the same shape and
    /// kind in every process.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<(), String> {
        self.all_reduce_sum_within(tensors, self.timeout)
    }

    /// [`ProcessGroup::all_reduce_sum`] that may wait up to `timeout`.
    pub fn all_reduce_sum_within(
        &self,
        tensors: &[Tensor],
        timeout: Duration,
    ) -> Result<(), String> {
        check_tensors("all-reduce", tensors, self.backend)?;
        #[cfg(elbo_gloo)]
        {
            let handles = handles(tensors);
            let _waiting = Waiting::begin("all-reduce");
            // SAFETY: live tensor handles borrowed for the call; the group is ours.
            super::ffi::sys::check(unsafe {
                raw::elbo_pg_allreduce_sum(
                    self.raw.as_ptr(),
                    handles.as_ptr(),
                    handles.len() as i64,
                    millis(timeout),
                )
            })
        }
        #[cfg(not(elbo_gloo))]
        {
            let _ = timeout;
            Ok(())
        }
    }

    /// Overwrites each tensor with rank `root`'s (same shapes and kinds everywhere).
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), String> {
        check_tensors("broadcast", tensors, self.backend)?;
        #[cfg(elbo_gloo)]
        {
            let handles = handles(tensors);
            let _waiting = Waiting::begin("broadcast");
            // SAFETY: live tensor handles borrowed for the call; the group is ours.
            super::ffi::sys::check(unsafe {
                raw::elbo_pg_broadcast(
                    self.raw.as_ptr(),
                    handles.as_ptr(),
                    handles.len() as i64,
                    root as i32,
                    millis(self.timeout),
                )
            })
        }
        #[cfg(not(elbo_gloo))]
        {
            let _ = root;
            Ok(())
        }
    }

    /// Returns when every process has reached it, or fails after `timeout`.
    pub fn barrier(&self, timeout: Duration) -> Result<(), String> {
        #[cfg(elbo_gloo)]
        {
            let _waiting = Waiting::begin("barrier");
            // SAFETY: the group is ours; an integer in.
            super::ffi::sys::check(unsafe {
                raw::elbo_pg_barrier(self.raw.as_ptr(), millis(timeout))
            })
        }
        #[cfg(not(elbo_gloo))]
        {
            let _ = timeout;
            Ok(())
        }
    }
}

impl ProcessGroup {
    /// Returns when every process has reached it, or fails after `timeout`: through the
    /// rendezvous store, so that NCCL's own timeout of collectives does not cut a wait
    /// longer than a step's.
    pub fn store_barrier(&self, timeout: Duration) -> Result<(), String> {
        #[cfg(elbo_gloo)]
        {
            let _waiting = Waiting::begin("barrier");
            // SAFETY: the group is ours; an integer in.
            super::ffi::sys::check(unsafe {
                raw::elbo_pg_store_barrier(self.raw.as_ptr(), millis(timeout))
            })
        }
        #[cfg(not(elbo_gloo))]
        {
            let _ = timeout;
            Ok(())
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(elbo_gloo)]
        // SAFETY: the handle came from elbo_pg_new and is freed once, here.
        unsafe {
            raw::elbo_pg_free(self.raw.as_ptr())
        }
    }
}

#[cfg(elbo_gloo)]
fn handles(tensors: &[Tensor]) -> Vec<*mut torch_sys::C_tensor> {
    tensors.iter().map(|t| t.as_ptr() as *mut _).collect()
}

fn check_tensors(op: &str, tensors: &[Tensor], backend: Backend) -> Result<(), String> {
    for t in tensors {
        if t.device() != backend.device() {
            return Err(format!(
                "{op} of a tensor on {:?} in a process group of {backend:?}, whose tensors \
                 are on {:?}",
                t.device(),
                backend.device()
            ));
        }
        if !t.is_contiguous() {
            return Err(format!(
                "{op} of a non-contiguous tensor of shape {:?}",
                t.size()
            ));
        }
    }
    Ok(())
}
