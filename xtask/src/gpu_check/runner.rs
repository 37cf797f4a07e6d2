//! Running one command of the GPU check: its output shown as it comes and its last lines
//! kept for the report, and a time limit after which the command and everything it
//! started (a cargo build's compilers, a test's workers) are killed.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How many of a command's last lines the report keeps.
pub const TAIL_LINES: usize = 25;

/// What a command did.
#[derive(Debug)]
pub struct Ran {
    /// Its exit status (`None`: killed at the time limit).
    pub status: Option<ExitStatus>,
    /// Its last [`TAIL_LINES`] lines, standard output and error interleaved as read.
    pub tail: Vec<String>,
    /// Every line (for the checks that read the whole output).
    pub lines: Vec<String>,
}

impl Ran {
    /// Whether it exited with success.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Why it did not succeed, with its last lines.
    pub fn failure(&self, label: &str, limit: Duration) -> String {
        let why = match self.status {
            None => format!(
                "`{label}` did not finish within its limit of {} s and was stopped",
                limit.as_secs()
            ),
            Some(status) => format!("`{label}` failed ({status})"),
        };
        format!("{why}; its last lines:\n{}", self.tail.join("\n"))
    }
}

/// Runs `command` in a process group of its own, echoing its output with `echo` and
/// keeping it, for at most `limit`: past it, the whole group is sent SIGKILL.
pub fn run(command: &mut Command, limit: Duration, echo: bool) -> Result<Ran> {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .process_group(0);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start {:?}", command.get_program()))?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        })
    })
    .collect();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the command")? {
            break Some(status);
        }
        if started.elapsed() >= limit {
            // The group: the command and whatever it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for reader in readers {
        let _ = reader.join();
    }
    let lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|p| p.into_inner()));
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    for line in &lines {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.clone());
    }
    Ok(Ran {
        status,
        tail: tail.into(),
        lines,
    })
}

/// The lines of a test run that say a test was not run (a GPU test on a machine with
/// too few GPUs prints `...: not run`), which the report counts as not run, not passed.
pub fn not_run(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("not run"))
        .cloned()
        .collect()
}
