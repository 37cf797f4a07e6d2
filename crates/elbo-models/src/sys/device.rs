//! `--device auto|cpu|cuda[:N]`: parsing and resolving to a `tch::Device`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A device as a user names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA device when libtorch sees one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let unknown = || Error::UnknownDevice {
            found: text.to_string(),
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:").ok_or_else(unknown)?;
                index.parse().map(DeviceSpec::Cuda).map_err(|_| unknown())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl DeviceSpec {
    /// The `tch::Device` this names, checked against what libtorch sees.
    pub fn resolve(self) -> Result<tch::Device> {
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        self.resolve_with(count)
    }

    /// [`DeviceSpec::resolve`] for a machine with `cuda_devices` CUDA devices.
    pub fn resolve_with(self, cuda_devices: usize) -> Result<tch::Device> {
        match self {
            DeviceSpec::Cpu => Ok(tch::Device::Cpu),
            DeviceSpec::Auto if cuda_devices > 0 => Ok(tch::Device::Cuda(0)),
            DeviceSpec::Auto => Ok(tch::Device::Cpu),
            DeviceSpec::Cuda(index) if index < cuda_devices => Ok(tch::Device::Cuda(index)),
            DeviceSpec::Cuda(_) => Err(Error::DeviceUnavailable {
                requested: self.to_string(),
                found: if cuda_devices == 0 {
                    "libtorch sees no CUDA device (a CPU-only libtorch, no GPU, or no driver; \
                     `cargo xtask doctor` tells which)"
                        .to_string()
                } else {
                    format!("libtorch sees {cuda_devices} CUDA device(s), numbered from 0")
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_round_trips_through_display() {
        let _generator = crate::testing::generator_lock();
        for (text, spec) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("CPU", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec, "{text}");
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn rejects_unknown_names_saying_what_is_expected() {
        let _generator = crate::testing::generator_lock();
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "mps", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(
                err.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn resolves_against_the_devices_present() {
        let _generator = crate::testing::generator_lock();
        assert_eq!(DeviceSpec::Auto.resolve_with(0).unwrap(), tch::Device::Cpu);
        assert_eq!(
            DeviceSpec::Auto.resolve_with(2).unwrap(),
            tch::Device::Cuda(0)
        );
        assert_eq!(
            DeviceSpec::Cuda(1).resolve_with(2).unwrap(),
            tch::Device::Cuda(1)
        );
        let err = DeviceSpec::Cuda(0).resolve_with(0).unwrap_err().to_string();
        assert!(
            err.contains("cuda:0") && err.contains("no CUDA device"),
            "{err}"
        );
        let err = DeviceSpec::Cuda(2).resolve_with(2).unwrap_err().to_string();
        assert!(err.contains("sees 2 CUDA device(s)"), "{err}");
    }

    #[test]
    fn cpu_always_resolves_and_runs_a_tensor_op() {
        let _generator = crate::testing::generator_lock();
        let device = DeviceSpec::Cpu.resolve().unwrap();
        let x = tch::Tensor::arange(4, (tch::Kind::Float, device));
        assert_eq!(x.sum(tch::Kind::Float).double_value(&[]), 6.0);
    }
}
