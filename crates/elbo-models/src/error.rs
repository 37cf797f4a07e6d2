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
    /// A configuration that cannot work (an unknown name, a value out of range).
    #[error("invalid configuration: {detail}")]
    Config {
        /// What was expected and what was found.
        detail: String,
    },
    /// A checkpoint that cannot be used: unreadable, or from another model or config.
    #[error("checkpoint: {detail}")]
    Checkpoint {
        /// What was expected and what was found.
        detail: String,
    },
    /// The loss became NaN or infinite; the run stopped without taking the step.
    #[error("the loss at step {step} is {value}: training stopped before applying it{}", match last_checkpoint {
        Some(path) => format!("; the last good checkpoint is {}", path.display()),
        None => "; no checkpoint had been written yet".to_string(),
    })]
    NonFiniteLoss {
        /// The step (counted from 1) whose loss was not finite.
        step: u64,
        /// The loss.
        value: f64,
        /// The newest checkpoint, all of whose steps had finite losses.
        last_checkpoint: Option<std::path::PathBuf>,
    },
    /// The weights, Adam's moments or the EMA became NaN or infinite (a loss can stay
    /// finite while they overflow); the run stopped without writing a checkpoint of them.
    #[error("{name} is not finite after step {step}: training stopped without checkpointing it{}", match last_checkpoint {
        Some(path) => format!("; the last good checkpoint is {}", path.display()),
        None => "; no checkpoint had been written yet".to_string(),
    })]
    NonFiniteState {
        /// The step (counted from 1) after which it was found.
        step: u64,
        /// The first tensor found not finite (`model.<var>`, `adam.m.<var>`, ...).
        name: String,
        /// The newest checkpoint, whose state was checked finite when written.
        last_checkpoint: Option<std::path::PathBuf>,
    },
    #[error("data-parallel training: {detail}")]
    /// A collective, the rendezvous or the process group failed (a lost or hung process,
    /// a port in use, an unreachable store), with c10d's message.
    Distributed {
        /// c10d's message, with the operation and the rank.
        detail: String,
    },
    /// A data set could not be loaded.
    #[error("data: {detail}")]
    Data {
        /// What elbo-data reported.
        detail: String,
    },
    /// A computation of elbo-math refused its input (a statistic of too few samples, ...).
    #[error(transparent)]
    Math(#[from] elbo_math::MathError),
    /// A computation of elbo-math refused its input, with what it was for.
    #[error("{what}: {source}")]
    MathIn {
        /// What the computation was for (`diffusion coefficients`, ...).
        what: String,
        /// elbo-math's error.
        source: elbo_math::MathError,
    },
    /// A file or folder could not be read, written, created or removed.
    #[error("cannot {action} {}: {reason}", path.display())]
    File {
        /// What was being done (`read`, `write`, `create`, `remove`, ...).
        action: &'static str,
        /// The file or folder.
        path: std::path::PathBuf,
        /// The operating system's reason.
        reason: std::io::Error,
    },
    /// A chart or picture could not be drawn.
    #[error("drawing {}: {detail}", path.display())]
    Plot {
        /// The file it was for.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A file could not be read or written (where no path is known; prefer
    /// [`Error::File`]).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// A chart or picture of `path` that could not be drawn: a failed write is an
    /// [`Error::File`] naming `path` once (not the temporary file too), anything else an
    /// [`Error::Plot`].
    pub fn plot(path: impl Into<std::path::PathBuf>, e: elbo_plot::PlotError) -> Error {
        match e {
            elbo_plot::PlotError::Io { action, source, .. } => Error::File {
                action: if action.starts_with("renaming") {
                    "rename into place"
                } else {
                    "write"
                },
                path: path.into(),
                reason: source,
            },
            other => Error::Plot {
                path: path.into(),
                detail: other.to_string(),
            },
        }
    }

    /// [`Error::File`]: `action` on `path` failed with `reason`.
    pub fn file(
        action: &'static str,
        path: impl Into<std::path::PathBuf>,
        reason: std::io::Error,
    ) -> Error {
        Error::File {
            action,
            path: path.into(),
            reason,
        }
    }
}

/// The result type of elbo-models.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The first five of `names`, comma-separated, for a message about many.
pub(crate) fn first_names<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names
        .into_iter()
        .take(5)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
