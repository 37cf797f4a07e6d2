//! What a user sees: the run's summary before its first step, a progress bar on a
//! terminal (plain lines otherwise), and the evaluation, each printed once.

use std::io::IsTerminal;

use elbo_models::session::{ACTIVE_UNIT_THRESHOLD, EvalReport, Observer, Progress, RunStart};

/// Groups of three digits: `1623169` -> `1,623,169`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The lines printed before a run's first step.
pub fn start_lines(start: &RunStart) -> Vec<String> {
    let from = if start.start_step > 0 {
        format!(", resuming at step {}", start.start_step)
    } else {
        String::new()
    };
    vec![
        format!(
            "model {}: {} parameters",
            start.label,
            thousands(start.parameters)
        ),
        format!(
            "data {}: {} training images",
            start.data,
            thousands(start.train_examples as i64)
        ),
        format!(
            "{} steps of {} images{from}, on {} with {} thread{}",
            thousands(start.steps as i64),
            start.batch_size,
            device_name(start.device),
            start.threads,
            if start.threads == 1 { "" } else { "s" }
        ),
        format!("run folder {}", start.run.display()),
    ]
}

/// A device as `--device` names it: `cpu`, `cuda:N`.
fn device_name(device: elbo_models::session::Device) -> String {
    use elbo_models::session::Device;
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A progress bar on a terminal; plain lines otherwise (CI, logs).
pub struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    packing: Option<Packing>,
}

/// The packing of a folder of images, shown: a bar of its own on a terminal (it comes
/// before training's), else a line every 1,000 images and at the end.
pub struct Packing {
    bar: Option<indicatif::ProgressBar>,
    /// The plain line's text before `done/total`, and how often it is printed.
    line: (&'static str, usize),
}

impl Packing {
    /// A bar when standard error is a terminal.
    pub fn new() -> Packing {
        Packing {
            bar: terminal_bar(
                "packing {bar:30} {pos}/{len} images [{elapsed_precise} < {eta_precise}]",
            ),
            line: ("packing the folder of images, decoded", 1000),
        }
    }

    /// The batches of a sample export (`elbo sample --format`).
    pub fn export() -> Packing {
        Packing {
            bar: terminal_bar(
                "exporting {bar:30} {pos}/{len} batches [{elapsed_precise} < {eta_precise}]",
            ),
            line: ("exporting samples, batches done", 1),
        }
    }
}

/// A progress bar drawn with `template` when standard error is a terminal (`None`
/// otherwise: CI and logs get plain lines).
fn terminal_bar(template: &str) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar
    })
}

/// Shows `done` of `total` images packed.
pub fn packing_progress(packing: &mut Packing, done: usize, total: usize) {
    match &packing.bar {
        Some(bar) => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            if done == total {
                bar.finish();
            }
        }
        None if done == total || done.is_multiple_of(packing.line.1) => {
            eprintln!("{}: {done}/{total}", packing.line.0);
        }
        None => {}
    }
}

impl ProgressView {
    /// A bar when standard error is a terminal.
    pub fn new() -> ProgressView {
        ProgressView {
            bar: terminal_bar(
                "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]",
            ),
            packing: None,
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for ProgressView {
    fn packing(&mut self, done: usize, total: usize) {
        packing_progress(self.packing.get_or_insert_with(Packing::new), done, total);
    }

    fn started(&mut self, start: &RunStart) {
        for line in start_lines(start) {
            eprintln!("{line}");
        }
    }

    fn progress(&mut self, p: &Progress) {
        let terms: Vec<String> = p
            .terms
            .iter()
            .map(|(name, value)| format!("{name} {value:.2}"))
            .collect();
        let mut message = format!("{} | {:.1} it/s", terms.join(" "), p.steps_per_second);
        let evaluation: Vec<String> = p
            .evaluation
            .iter()
            .map(|(name, value)| format!("{name} {value:.3}"))
            .collect();
        if !evaluation.is_empty() {
            message.push_str(&format!(" | {}", evaluation.join(" ")));
        }
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.steps);
                bar.set_position(p.step);
                bar.set_message(message);
                if !evaluation.is_empty() {
                    bar.println(format!("epoch {}: {}", p.epoch + 1, evaluation.join(" ")));
                }
            }
            None if !evaluation.is_empty() || p.step.is_multiple_of(100) || p.step == p.steps => {
                eprintln!(
                    "step {}/{} (epoch {}): {message}",
                    p.step,
                    p.steps,
                    p.epoch + 1
                );
            }
            None => {}
        }
    }
}

/// The evaluation: each term, the ELBO once, the IWAE bound, the active units.
pub fn print_eval(report: &EvalReport) {
    println!(
        "test set: {} examples, {} dimensions each",
        report.examples, report.dims
    );
    let width = report
        .terms
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(16);
    for (name, value) in &report.terms {
        println!(
            "  {name:<width$} {value:>12.3} nats  ({:.4} bits/dim)",
            report.bits_per_dim(-value.abs())
        );
    }
    println!(
        "  {:<width$} {:>12.3} nats  ({:.4} bits/dim)",
        "ELBO",
        report.elbo,
        report.bits_per_dim(report.elbo)
    );
    if let Some((k, bound)) = report.iwae {
        println!(
            "  {:<width$} {bound:>12.3} nats  (NLL <= {:.3} nats, {:.4} bits/dim)",
            format!("IWAE-{k}"),
            -bound,
            report.bits_per_dim(bound)
        );
    }
    if !report.active_units.is_empty() {
        println!(
            "active units (posterior-mean variance over the test set > {ACTIVE_UNIT_THRESHOLD}):"
        );
        for units in &report.active_units {
            println!(
                "  {:<16} {:>5} of {}",
                units.layer, units.active, units.dims
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_the_start_says_what_runs() {
        assert_eq!(thousands(1_623_169), "1,623,169");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(-1000), "-1,000");
        let lines = start_lines(&RunStart {
            label: "vae-mlp".into(),
            parameters: 652_824,
            data: "mnist-sample".into(),
            train_examples: 9000,
            steps: 710,
            start_step: 0,
            batch_size: 128,
            device: elbo_models::session::Device::Cpu,
            threads: 2,
            run: "runs/x".into(),
        });
        assert_eq!(lines[0], "model vae-mlp: 652,824 parameters");
        assert!(lines[2].starts_with("710 steps of 128 images, on cpu with 2 threads"));
    }
}
