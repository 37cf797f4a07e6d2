//! The comparison's report: its schema (written to and read back from `report.json` with
//! the same types), its markdown table, and the writing of `report.{json,md}` and the
//! chart.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

use super::chart;
use super::runs::MatmulRun;
use super::stats::Summary;

/// Everything one `cargo xtask bench --with-pytorch` measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The xtask's arguments, e.g. `bench --with-pytorch --compare-only`.
    pub command: String,
    /// When it finished, in seconds since 1970.
    pub unix_time: u64,
    /// How each case was timed.
    pub protocol: Protocol,
    /// Where both sides ran, in which precision (reports of before CUDA: the CPU).
    #[serde(default)]
    pub setting: RunSetting,
    /// A matmul peak, then the cases, for each thread count.
    pub rows: Vec<Row>,
}

/// The machine's facts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU's model name (`unknown` when /proc/cpuinfo does not say).
    pub cpu: String,
    /// Logical cores available to the process.
    pub cores: usize,
    /// /proc/loadavg at the end of the run.
    pub loadavg_at_end: String,
}

/// The timing protocol (cases with a protocol of their own override all but `rounds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    /// Alternations of the two sides per case.
    pub rounds: u32,
    /// Untimed steps before timing, in each process.
    pub warmup: u32,
    /// Timed repetitions per process.
    pub reps: u32,
    /// Steps per timed repetition.
    pub steps: u32,
}

/// The device and precision both sides ran with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSetting {
    /// `cpu` or `cuda[:N]`.
    pub device: String,
    /// `none` or `bf16` (the forward under autocast).
    pub autocast: String,
    /// Whether float32 matmuls and convolutions on CUDA could use TF32.
    pub tf32: bool,
}

impl Default for RunSetting {
    fn default() -> Self {
        RunSetting {
            device: "cpu".into(),
            autocast: "none".into(),
            tf32: false,
        }
    }
}

impl RunSetting {
    /// Whether the run was on a GPU.
    pub fn cuda(&self) -> bool {
        self.device != "cpu"
    }
}

/// One row of the report, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Row {
    /// The matmul peak at the start of a thread count's cases (boxed, as the case).
    Matmul(Box<MatmulRow>),
    /// One case compared (boxed: it is the larger variant by far).
    Case(Box<CaseRow>),
}

/// The matmul peak of a thread count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatmulRow {
    /// Intra-op threads.
    pub threads: u32,
    /// steptime's line, as printed.
    pub elbo: MatmulRun,
}

/// One case at one thread count: both sides' step times and what follows from them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseRow {
    /// The preset, e.g. `vae-mlp`.
    pub model: String,
    /// `train` or `sample`.
    pub task: String,
    /// Examples per step.
    pub batch: u32,
    /// Intra-op threads.
    pub threads: u32,
    /// Trainable parameters, the same on both sides.
    pub params: Option<i64>,
    /// The speed-up asked of elbo.
    pub target: f64,
    /// elbo's milliseconds per step, over every repetition of every round.
    pub elbo_ms: Summary,
    /// PyTorch's, with its default Adam.
    pub pytorch_ms: Summary,
    /// PyTorch's, with `fused=True` Adam (training only: sampling has no optimiser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pytorch_fused_ms: Option<Summary>,
    /// PyTorch's median over elbo's (above 1: elbo is faster).
    #[serde(deserialize_with = "number")]
    pub speedup: f64,
    /// The speed-up's range from the extremes: (slowest elbo, fastest PyTorch) to the
    /// reverse.
    #[serde(deserialize_with = "pair")]
    pub speedup_range: [f64; 2],
    /// The speed-up over PyTorch with fused Adam.
    #[serde(
        default,
        deserialize_with = "maybe_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub speedup_vs_fused: Option<f64>,
    /// Its range.
    #[serde(
        default,
        deserialize_with = "maybe_pair",
        skip_serializing_if = "Option::is_none"
    )]
    pub speedup_vs_fused_range: Option<[f64; 2]>,
    /// elbo's largest peak resident memory over its runs, MiB.
    pub elbo_peak_rss_mib: f64,
    /// PyTorch's (default Adam), MiB.
    pub pytorch_peak_rss_mib: f64,
    /// elbo's minor page faults per step, median over runs.
    pub elbo_faults_per_step: Option<f64>,
    /// PyTorch's.
    pub pytorch_faults_per_step: Option<f64>,
    /// elbo's peak device memory (the caching allocator's), MiB, median over runs (CUDA).
    #[serde(default)]
    pub elbo_peak_device_mib: Option<f64>,
    /// PyTorch's (eager, default Adam).
    #[serde(default)]
    pub pytorch_peak_device_mib: Option<f64>,
    /// PyTorch's variants (torch.compile, channels-last), each with fused Adam.
    #[serde(default)]
    pub variants: Vec<VariantRow>,
    /// PyTorch's variants that failed on this case (name, the first line of why): a
    /// variant's failure is its own, and the comparison goes on without it.
    #[serde(default)]
    pub failed_variants: Vec<(String, String)>,
    /// The fastest PyTorch of all, and elbo's ratio to it.
    #[serde(default)]
    pub best: Option<Best>,
    /// The data pipeline's time (training cases).
    #[serde(flatten)]
    pub data: Option<DataShare>,
    /// The compute efficiency (training steps of models that report their FLOPs).
    #[serde(flatten)]
    pub efficiency: Option<Efficiency>,
}

/// One of PyTorch's variants of a case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantRow {
    /// `compiled`, `channels-last` or `compiled+channels-last`.
    pub variant: String,
    /// Its milliseconds per step, over every repetition of every round.
    pub ms: Summary,
    /// Its median over elbo's (above 1: elbo is faster).
    #[serde(deserialize_with = "number")]
    pub speedup: f64,
    /// The first warm-up step's seconds, median over runs (with torch.compile: the
    /// compilation, not part of the step times).
    pub first_step_s: Option<f64>,
    /// The largest peak resident memory over its runs, MiB.
    pub peak_rss_mib: f64,
}

/// The fastest PyTorch of a case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// Which: `eager, default Adam`, `eager, fused Adam`, `compiled, fused Adam`, ...
    pub variant: String,
    /// Its milliseconds per step.
    pub ms: Summary,
    /// Its median over elbo's: the goal is at least 1.
    #[serde(deserialize_with = "number")]
    pub speedup: f64,
    /// The range from the extremes.
    #[serde(deserialize_with = "pair")]
    pub speedup_range: [f64; 2],
}

/// The training loop's data work for a case, next to its step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataShare {
    /// Milliseconds to prepare one batch, median.
    #[serde(deserialize_with = "number")]
    pub elbo_data_ms: f64,
    /// That over (it + the step's median).
    #[serde(deserialize_with = "number")]
    pub data_share: f64,
}

/// elbo's achieved GFLOP/s over the machine's matmul peak.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    /// One forward pass of one example, from the PyTorch side's analytic count.
    pub forward_flops_per_example: f64,
    /// At the row's median step (a step is 3 forwards).
    #[serde(deserialize_with = "number")]
    pub elbo_gflops: f64,
    /// The median of the peaks paired with the rounds.
    #[serde(deserialize_with = "number")]
    pub matmul_peak_gflops: f64,
    /// The median over rounds of elbo's GFLOP/s over its round's peak.
    #[serde(deserialize_with = "number")]
    pub efficiency: f64,
    /// That ratio for each round.
    #[serde(deserialize_with = "numbers")]
    pub efficiency_per_round: Vec<f64>,
    /// Each round's pair the ratio is made of.
    pub efficiency_rounds: Vec<EfficiencyRound>,
}

/// One round's elbo run and the matmul peak measured just before it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EfficiencyRound {
    /// elbo's GFLOP/s at the run's median step.
    #[serde(deserialize_with = "number")]
    pub elbo_gflops: f64,
    /// The peak measured before the run.
    pub matmul_peak_gflops: f64,
}

// JSON has no NaN or infinity (serde_json writes `null`): a ratio that is not finite
// reads back as NaN rather than failing the whole report.
fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

fn pair<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[f64; 2], D::Error> {
    let [a, b] = <[Option<f64>; 2]>::deserialize(deserializer)?;
    Ok([a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN)])
}

fn maybe_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    // A missing key is `None` (serde's default); a present `null` is a ratio that was
    // not finite.
    Ok(Some(
        Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN),
    ))
}

fn maybe_pair<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<[f64; 2]>, D::Error> {
    Ok(Some(pair(deserializer)?))
}

fn numbers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    let values = Vec::<Option<f64>>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

impl Report {
    /// The case rows, in order.
    pub fn cases(&self) -> impl Iterator<Item = &CaseRow> {
        self.rows.iter().filter_map(|row| match row {
            Row::Case(case) => Some(case.as_ref()),
            Row::Matmul(_) => None,
        })
    }

    /// The matmul rows, in order.
    pub fn matmuls(&self) -> impl Iterator<Item = &MatmulRow> {
        self.rows.iter().filter_map(|row| match row {
            Row::Matmul(matmul) => Some(matmul.as_ref()),
            Row::Case(_) => None,
        })
    }
}

/// The markdown table of a report, and the paragraphs under it.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let (machine, protocol, setting) = (&report.machine, &report.protocol, &report.setting);
    md.push_str(&format!(
        "Machine: {} ({} cores), load at the end {}; `cargo xtask {}`; {} rounds x {} reps x \
         {} steps after {} warm-up steps.\n\n",
        machine.cpu,
        machine.cores,
        machine.loadavg_at_end,
        report.command,
        protocol.rounds,
        protocol.reps,
        protocol.steps,
        protocol.warmup,
    ));
    if setting.cuda() {
        md.push_str(&format!(
            "Device {}, autocast {}, TF32 for float32 matmuls and convolutions {} (both \
             sides).\n\n",
            setting.device,
            setting.autocast,
            if setting.tf32 { "on" } else { "off" },
        ));
    }
    md.push_str(
        "| case | threads | elbo ms/step (median, min-max) | PyTorch ms/step | speed-up | \
         target | PyTorch, fused Adam | speed-up over it | peak RSS elbo / PyTorch (MiB) | \
         page faults per step elbo / PyTorch |\n",
    );
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let ms = |s: &Summary| format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max);
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    for row in report.cases() {
        md.push_str(&format!(
            "| {} {} (batch {}) | {} | {} | {} | **{:.2}x** ({:.2}-{:.2}) | {:.2}x {} | {} | \
             {} | {:.0} / {:.0} | {:.0} / {:.0} |\n",
            row.model,
            row.task,
            row.batch,
            row.threads,
            ms(&row.elbo_ms),
            ms(&row.pytorch_ms),
            row.speedup,
            row.speedup_range[0],
            row.speedup_range[1],
            row.target,
            if row.speedup >= row.target {
                "met"
            } else {
                "missed"
            },
            row.pytorch_fused_ms
                .as_ref()
                .map_or_else(|| "- (no optimiser)".to_string(), ms),
            row.speedup_vs_fused
                .map_or_else(|| "-".to_string(), |r| format!("{r:.2}x")),
            row.elbo_peak_rss_mib,
            row.pytorch_peak_rss_mib,
            nan(row.elbo_faults_per_step),
            nan(row.pytorch_faults_per_step),
        ));
    }
    best_table(&mut md, report);
    for (row, data) in report
        .cases()
        .filter_map(|row| Some((row, row.data.filter(|d| d.data_share.is_finite())?)))
    {
        md.push_str(&format!(
            "\nData pipeline, {} (threads {}): {:.3} ms per batch of {}, {:.1}% of a training \
             step plus its batch.",
            row.model,
            row.threads,
            data.elbo_data_ms,
            row.batch,
            100.0 * data.data_share,
        ));
    }
    let peak_name = if setting.cuda() {
        format!("{} matmul peak", matmul_dtype(report))
    } else {
        "matmul peak".to_string()
    };
    for (row, e) in report.cases().filter_map(|row| {
        let e = row
            .efficiency
            .as_ref()
            .filter(|e| e.efficiency.is_finite())?;
        Some((row, e))
    }) {
        let per_round: Vec<String> = e
            .efficiency_per_round
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect();
        md.push_str(&format!(
            "\nCompute efficiency, {} train step (threads {}): {:.1} GFLOP/s ({:.3} GFLOP \
             forward per example, x3 for a step); over the {peak_name} measured just before \
             each round ({:.1} GFLOP/s median), per round {}: median {:.2} (target 0.5: {}).",
            row.model,
            row.threads,
            e.elbo_gflops,
            e.forward_flops_per_example / 1e9,
            e.matmul_peak_gflops,
            per_round.join(", "),
            e.efficiency,
            if e.efficiency >= 0.5 { "met" } else { "missed" },
        ));
    }
    if setting.cuda() {
        for row in report.cases() {
            let per_s = |ms: f64| f64::from(row.batch) / (ms * 1e-3);
            let best = row.best.as_ref().map_or(row.pytorch_ms, |b| b.ms);
            md.push_str(&format!(
                "\nThroughput, {} {} (batch {}): elbo {:.1} images/s, best PyTorch {:.1}; peak \
                 device memory elbo {:.0} MiB, PyTorch (eager) {:.0} MiB.",
                row.model,
                row.task,
                row.batch,
                per_s(row.elbo_ms.median),
                per_s(best.median),
                nan(row.elbo_peak_device_mib),
                nan(row.pytorch_peak_device_mib),
            ));
        }
    }
    md.push('\n');
    for row in report.matmuls() {
        let what = if setting.cuda() {
            format!(
                "{} matmul peak of libtorch on {} ({} x {})",
                matmul_dtype(report),
                setting.device,
                row.elbo.size,
                row.elbo.size
            )
        } else {
            format!(
                "fp32 matmul peak of libtorch here ({} thread(s), {} x {})",
                row.threads, row.elbo.size, row.elbo.size
            )
        };
        md.push_str(&format!(
            "\n{what} at the start of the run: {:.1} GFLOP/s.",
            nan(row.elbo.gflops),
        ));
    }
    md.push('\n');
    md
}

/// The matmul peak's precision as the report names it (`bf16`, `tf32`, `fp32`).
fn matmul_dtype(report: &Report) -> String {
    report
        .matmuls()
        .find_map(|m| m.elbo.dtype.clone())
        .map_or_else(
            || "fp32".to_string(),
            |d| d.replace("f32", "fp32").replace("tfp32", "tf32"),
        )
}

/// The table of PyTorch at its best: every PyTorch variant's median step, the fastest
/// and elbo's ratio to it, against the goal of at least 1.0x.
fn best_table(md: &mut String, report: &Report) {
    let names: Vec<String> = {
        let mut names = Vec::new();
        for row in report.cases() {
            for v in &row.variants {
                if !names.contains(&v.variant) {
                    names.push(v.variant.clone());
                }
            }
        }
        names
    };
    if report.cases().all(|row| row.best.is_none()) {
        return;
    }
    md.push_str(
        "\nPyTorch at its best: median ms/step of each variant (the channels-last ones for \
         the convolutional models only; variants with fused Adam; the first step's seconds, \
         compilation included, in brackets), the fastest, and elbo's speed-up over it (goal: \
         at least 1.00x).\n\n",
    );
    md.push_str("| case | threads | elbo | eager, default Adam | eager, fused Adam |");
    for name in &names {
        md.push_str(&format!(" {name} |"));
    }
    md.push_str(" best PyTorch | elbo over best | goal 1.00x |\n");
    md.push_str(&"| --- ".repeat(8 + names.len()));
    md.push_str("|\n");
    for row in report.cases() {
        let Some(best) = &row.best else { continue };
        md.push_str(&format!(
            "| {} {} (batch {}) | {} | {:.2} | {:.2} | {} |",
            row.model,
            row.task,
            row.batch,
            row.threads,
            row.elbo_ms.median,
            row.pytorch_ms.median,
            row.pytorch_fused_ms
                .map_or_else(|| "-".to_string(), |s| format!("{:.2}", s.median)),
        ));
        for name in &names {
            match row.variants.iter().find(|v| &v.variant == name) {
                Some(v) => md.push_str(&format!(
                    " {:.2} ({:.1} s) |",
                    v.ms.median,
                    v.first_step_s.unwrap_or(f64::NAN)
                )),
                None => md.push_str(" - |"),
            }
        }
        md.push_str(&format!(
            " {} | **{:.2}x** ({:.2}-{:.2}) | {} |\n",
            best.variant,
            best.speedup,
            best.speedup_range[0],
            best.speedup_range[1],
            if best.speedup >= 1.0 { "met" } else { "missed" },
        ));
    }
    for row in report.cases() {
        for (variant, why) in &row.failed_variants {
            md.push_str(&format!(
                "\nPyTorch ({variant}) failed on {} {} (batch {}, threads {}), left out of its \
                 row: {why}\n",
                row.model, row.task, row.batch, row.threads
            ));
        }
    }
}

/// Writes `report.json`, `report.md` and `ratios.png` into `out` (each whole or not at
/// all) and prints the markdown.
pub fn write(out: &Path, report: &Report) -> Result<()> {
    let write = |name: &str, bytes: &[u8]| -> Result<_> {
        let path = out.join(name);
        elbo_plot::write_atomic(&path, bytes)?;
        Ok(path)
    };
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    let json_path = write("report.json", json.as_bytes())?;
    let md = markdown(report);
    let md_path = write("report.md", md.as_bytes())?;
    let png_path = out.join("ratios.png");
    elbo_plot::write_bars(&png_path, &chart::speedups(report))?;
    println!("{md}");
    println!(
        "wrote {}, {} and {}",
        md_path.display(),
        json_path.display(),
        png_path.display()
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
