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

/// Facts libtorch reports about itself and the machine at run time, and which optional
/// parts this build of elbo has: what a report from a machine we do not have must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The loaded libtorch's version (`2.13.0`), or why it is unknown.
    pub torch_version: String,
    /// Whether a CUDA device can be used now.
    pub cuda_available: bool,
    /// How many CUDA devices libtorch sees.
    pub cuda_devices: i64,
    /// The CUDA runtime and cuDNN versions libtorch was built with (a CUDA libtorch;
    /// cuDNN when it is available).
    pub cuda_versions: Option<(i64, Option<i64>)>,
    /// Whether cuDNN can be used.
    pub cudnn_available: bool,
    /// Intra-op threads libtorch uses on the CPU.
    pub threads: i32,
    /// Whether libtorch was built with MKL.
    pub mkl: bool,
    /// Whether libtorch was built with OpenMP.
    pub openmp: bool,
    /// Whether this elbo has data-parallel training on Gloo (Gloo's headers at build).
    pub gloo: bool,
    /// Whether this elbo has the NCCL process group (a CUDA libtorch with NCCL's
    /// headers); without it, GPUs reduce through Gloo.
    pub nccl: bool,
    /// The NCCL version libtorch uses, when this elbo has NCCL.
    pub nccl_version: Option<String>,
    /// Whether this elbo reads the CUDA caching allocator's peaks (for the benches).
    pub cuda_memory_peaks: bool,
    /// TF32 for float32 on CUDA: (matrix products, convolutions), when libtorch says.
    pub tf32: Option<(bool, bool)>,
    /// Whether deterministic algorithms are on, when libtorch says.
    pub deterministic: Option<bool>,
}

impl RuntimeInfo {
    /// Asks the loaded libtorch.
    pub fn current() -> RuntimeInfo {
        let cuda_available = tch::Cuda::is_available();
        let cudnn_available = tch::Cuda::cudnn_is_available();
        // Asked only of a CUDA libtorch, and guarded: a CPU libtorch throws instead.
        let cuda_versions = tch::utils::has_cuda()
            .then(|| {
                std::panic::catch_unwind(|| {
                    let runtime = tch::utils::version_cudart();
                    let cudnn = cudnn_available.then(tch::utils::version_cudnn);
                    (runtime, cudnn)
                })
                .ok()
            })
            .flatten();
        RuntimeInfo {
            torch_version: crate::sys::ffi::torch_version()
                .unwrap_or_else(|e| format!("unknown ({e})")),
            cuda_available,
            cuda_devices: tch::Cuda::device_count(),
            cuda_versions,
            cudnn_available,
            threads: tch::get_num_threads(),
            mkl: tch::utils::has_mkl(),
            openmp: tch::utils::has_openmp(),
            gloo: crate::sys::c10d::AVAILABLE,
            nccl: crate::sys::c10d::NCCL,
            nccl_version: crate::sys::c10d::nccl_version(),
            cuda_memory_peaks: cfg!(elbo_cuda_memory),
            tf32: crate::sys::ffi::cuda_tf32().ok(),
            deterministic: crate::sys::ffi::deterministic().ok(),
        }
    }
}

impl fmt::Display for RuntimeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let on_off = |b: bool| if b { "on" } else { "off" };
        writeln!(f, "torch version   {}", self.torch_version)?;
        writeln!(
            f,
            "CUDA available  {} ({} device(s))",
            yes_no(self.cuda_available),
            self.cuda_devices
        )?;
        if let Some((runtime, cudnn)) = self.cuda_versions {
            writeln!(
                f,
                "CUDA runtime    {runtime}; cuDNN {}",
                cudnn.map_or("none".to_string(), |v| v.to_string())
            )?;
        }
        writeln!(f, "cuDNN available {}", yes_no(self.cudnn_available))?;
        writeln!(f, "CPU threads     {}", self.threads)?;
        writeln!(
            f,
            "MKL / OpenMP    {} / {}",
            yes_no(self.mkl),
            yes_no(self.openmp)
        )?;
        writeln!(
            f,
            "compiled in     data-parallel on Gloo {}, NCCL {}{}, CUDA memory peaks {}",
            yes_no(self.gloo),
            yes_no(self.nccl),
            self.nccl_version
                .as_ref()
                .map_or(String::new(), |v| format!(" ({v})")),
            yes_no(self.cuda_memory_peaks)
        )?;
        match self.tf32 {
            Some((matmul, convolution)) => writeln!(
                f,
                "TF32 on CUDA    matrix products {}, convolutions {}",
                on_off(matmul),
                on_off(convolution)
            )?,
            None => writeln!(f, "TF32 on CUDA    unknown")?,
        }
        write!(
            f,
            "deterministic   {}",
            self.deterministic.map_or("unknown", |d| yes_no(d))
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
        // The version probe: what the report from a GPU machine states.
        assert!(info.torch_version.starts_with("2."), "{info:?}");
        assert!(text.starts_with(&format!("torch version   {}\n", info.torch_version)));
        assert_eq!(info.gloo, crate::sys::c10d::AVAILABLE);
        assert!(text.contains(&format!(
            "compiled in     data-parallel on Gloo {}, NCCL {}",
            if info.gloo { "yes" } else { "no" },
            if info.nccl { "yes" } else { "no" }
        )));
        assert_eq!(info.cuda_versions.is_some(), tch::utils::has_cuda());
        assert_eq!(info.nccl_version.is_some(), info.nccl);
        assert!(
            info.tf32.is_some() && info.deterministic.is_some(),
            "{info:?}"
        );
        assert!(text.contains("TF32 on CUDA    matrix products"), "{text}");
    }
}
