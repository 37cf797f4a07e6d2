//! The GPU check's report: every step with its outcome, time and plan, the environment,
//! the details a step kept, the bench; as markdown, written after every step.

/// How a step of the check ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It did what it should.
    Passed,
    /// It did not: why.
    Failed(String),
    /// It was not run, or fell back to something else (a missing data set, too few
    /// GPUs): why. Not a failure.
    Skipped(String),
    /// It ran, but some of its tests were not (they print `not run`): which. Not a pass.
    NotRun(String),
}

/// One step of the check, for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// What it checks.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Its wall time.
    pub seconds: f64,
    /// What the plan expected, in seconds.
    pub estimate: f64,
    /// What it measured or printed that the report keeps (one line each; a failed
    /// command's last lines).
    pub details: Vec<String>,
}

/// Everything the report says.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    /// The GPUs nvidia-smi listed.
    pub gpus: Vec<String>,
    /// The device checked.
    pub device: String,
    /// elbo's commit (`git rev-parse HEAD`), when known.
    pub commit: Option<String>,
    /// What `elbo info` reports of the loaded libtorch, CUDA, cuDNN, NCCL and the parts
    /// compiled in, and the settings of the runs (autocast, TF32, determinism).
    pub environment: Vec<String>,
    /// The steps, in order (those still to come are in the plan, not here).
    pub steps: Vec<Step>,
    /// The steps planned, with their estimates in seconds.
    pub plan: Vec<(String, f64)>,
    /// The CUDA bench's markdown, when it ran.
    pub bench: Option<String>,
}

impl CheckReport {
    /// Whether every step that ran passed (skips and tests not run are not failures).
    pub fn passed(&self) -> bool {
        self.steps
            .iter()
            .all(|s| !matches!(s.outcome, Outcome::Failed(_)))
    }
}

/// The report as markdown.
pub fn markdown(report: &CheckReport) -> String {
    let mut md = String::from("# elbo GPU check\n\n");
    md.push_str(&format!(
        "Device {}; commit {}; GPUs (nvidia-smi: name, memory, driver):\n\n",
        report.device,
        report.commit.as_deref().unwrap_or("unknown"),
    ));
    for gpu in &report.gpus {
        md.push_str(&format!("- {gpu}\n"));
    }
    let done = report.steps.len();
    let planned = report.plan.len().max(done);
    let result = if !report.passed() {
        "a step failed"
    } else if done < planned {
        "in progress: every step so far passed"
    } else {
        "every step passed"
    };
    md.push_str(&format!(
        "\nResult: **{result}** ({done} of {planned} steps run)\n\n| step | result | seconds \
         | planned |\n| --- | --- | --- | --- |\n"
    ));
    for step in &report.steps {
        let result = match &step.outcome {
            Outcome::Passed => "passed".to_string(),
            Outcome::Failed(why) => format!("**failed**: {}", one_line(why)),
            Outcome::Skipped(why) => format!("skipped: {}", one_line(why)),
            Outcome::NotRun(why) => format!("not run: {}", one_line(why)),
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} |\n",
            step.name, result, step.seconds, step.estimate
        ));
    }
    for (name, estimate) in report.plan.iter().skip(done) {
        md.push_str(&format!("| {name} | to come | - | {estimate:.0} |\n"));
    }
    if !report.environment.is_empty() {
        md.push_str("\n## Environment\n\n```\n");
        for line in &report.environment {
            md.push_str(line);
            md.push('\n');
        }
        md.push_str("```\n");
    }
    for step in report.steps.iter().filter(|s| !s.details.is_empty()) {
        md.push_str(&format!("\n## {}\n\n```\n", step.name));
        for line in &step.details {
            md.push_str(line);
            md.push('\n');
        }
        md.push_str("```\n");
    }
    if let Some(bench) = &report.bench {
        md.push_str("\n## CUDA bench against PyTorch\n\n");
        md.push_str(bench);
    }
    md
}

/// A message for a table cell: one line, no pipes.
fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").replace('|', "/");
    let chars: Vec<char> = line.chars().collect();
    if chars.len() > 300 {
        format!("{}...", chars[..300].iter().collect::<String>())
    } else {
        line
    }
}
