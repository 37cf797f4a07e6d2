//! `elbo train ... --nproc N`: starts N worker processes of this same program with the
//! torch.distributed env:// variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//! MASTER_ADDR=127.0.0.1, MASTER_PORT), exactly as torchrun would, so both launches run
//! the same worker code. It forwards each Ctrl-C to the workers (each in its own process
//! group, so that a terminal's Ctrl-C reaches them once, through here), waits, and exits
//! with the first failure's status, naming the rank. Workers that outlive the first
//! failure by more than the timeout are killed, and stopped ones (SIGSTOP, a debugger)
//! at once, named as what kept the others waiting; workers die with the launcher
//! (`PR_SET_PDEATHSIG`), so none is left behind on any exit path. With
//! `--max-restarts K` a failed job is started again, whole, up to K times (torchrun's
//! elastic restarts): each attempt resumes the newest checkpoint.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use elbo_models::session::World;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The variable that tells a worker which process launched it (it then dies with it).
pub const LAUNCHER_PID: &str = "ELBO_LAUNCHER_PID";

/// The command line of a worker: this one without the launcher's own options
/// (`--nproc`, `--master-port`, `--max-restarts`, in either `--name value` or
/// `--name=value` form).
pub fn worker_args(args: &[OsString]) -> Vec<OsString> {
    const OWN: [&str; 3] = ["--nproc", "--master-port", "--max-restarts"];
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = arg.to_string_lossy();
        if OWN.contains(&text.as_ref()) {
            skip_value = true;
            continue;
        }
        if OWN.iter().any(|own| text.starts_with(&format!("{own}="))) {
            continue;
        }
        out.push(arg.clone());
    }
    out
}

/// The workers, killed on drop if still running (every exit path of the launcher).
struct Workers(Vec<(usize, Child)>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// How a worker ended, in words.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map_or("unknown", Signal::as_str);
            format!("was killed by signal {signal} ({name})")
        }
        _ => "ended".to_string(),
    }
}

/// The exit status a shell would report for `status`.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        _ => 1,
    }
}

/// A free port on 127.0.0.1 (the operating system's choice; released for rank 0's store).
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// What the launcher is asked to run.
pub struct Launch {
    /// Worker processes.
    pub nproc: usize,
    /// The rendezvous port (`None`: a free one per attempt).
    pub port: Option<u16>,
    /// `--dist-timeout`.
    pub timeout: Duration,
    /// Restarts of the whole job after a worker's failure.
    pub max_restarts: u32,
}

/// Whether the process `pid` is stopped (SIGSTOP, a debugger: state T or t in
/// `/proc/PID/stat`); it will not end, nor answer the others, by itself.
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t")
    })
}

/// How one attempt of the job ended.
enum Attempt {
    /// Every worker exited 0.
    Succeeded,
    /// Interrupted by the user (Ctrl-C, SIGTERM): the workers said so.
    Interrupted,
    /// A worker failed: the job's exit status.
    Failed(u8),
}

/// Runs the job as `nproc` workers of this program on this machine, again after a
/// failure up to `max_restarts` times; returns the job's exit status.
pub fn run(launch: Launch) -> Result<ExitCode> {
    let Launch {
        nproc,
        port,
        timeout,
        max_restarts,
    } = launch;
    if nproc < 2 {
        bail!("--nproc {nproc}: a data-parallel job has at least 2 processes");
    }
    if !elbo_models::session::DATA_PARALLEL {
        bail!("{}", elbo_models::session::NO_DATA_PARALLEL);
    }
    let exe = std::env::current_exe().context("finding this program to start its workers")?;
    let args = worker_args(&std::env::args_os().skip(1).collect::<Vec<_>>());
    if max_restarts > 0 && !args.iter().any(|a| a == "--resume") {
        bail!(
            "--max-restarts {max_restarts} starts the job again after a failure, and each \
             attempt must continue from the newest checkpoint: add --resume (a run folder \
             without a checkpoint starts fresh with it)"
        );
    }
    let interrupts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&interrupts);
    ctrlc::set_handler(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;
    let mut restart = 0;
    loop {
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let job = Job {
            exe: &exe,
            args: &args,
            nproc,
            port,
            restart,
        };
        match job.attempt(timeout, &interrupts)? {
            Attempt::Succeeded => return Ok(ExitCode::SUCCESS),
            Attempt::Interrupted => return Ok(ExitCode::from(130)),
            Attempt::Failed(code) if restart >= max_restarts => {
                if max_restarts > 0 {
                    eprintln!("elbo: the job failed after {max_restarts} restarts; giving up");
                }
                return Ok(ExitCode::from(code));
            }
            Attempt::Failed(_) => {
                restart += 1;
                eprintln!(
                    "elbo: restarting the job from its newest checkpoint (restart {restart} of \
                     {max_restarts})"
                );
            }
        }
    }
}

/// One attempt of the job: its workers' command and rendezvous.
struct Job<'a> {
    exe: &'a std::path::Path,
    args: &'a [OsString],
    nproc: usize,
    port: u16,
    restart: u32,
}

impl Job<'_> {
    /// Starts the workers, forwards interrupts, waits for all of them; reports the
    /// first failure, naming the rank (and the ranks that were stopped).
    fn attempt(&self, timeout: Duration, interrupts: &AtomicUsize) -> Result<Attempt> {
        let nproc = self.nproc;
        // As torchrun: without a choice of the user's, the cores are shared out.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores / nproc).max(1).to_string();
        let mut workers = Workers(Vec::with_capacity(nproc));
        for rank in 0..nproc {
            let world = World {
                rank,
                size: nproc,
                local_rank: rank,
                local_size: nproc,
                master_addr: "127.0.0.1".to_string(),
                master_port: self.port,
                agent_store: false,
                gloo_interfaces: Vec::new(),
                restart_count: u64::from(self.restart),
            };
            let mut command = Command::new(self.exe);
            command
                .args(self.args)
                .envs(world.vars())
                .env(LAUNCHER_PID, std::process::id().to_string())
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .process_group(0);
            if std::env::var_os("OMP_NUM_THREADS").is_none() {
                command.env("OMP_NUM_THREADS", &threads);
            }
            let child = command
                .spawn()
                .with_context(|| format!("starting worker {rank} ({})", self.exe.display()))?;
            workers.0.push((rank, child));
        }

        let mut ended: Vec<Option<ExitStatus>> = vec![None; nproc];
        let mut first_failure: Option<(usize, ExitStatus, Instant)> = None;
        let mut forwarded = interrupts.load(Ordering::SeqCst);
        let mut interrupted = false;
        let mut killed_late = Vec::new();
        let mut stopped = Vec::new();
        while ended.iter().any(Option::is_none) {
            let asked = interrupts.load(Ordering::SeqCst);
            while forwarded < asked {
                forwarded += 1;
                interrupted = true;
                for ((_, child), status) in workers.0.iter().zip(&ended) {
                    if status.is_none() {
                        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
                    }
                }
            }
            for ((rank, child), slot) in workers.0.iter_mut().zip(ended.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                if let Some(status) = child.try_wait().context("waiting for a worker")? {
                    *slot = Some(status);
                    if !status.success() && first_failure.is_none() {
                        first_failure = Some((*rank, status, Instant::now()));
                    }
                }
            }
            if let Some((_, _, at)) = first_failure {
                let late = at.elapsed() > timeout + Duration::from_secs(5);
                for ((rank, child), slot) in workers.0.iter_mut().zip(ended.iter_mut()) {
                    if slot.is_some() {
                        continue;
                    }
                    // A stopped worker never ends by itself: it is what the others
                    // waited for.
                    let frozen = is_stopped(child.id());
                    if frozen || late {
                        let _ = child.kill();
                        *slot = child.wait().ok();
                        if frozen {
                            &mut stopped
                        } else {
                            &mut killed_late
                        }
                        .push(*rank);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let Some((rank, status, _)) = first_failure else {
            return Ok(Attempt::Succeeded);
        };
        let code = exit_code(status);
        let stopped_note = if stopped.is_empty() {
            String::new()
        } else {
            format!(
                "; rank{} {} of {nproc} had been stopped (SIGSTOP or a debugger) and never \
                 answered: the others waited for {}, and it was killed",
                if stopped.len() > 1 { "s" } else { "" },
                stopped
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if stopped.len() > 1 { "them" } else { "it" },
            )
        };
        if interrupted && code == 130 {
            // Interrupted: the workers said so themselves.
            if !stopped_note.is_empty() {
                eprintln!("elbo: the job stopped{stopped_note}");
            }
            return Ok(Attempt::Interrupted);
        }
        eprintln!(
            "elbo: worker of rank {rank} (of {nproc}) {} first; the job stopped{}{stopped_note}",
            describe(status),
            if killed_late.is_empty() {
                String::new()
            } else {
                format!(" (ranks {killed_late:?} did not stop within the timeout and were killed)")
            }
        );
        Ok(Attempt::Failed(code))
    }
}

/// In a worker started by `--nproc`: dies with the launcher (Linux's parent-death
/// signal), so that killing the launcher never leaves workers training on.
pub fn follow_launcher() {
    let Some(pid) = std::env::var(LAUNCHER_PID)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    #[cfg(target_os = "linux")]
    {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    }
    if nix::unistd::getppid().as_raw() != pid {
        // The launcher died before the signal was armed.
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launchers_own_options_are_left_out_of_the_workers_command() {
        let args: Vec<OsString> = [
            "train",
            "vae",
            "--nproc",
            "2",
            "--steps",
            "5",
            "--master-port=29501",
            "--run",
            "r",
            "--max-restarts",
            "2",
            "--resume",
            "--nproc=3",
            "--max-restarts=1",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let kept: Vec<String> = worker_args(&args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            kept,
            ["train", "vae", "--steps", "5", "--run", "r", "--resume"]
        );
    }

    #[test]
    fn statuses_are_described_and_mapped_as_a_shell_would() {
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(describe(exited), "exited with status 3");
        assert_eq!(exit_code(exited), 3);
        let killed = ExitStatus::from_raw(9);
        assert_eq!(describe(killed), "was killed by signal 9 (SIGKILL)");
        assert_eq!(exit_code(killed), 137);
    }
}
