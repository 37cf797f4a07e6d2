//! The table of bench cases ([`CASES`]) and which of them, and which of PyTorch's
//! variants, run for a device and a `--cases` / `--variants` selection.

use anyhow::{Result, bail};

use super::args::VariantChoice;

/// One thing both sides time.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// The model as both harnesses name it.
    pub model: &'static str,
    /// Examples per step.
    pub batch: u32,
    /// What is timed (`train`: one training step).
    pub task: &'static str,
    /// The speed-up issue 8 asks of elbo.
    pub target: f64,
    /// (warm-up, repetitions, steps per repetition) for cases whose step takes seconds
    /// (the DDPM's), instead of `--warmup/--reps/--steps`.
    pub protocol: Option<[u32; 3]>,
    /// Whether the model has convolutions (the channels-last variants apply).
    pub convolutional: bool,
    /// Whether the case runs on CUDA only (too slow for the CPU comparison).
    pub cuda_only: bool,
}

/// The cases compared, in the report's order.
pub const CASES: &[Case] = &[
    Case {
        model: "vae-mlp",
        batch: 128,
        task: "train",
        target: 1.25,
        protocol: None,
        convolutional: false,
        cuda_only: false,
    },
    Case {
        model: "hvae-ladder",
        batch: 128,
        task: "train",
        target: 1.2,
        protocol: None,
        convolutional: false,
        cuda_only: false,
    },
    Case {
        model: "ddpm-mnist",
        batch: 64,
        task: "train",
        target: 1.05,
        protocol: Some([2, 3, 2]),
        convolutional: true,
        cuda_only: false,
    },
    Case {
        model: "ddpm-mnist",
        batch: 64,
        task: "sample",
        target: 1.05,
        protocol: Some([1, 2, 1]),
        convolutional: true,
        cuda_only: false,
    },
    Case {
        model: "ddpm-cifar10",
        batch: 128,
        task: "train",
        target: 1.0,
        protocol: Some([5, 5, 10]),
        convolutional: true,
        cuda_only: true,
    },
    Case {
        model: "ddpm-cifar10",
        batch: 128,
        task: "sample",
        target: 1.0,
        protocol: Some([1, 3, 1]),
        convolutional: true,
        cuda_only: true,
    },
];

/// The variants that run for `case`, in `choices`' order, each once.
pub fn variants_for(case: &Case, choices: &[VariantChoice]) -> Vec<VariantChoice> {
    let mut out: Vec<VariantChoice> = Vec::new();
    for &v in choices {
        if v != VariantChoice::None
            && (case.convolutional || !v.needs_convolutions())
            && !out.contains(&v)
        {
            out.push(v);
        }
    }
    out
}

/// The cases that run on `device` (`cpu` or a CUDA device), filtered by `--cases`.
pub fn cases_for(device: &str, filter: &[String]) -> Result<Vec<Case>> {
    let cuda = device != "cpu";
    let all: Vec<Case> = CASES
        .iter()
        .filter(|c| cuda || !c.cuda_only)
        .copied()
        .collect();
    if filter.is_empty() {
        return Ok(all);
    }
    let picked: Vec<Case> = all
        .iter()
        .filter(|c| {
            filter
                .iter()
                .any(|f| f == c.model || *f == format!("{}:{}", c.model, c.task))
        })
        .copied()
        .collect();
    for f in filter {
        if !all
            .iter()
            .any(|c| f == c.model || *f == format!("{}:{}", c.model, c.task))
        {
            let names: Vec<String> = all
                .iter()
                .map(|c| format!("{}:{}", c.model, c.task))
                .collect();
            bail!(
                "--cases {f}: no such case on {device}; expected a model or model:task of {}",
                names.join(", ")
            );
        }
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_variants_run_for_convolutional_models_only_and_none_means_eager() {
        use VariantChoice::*;
        let all = [Compiled, ChannelsLast, CompiledChannelsLast];
        assert_eq!(variants_for(&CASES[0], &all), [Compiled]);
        assert_eq!(variants_for(&CASES[2], &all), all);
        assert_eq!(variants_for(&CASES[2], &[None]), []);
        assert_eq!(variants_for(&CASES[2], &[Compiled, Compiled]), [Compiled]);
        let names: Vec<&str> = all.iter().map(|v| v.name()).collect();
        assert_eq!(
            names,
            ["compiled", "channels-last", "compiled+channels-last"]
        );
    }

    #[test]
    fn cifar10_runs_on_cuda_only_and_cases_filter_by_model_or_task() {
        let names = |cases: Vec<Case>| -> Vec<String> {
            cases
                .iter()
                .map(|c| format!("{}:{}", c.model, c.task))
                .collect()
        };
        let cpu = names(cases_for("cpu", &[]).unwrap());
        assert_eq!(
            cpu,
            [
                "vae-mlp:train",
                "hvae-ladder:train",
                "ddpm-mnist:train",
                "ddpm-mnist:sample"
            ]
        );
        let cuda = names(cases_for("cuda:1", &[]).unwrap());
        assert_eq!(cuda.len(), 6);
        assert!(cuda.contains(&"ddpm-cifar10:train".to_string()));
        let picked =
            names(cases_for("cuda", &["ddpm-cifar10".into(), "ddpm-mnist:sample".into()]).unwrap());
        assert_eq!(
            picked,
            [
                "ddpm-mnist:sample",
                "ddpm-cifar10:train",
                "ddpm-cifar10:sample"
            ]
        );
        let err = cases_for("cpu", &["ddpm-cifar10".into()]).unwrap_err();
        assert!(err.to_string().contains("no such case on cpu"), "{err}");
    }
}
