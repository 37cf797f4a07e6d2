//! The JSON lines the two harnesses print: elbo's `steptime`
//! (benches/src/bin/steptime.rs) and PyTorch's `benches/reference/steptime.py`. Field
//! names are those the programs print; fields one of them leaves out are `Option`s, and
//! fields the xtask does not read are ignored.

use serde::{Deserialize, Deserializer, Serialize};

/// One process's timing of a training step, a sampling or a data batch (`--task train`,
/// `sample`, `data`), from either side.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct StepRun {
    /// `elbo` or `pytorch`.
    pub side: String,
    /// The preset, e.g. `vae-mlp`.
    pub model: String,
    /// `train`, `sample` or `data`.
    pub task: String,
    /// Trainable parameters (not printed for `data`).
    pub params: Option<i64>,
    /// Examples per step.
    pub batch: u64,
    /// Intra-op threads.
    pub threads: u32,
    /// Untimed steps first (not printed for `data`).
    pub warmup: Option<u64>,
    /// Timed repetitions (not printed for `data`).
    pub reps: Option<u64>,
    /// Steps per repetition (not printed for `data`).
    pub steps_per_rep: Option<u64>,
    /// Mean milliseconds per step of each repetition (`null` entries dropped).
    #[serde(default, deserialize_with = "finite_times")]
    pub step_ms: Vec<f64>,
    /// Minor page faults per timed step (`null` where the system does not say).
    pub faults_per_step: Option<f64>,
    /// The process's peak resident memory, MiB (`null` where the system does not say).
    pub peak_rss_mib: Option<f64>,
    /// PyTorch's version (PyTorch only).
    pub torch_version: Option<String>,
    /// Which Adam ran: `default`, `foreach` or `fused` (PyTorch only).
    pub adam: Option<String>,
    /// Analytic forward FLOPs of one example (PyTorch, models that know it).
    pub forward_flops_per_example: Option<f64>,
    /// DDIM steps of a sampling (`--task sample`).
    pub ddim_steps: Option<u64>,
    /// DDIM eta (`--task sample`).
    pub eta: Option<f64>,
    /// Whether glibc's malloc was left as it is (elbo, `--task train`).
    pub default_malloc: Option<bool>,
    /// PyTorch's combination of torch.compile and channels-last: `eager`, `compiled`,
    /// `channels-last` or `compiled+channels-last`.
    pub variant: Option<String>,
    /// Seconds of the first warm-up step (PyTorch; with torch.compile, the compilation).
    pub first_step_s: Option<f64>,
    /// `cpu` or `cuda:N`.
    pub device: Option<String>,
    /// The caching allocator's peak over the timed steps, MiB (CUDA; `null` on the CPU).
    pub peak_device_mib: Option<f64>,
}

/// elbo's fp32 matrix product (`--model matmul --task matmul`): the machine's peak.
/// Kept whole in the report's `matmul` rows, so it is written back as it was printed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MatmulRun {
    /// `elbo`.
    pub side: String,
    /// `matmul`.
    pub model: String,
    /// `matmul`.
    pub task: String,
    /// The matrices' side.
    pub size: u64,
    /// Intra-op threads.
    pub threads: u32,
    /// Mean milliseconds per product of each repetition (`null` entries dropped).
    #[serde(default, deserialize_with = "finite_times")]
    pub step_ms: Vec<f64>,
    /// Minor page faults per timed product.
    pub faults_per_step: Option<f64>,
    /// GFLOP/s of the fastest repetition (`null` when it took no measurable time).
    pub gflops: Option<f64>,
    /// The process's peak resident memory, MiB.
    pub peak_rss_mib: Option<f64>,
    /// `f32`, `tf32` or `bf16` (absent from lines of before CUDA: `f32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// `cpu` or `cuda:N` (absent from lines of before CUDA: the CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A list of times in which `null` (how a non-finite number is printed) is dropped.
fn finite_times<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    let times = Vec::<Option<f64>>::deserialize(deserializer)?;
    Ok(times.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steptime_lines_parse_with_the_fields_it_prints() {
        // As benches/src/bin/steptime.rs prints them (serde_json, keys sorted).
        let train = concat!(
            r#"{"batch":128,"default_malloc":false,"faults_per_step":0.5,"model":"vae-mlp","#,
            r#""params":1068820,"peak_rss_mib":210.5,"reps":5,"side":"elbo","#,
            r#""step_ms":[4.1,4.3,null],"steps_per_rep":10,"task":"train","threads":1,"#,
            r#""warmup":10}"#
        );
        let run: StepRun = serde_json::from_str(train).unwrap();
        assert_eq!(run.params, Some(1_068_820));
        assert_eq!(run.step_ms, [4.1, 4.3]);
        assert_eq!(run.default_malloc, Some(false));
        let data = concat!(
            r#"{"batch":128,"faults_per_step":null,"model":"vae-mlp","peak_rss_mib":null,"#,
            r#""side":"elbo","step_ms":[0.2],"task":"data","threads":2}"#
        );
        let run: StepRun = serde_json::from_str(data).unwrap();
        assert_eq!(
            (run.params, run.faults_per_step, run.peak_rss_mib),
            (None, None, None)
        );
        let matmul = concat!(
            r#"{"faults_per_step":0.0,"gflops":null,"model":"matmul","peak_rss_mib":30.0,"#,
            r#""side":"elbo","size":1024,"step_ms":[11.0],"task":"matmul","threads":1}"#
        );
        let run: MatmulRun = serde_json::from_str(matmul).unwrap();
        assert_eq!((run.size, run.gflops), (1024, None));
    }

    #[test]
    fn steptime_py_lines_parse_with_the_fields_it_prints() {
        // As benches/reference/steptime.py prints them (json.dumps, its key order).
        let sample = concat!(
            r#"{"side": "pytorch", "model": "ddpm-mnist", "task": "sample", "#,
            r#""params": 35746307, "batch": 64, "threads": 2, "warmup": 1, "reps": 2, "#,
            r#""steps_per_rep": 1, "step_ms": [5012.5, 4990.0], "faults_per_step": 1200.5, "#,
            r#""peak_rss_mib": 900.25, "torch_version": "2.13.0", "adam": "fused", "#,
            r#""forward_flops_per_example": 6.1e9, "ddim_steps": 50, "eta": 0.0}"#
        );
        let run: StepRun = serde_json::from_str(sample).unwrap();
        assert_eq!(run.side, "pytorch");
        assert_eq!(run.forward_flops_per_example, Some(6.1e9));
        assert_eq!(run.adam.as_deref(), Some("fused"));
        assert_eq!((run.ddim_steps, run.eta), (Some(50), Some(0.0)));
        assert_eq!(run.variant, None);
        let compiled = concat!(
            r#"{"side": "pytorch", "model": "ddpm-cifar10", "task": "train", "#,
            r#""params": 35746307, "batch": 128, "threads": 1, "step_ms": [80.5], "#,
            r#""adam": "fused", "variant": "compiled+channels-last", "compile": true, "#,
            r#""channels_last": true, "device": "cuda:0", "autocast": "bf16", "tf32": false, "#,
            r#""first_step_s": 41.5, "peak_device_mib": 9120.5}"#
        );
        let run: StepRun = serde_json::from_str(compiled).unwrap();
        assert_eq!(run.variant.as_deref(), Some("compiled+channels-last"));
        assert_eq!(run.first_step_s, Some(41.5));
        assert_eq!(run.device.as_deref(), Some("cuda:0"));
        assert_eq!(run.peak_device_mib, Some(9120.5));
    }

    #[test]
    fn a_line_without_what_the_report_needs_is_refused_by_name() {
        let err =
            serde_json::from_str::<StepRun>(r#"{"side": "elbo", "step_ms": []}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `model`"), "{err}");
        let err = serde_json::from_str::<StepRun>(
            r#"{"side": "elbo", "model": "m", "task": "train", "batch": "128", "threads": 1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected u64"), "{err}");
    }
}
