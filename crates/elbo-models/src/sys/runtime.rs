//! What the loaded libtorch can do, for `elbo info` and `cargo xtask doctor`, and the
//! process-wide allocator setting elbo's executables start with.

use std::fmt;

/// Blocks up to this size are served from the heap ([`retain_freed_memory`]): glibc's
/// largest allowed mmap threshold on 64-bit machines.
pub const HEAP_BLOCK_LIMIT: i32 = 32 << 20;

/// Makes glibc's malloc keep the memory of freed tensors for the next ones, instead of
/// handing it back to the kernel: blocks up to [`HEAP_BLOCK_LIMIT`] come from the heap
/// (by default every block over 128 KiB gets a mapping of its own, unmapped when freed),
/// and the heap's free top is never trimmed.
///
/// libtorch allocates every CPU tensor with malloc and frees it when the last handle
/// goes, so a training step that allocates the same activations each time otherwise
/// page-faults them in afresh, zero-filled by the kernel, on every step: measured on a
/// 2-core machine, 10k page faults per ladder-HVAE step (40 MB) and 37k per DDPM UNet
/// step (150 MB), 8% of the UNet step's time in the kernel. After this call a step
/// reuses the heap and page-faults almost nothing; the peak resident memory is the same
/// (the heap stays at the peak a step reaches, which is what the peak already was).
///
/// A process-wide setting, best made first thing in `main`, before threads start. The
/// `elbo` CLI and the benches make it; a program that embeds elbo's crates decides for
/// itself. `Err` on a C library other than glibc (nothing changes) or without the
/// compiled shim.
pub fn retain_freed_memory() -> Result<(), String> {
    crate::sys::ffi::retain_freed_memory(HEAP_BLOCK_LIMIT, i32::MAX)
}

/// Facts libtorch reports about itself and the machine at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Whether a CUDA device can be used now.
    pub cuda_available: bool,
    /// How many CUDA devices libtorch sees.
    pub cuda_devices: i64,
    /// Whether cuDNN can be used.
    pub cudnn_available: bool,
    /// Intra-op threads libtorch uses on the CPU.
    pub threads: i32,
    /// Whether libtorch was built with MKL.
    pub mkl: bool,
    /// Whether libtorch was built with OpenMP.
    pub openmp: bool,
}

impl RuntimeInfo {
    /// Asks the loaded libtorch.
    pub fn current() -> RuntimeInfo {
        RuntimeInfo {
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            threads: tch::get_num_threads(),
            mkl: tch::utils::has_mkl(),
            openmp: tch::utils::has_openmp(),
        }
    }
}

impl fmt::Display for RuntimeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "CUDA available  {} ({} device(s))",
            yes_no(self.cuda_available),
            self.cuda_devices
        )?;
        writeln!(f, "cuDNN available {}", yes_no(self.cudnn_available))?;
        writeln!(f, "CPU threads     {}", self.threads)?;
        write!(
            f,
            "MKL / OpenMP    {} / {}",
            yes_no(self.mkl),
            yes_no(self.openmp)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_consistent_facts() {
        let _generator = crate::testing::generator_lock();
        let info = RuntimeInfo::current();
        assert!(info.threads >= 1, "{info:?}");
        assert_eq!(info.cuda_available, info.cuda_devices > 0, "{info:?}");
        if info.cuda_available {
            assert!(tch::utils::has_cuda());
        }
        let text = info.to_string();
        assert!(text.contains("CUDA available"), "{text}");
    }
}
