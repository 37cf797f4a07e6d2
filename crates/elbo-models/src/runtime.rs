//! What the loaded libtorch can do, for `elbo info` and `cargo xtask doctor`.

use std::fmt;

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
