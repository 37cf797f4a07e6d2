//! The error type of elbo-models.

/// What can go wrong in elbo-models; every message says what was expected and what was
/// found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device name that is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device {found:?}: expected auto, cpu, cuda or cuda:N (N a GPU index)")]
    UnknownDevice {
        /// What was given.
        found: String,
    },
    /// CUDA was asked for and is not there.
    #[error("device {requested} was asked for, but {found}")]
    DeviceUnavailable {
        /// The device asked for, as written.
        requested: String,
        /// What libtorch reports instead.
        found: String,
    },
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// The result type of elbo-models.
pub type Result<T, E = Error> = std::result::Result<T, E>;
