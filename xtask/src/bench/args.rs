//! The arguments of `cargo xtask bench`: [`BenchArgs`], the `--device` parser and the
//! `--variants` choices (with the flags each passes to PyTorch's `steptime.py`).

/// The arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Also compare with PyTorch 2.13.0 eager (installed into a venv under the cache
    /// if missing, about 5 GB); without it the comparison is skipped.
    #[arg(long)]
    pub with_pytorch: bool,
    /// Only the comparison, not the criterion benches.
    #[arg(long)]
    pub compare_only: bool,
    /// Thread counts to compare at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<u32>,
    /// Alternations of the two sides per case.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Untimed steps before timing, in each process.
    #[arg(long, default_value_t = 10)]
    pub warmup: u32,
    /// Timed repetitions per process.
    #[arg(long, default_value_t = 5)]
    pub reps: u32,
    /// Steps per timed repetition.
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// PyTorch's variants besides eager (each with fused Adam), comma-separated; the
    /// channels-last ones run for the convolutional models only. `none` for eager only.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "compiled,channels-last,compiled+channels-last"
    )]
    pub variants: Vec<VariantChoice>,
    /// Where both sides run: `cpu`, `cuda` or `cuda:N`. On CUDA the cases gain
    /// ddpm-cifar10 (Ho et al.'s 35.7 M UNet, batch 128) and only the first of
    /// `--threads` is used (host threads).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: String,
    /// `bf16`: both sides' forward passes under bfloat16 autocast (CUDA only).
    #[arg(long, default_value = "none", value_parser = ["none", "bf16"])]
    pub autocast: String,
    /// Let float32 matmuls and convolutions on CUDA use TF32, on both sides (without it
    /// both sides keep float32: the setting is always stated).
    #[arg(long)]
    pub tf32: bool,
    /// Only the cases of these models (`ddpm-mnist`) or model:task (`ddpm-mnist:sample`),
    /// comma-separated; every case of the device by default.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Arguments passed on to `cargo bench -p elbo-benches` (after `--`).
    #[arg(last = true)]
    pub criterion: Vec<String>,
}

/// `--device`: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<String, String> {
    match text.strip_prefix("cuda:") {
        _ if text == "cpu" || text == "cuda" => Ok(text.to_string()),
        Some(index) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(text.to_string())
        }
        _ => Err(format!("expected cpu, cuda or cuda:N, found {text:?}")),
    }
}

/// A `--variants` entry: one of PyTorch's fast paths, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VariantChoice {
    /// torch.compile (inductor) of the step's model.
    Compiled,
    /// Weights and inputs in channels-last (NHWC) memory format.
    ChannelsLast,
    /// Both.
    #[value(name = "compiled+channels-last")]
    CompiledChannelsLast,
    /// No variant: eager only.
    None,
}

impl VariantChoice {
    /// The name steptime.py prints as "variant" (and the report's column).
    pub fn name(self) -> &'static str {
        match self {
            VariantChoice::Compiled => "compiled",
            VariantChoice::ChannelsLast => "channels-last",
            VariantChoice::CompiledChannelsLast => "compiled+channels-last",
            VariantChoice::None => "eager",
        }
    }

    /// steptime.py's flags for it.
    pub(super) fn flags(self) -> &'static [&'static str] {
        match self {
            VariantChoice::Compiled => &["--compile"],
            VariantChoice::ChannelsLast => &["--channels-last"],
            VariantChoice::CompiledChannelsLast => &["--compile", "--channels-last"],
            VariantChoice::None => &[],
        }
    }

    /// Whether it only means something for models with convolutions.
    pub(super) fn needs_convolutions(self) -> bool {
        matches!(
            self,
            VariantChoice::ChannelsLast | VariantChoice::CompiledChannelsLast
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_cpu_cuda_or_cuda_with_an_index() {
        for ok in ["cpu", "cuda", "cuda:0", "cuda:12"] {
            assert_eq!(parse_device(ok).unwrap(), ok);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda0", ""] {
            let err = parse_device(bad).unwrap_err();
            assert!(err.contains("expected cpu, cuda or cuda:N"), "{err}");
        }
    }
}
