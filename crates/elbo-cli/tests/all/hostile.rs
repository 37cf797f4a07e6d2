//! The failures a long, interrupted, multi-process run meets, as a hostile user would
//! cause them, against the `elbo` binary: two writers on one run folder, kill -9 during
//! checkpoint writes, double Ctrl-C, corrupted weights, and bad options. Each case says
//! what must hold; none may crash, lose a checkpoint or leave a file half-written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{elbo, run, text};

fn args_of(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn spawn(args: &[&str]) -> Child {
    elbo()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("elbo starts")
}

/// Waits (up to a minute) until `ready` holds.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited a minute for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}");
}

/// Every file below `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect()
}

fn checkpoint_json(run: &Path) -> serde_json::Value {
    let newest = files(&run.join("checkpoints"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max()
        .expect("a checkpoint");
    serde_json::from_str(&std::fs::read_to_string(newest).unwrap()).unwrap()
}

/// A second writer on a run folder is refused, naming the first's pid; it writes
/// nothing.
#[test]
fn two_writers_on_one_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("r");
    let r = run_dir.to_str().unwrap();
    let first = spawn(&[
        "train", "vae", "--steps", "100000", "--run", r, "--seed", "0",
    ]);
    wait_for("the first writer's lock", || {
        std::fs::read_to_string(run_dir.join(".lock")).is_ok_and(|t| !t.trim().is_empty())
    });
    let second = run(&["train", "vae", "--steps", "50", "--run", r, "--seed", "1"]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let said = text(&second);
    assert!(
        said.contains(&format!(
            "in use by another training process (pid {})",
            first.id()
        )),
        "{said}"
    );
    // So is a second resume.
    let resume = run(&["train", "vae", "--steps", "50", "--run", r, "--resume"]);
    assert_eq!(resume.status.code(), Some(1), "{}", text(&resume));
    signal(&first, "INT");
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert_eq!(checkpoint_json(&run_dir)["seed"], 0);
}

/// kill -9 while checkpoints are being written every few steps, then --resume: the run
/// ends as an unbroken one does (same tensors, by their digest; same metrics), and no
/// temporary file is left.
#[test]
fn kill_9_during_checkpoint_writes_then_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (broken, whole) = (dir.path().join("broken"), dir.path().join("whole"));
    let args = |run: &Path| -> Vec<String> {
        [
            "train",
            "vae",
            "--steps",
            "300",
            "--batch-size",
            "32",
            "--checkpoint-every",
            "7",
            "--iw",
            "0",
            "--run",
            run.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let broken_args = args(&broken);
    let mut child = spawn(&args_of(&broken_args));
    // Ten checkpoints written (the last three kept): the run is in its middle.
    wait_for("a few checkpoints", || {
        files(&broken.join("checkpoints")).iter().any(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".json") && name.as_ref() >= "step-000000070.json"
        })
    });
    signal(&child, "KILL");
    child.wait().unwrap();
    let mut resume = broken_args.clone();
    resume.push("--resume".into());
    let resumed = run(&args_of(&resume));
    assert!(resumed.status.success(), "{}", text(&resumed));
    let unbroken = run(&args_of(&args(&whole)));
    assert!(unbroken.status.success(), "{}", text(&unbroken));
    assert_eq!(
        checkpoint_json(&broken)["tensors_sha256"],
        checkpoint_json(&whole)["tensors_sha256"]
    );
    assert_eq!(
        std::fs::read_to_string(broken.join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap()
    );
    assert_eq!(temporaries(&broken), Vec::<PathBuf>::new());
}

/// Two Ctrl-C 5 to 300 ms apart, 20 times: never a crash, always exit 130, and every
/// checkpoint left behind verifies.
#[test]
fn double_ctrl_c_exits_130_and_leaves_good_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed spread of gaps between the two signals, in milliseconds.
    let gaps = [
        5, 300, 40, 150, 10, 220, 75, 20, 260, 110, 8, 180, 55, 30, 290, 90, 15, 130, 240, 65,
    ];
    let mut checkpoints = 0;
    for (i, gap) in gaps.into_iter().enumerate() {
        let run_dir = dir.path().join(format!("r{i}"));
        let r = run_dir.to_str().unwrap();
        let child = spawn(&[
            "train",
            "vae",
            "--steps",
            "100000",
            "--checkpoint-every",
            "3",
            "--run",
            r,
        ]);
        wait_for("training to start", || run_dir.join("config.json").exists());
        signal(&child, "INT");
        std::thread::sleep(Duration::from_millis(gap));
        // The process may have ended already (it stops after its step).
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "gap {gap} ms: {}", text(&out));
        // A second Ctrl-C during the first checkpoint's write leaves only its
        // temporary files; every checkpoint under its final name verifies.
        let complete = files(&run_dir.join("checkpoints"))
            .into_iter()
            .any(|p| p.extension().is_some_and(|e| e == "json"));
        if complete {
            let check = run(&["eval", r, "--examples", "8", "--iw", "0", "--device", "cpu"]);
            assert!(check.status.success(), "gap {gap} ms: {}", text(&check));
            checkpoints += 1;
        }
    }
    eprintln!("{checkpoints} of 20 runs left a checkpoint");
    // The first Ctrl-C writes a checkpoint after its step: with gaps up to 300 ms, most
    // runs have one (seen here: 15 of 20, three times).
    assert!(
        checkpoints >= 5,
        "only {checkpoints} of 20 runs left a checkpoint"
    );
}

/// Weights changed after writing are refused by eval and sample, naming both digests.
#[test]
fn corrupted_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r");
    let trained = run(&[
        "train",
        "vae",
        "--steps",
        "3",
        "--iw",
        "0",
        "--run",
        r.to_str().unwrap(),
    ]);
    assert!(trained.status.success(), "{}", text(&trained));
    let tensors = r.join("checkpoints/step-000000003.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 200..n - 150] {
        *b = b.wrapping_add(77);
    }
    std::fs::write(&tensors, bytes).unwrap();
    for args in [
        vec!["eval", r.to_str().unwrap(), "--iw", "0"],
        vec!["sample", r.to_str().unwrap(), "--out", "/dev/null"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("changed or damaged"), "{}", text(&out));
    }
}

/// Bad option values are refused before anything is written, each with its range.
#[test]
fn bad_options_are_refused_with_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "NaN"], "lr must be positive and finite"),
        (&["--cosine-to", "2"], "must be in [0, 1], found 2"),
        (&["--cosine-to", "NaN"], "must be in [0, 1], found NaN"),
        (&["--weight-decay", "NaN"], "weight_decay must be in [0, 1)"),
        (&["--steps", "0"], "steps must be at least 1"),
        (&["--epochs", "0"], "steps must be at least 1"),
        (
            &["--warmup", "18446744073709551615"],
            "warmup_steps must be at most",
        ),
        (
            &["--epochs", "18446744073709551615"],
            "overflow the step count",
        ),
        (&["--threads", "100000"], "between 1 and 1024"),
        (&["--batch-size", "0"], "at least 1, found 0"),
        (&["--ema", "1.5"], "ema_decay must be in [0, 1)"),
        (&["--clip=-1"], "clip_grad_norm must be positive"),
        (&["--free-bits", "NaN"], "free_bits must be"),
        (&["--likelihood", "gaussian"], "expected bernoulli"),
        (&["--allow-changes"], "--resume"),
    ];
    for (i, (options, expected)) in cases.iter().enumerate() {
        let run_dir = dir.path().join(format!("r{i}"));
        let mut args = vec!["train", "vae", "--run", run_dir.to_str().unwrap()];
        args.extend_from_slice(options);
        let out = run(&args);
        assert!(!out.status.success(), "{options:?} was accepted");
        assert!(text(&out).contains(expected), "{options:?}: {}", text(&out));
        assert!(
            !run_dir.join("checkpoints").exists() && !run_dir.join("metrics.jsonl").exists(),
            "{options:?} wrote into the run folder"
        );
    }
    // Diffusion steps bounded where they still mean something (10^9 was killed for
    // memory; a VDM's bound at 10^8 collapsed to 0.03 bits/dim).
    for (family, steps, expected) in [
        (
            "ddpm",
            "1000000000",
            "a DDPM has 1 to 100000 steps, found 1000000000",
        ),
        (
            "vdm",
            "100000000",
            "at most 16777216 (2^24) steps, found 100000000",
        ),
    ] {
        let run_dir = dir.path().join(family);
        let out = run(&[
            "train",
            family,
            "--timesteps",
            steps,
            "--run",
            run_dir.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{family}: {}", text(&out));
        assert!(text(&out).contains(expected), "{family}: {}", text(&out));
        assert!(!run_dir.join("checkpoints").exists());
    }
    // Contradictory learned-variance settings are refused naming what is allowed.
    for (options, expected) in [
        (
            &["--variance", "learned-range"][..],
            "use --loss hybrid (L_simple + 0.001 L_vlb, improved DDPM's) or --loss vlb",
        ),
        (
            &["--variance", "learned-range", "--loss", "simple"][..],
            "learned variances are trained by the bound",
        ),
        (
            &["--loss", "hybrid"][..],
            "use --variance learned-range with it",
        ),
        (
            &[
                "--variance",
                "learned-range",
                "--loss",
                "vlb",
                "--hybrid-weight",
                "0.01",
            ][..],
            "add --loss hybrid or leave it out",
        ),
        (
            &[
                "--variance",
                "learned-range",
                "--loss",
                "hybrid",
                "--hybrid-weight=-1",
            ][..],
            "--hybrid-weight must be a positive number",
        ),
    ] {
        let run_dir = dir.path().join("learned");
        let mut args = vec!["train", "ddpm", "--run", run_dir.to_str().unwrap()];
        args.extend_from_slice(options);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{options:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{options:?}: {}", text(&out));
        assert!(!run_dir.join("checkpoints").exists());
    }
    for (options, expected) in [
        (
            &["--schedule", "fixed", "--schedule-lr", "10"][..],
            "this one is fixed",
        ),
        (&["--schedule-lr", "0"][..], "must be positive, found 0"),
    ] {
        let run_dir = dir.path().join("vdm-lr");
        let mut args = vec!["train", "vdm", "--run", run_dir.to_str().unwrap()];
        args.extend_from_slice(options);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{options:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{options:?}: {}", text(&out));
    }
    for args in [
        vec!["sample", "runs/none", "--n", "0"],
        vec!["sample", "runs/none", "--sampler", "heun-18-tmin=0.1"],
        vec!["sample", "runs/none", "--sampler", "ddim-50-churn=40"],
        vec!["sample", "runs/none", "--interpolate", "1"],
        vec!["sample", "runs/none", "--sampler", "ddim-x"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
}

/// Errors about files name the file and say what was expected.
#[test]
fn file_errors_name_the_path_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let tensors = dir.path().join("step-000000001.safetensors");
    std::fs::write(&tensors, b"not tensors").unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![
                "train",
                "vae",
                "--steps",
                "2",
                "--run",
                file.to_str().unwrap(),
            ],
            format!("{} is a file: expected a folder", file.display()),
        ),
        (
            vec!["train", "vae", "--steps", "2", "--run", "/proc/elbo/x"],
            "run folder /proc/elbo/x: No such file or directory".to_string(),
        ),
        (
            vec!["eval", tensors.to_str().unwrap()],
            "is not a checkpoint's JSON file: expected a run folder".to_string(),
        ),
        (
            vec!["eval", dir.path().to_str().unwrap()],
            "holds no checkpoint: expected a run folder".to_string(),
        ),
    ];
    for (args, expected) in cases {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(&expected), "{args:?}: {}", text(&out));
    }
}

/// Ctrl-C during the final evaluation (a slow IWAE bound) stops it: exit 130 within
/// seconds, with the checkpoint already written and named.
#[test]
fn ctrl_c_during_the_final_evaluation_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("r");
    let child = spawn(&[
        "train",
        "vae",
        "--steps",
        "3",
        "--iw",
        "100000",
        "--run",
        run_dir.to_str().unwrap(),
    ]);
    wait_for("the final checkpoint", || {
        run_dir.join("checkpoints/step-000000003.json").exists()
    });
    // The IWAE-100000 bound on 1,000 images takes minutes: the signal lands in it.
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        text(&out).contains("interrupted during the final evaluation"),
        "{}",
        text(&out)
    );
}

/// The worker processes `--nproc` started from the launcher `launcher`, by rank (read
/// from their environment).
fn workers_of(launcher: &Child) -> Vec<(usize, u32)> {
    let children = format!("/proc/{0}/task/{0}/children", launcher.id());
    let mut out: Vec<(usize, u32)> = std::fs::read_to_string(children)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let rank = env
                .split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"RANK="))?;
            Some((std::str::from_utf8(rank).ok()?.parse().ok()?, pid))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Waits for `launcher`'s job to write its first checkpoint into `run_dir`, then sends
/// rank 1 the signal `name` (`9`, `STOP`, ...); returns the workers (rank, pid).
fn signal_rank_1_after_a_checkpoint(
    launcher: &Child,
    run_dir: &Path,
    name: &str,
) -> Vec<(usize, u32)> {
    wait_for("a first checkpoint", || {
        files(&run_dir.join("checkpoints"))
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "json"))
    });
    let workers = workers_of(launcher);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let sent = Command::new("kill")
        .args([format!("-{name}"), workers[1].1.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name}");
    workers
}

/// `--nproc 2` end to end: the two workers train one run (rank 0 writes it, the
/// checkpoint says 2 processes), the launcher reports as one process would, and a batch
/// that does not divide among the processes is refused with the numbers.
#[test]
fn nproc_2_trains_one_run_and_refuses_an_indivisible_batch() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("r");
    let r = run_dir.to_str().unwrap();
    let out = run(&[
        "train",
        "vae",
        "--steps",
        "12",
        "--batch-size",
        "32",
        "--run",
        r,
        "--nproc",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert_eq!(
        said.matches("checkpoint ").count(),
        1,
        "only rank 0 reports: {said}"
    );
    assert_eq!(checkpoint_json(&run_dir)["world_size"], 2);
    assert_eq!(checkpoint_json(&run_dir)["step"], 12);
    // Rank 0 alone writes TensorBoard's event file.
    let events = files(&run_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .count();
    assert_eq!(events, 1);
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let mut steps: Vec<u64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .filter_map(|v| v["step"].as_u64())
        .collect();
    let logged = steps.len();
    steps.dedup();
    assert!(
        logged > 0 && steps.len() == logged,
        "each step written once: {metrics}"
    );

    let odd = run(&[
        "train",
        "vae",
        "--steps",
        "2",
        "--batch-size",
        "33",
        "--run",
        dir.path().join("odd").to_str().unwrap(),
        "--nproc",
        "2",
    ]);
    assert_eq!(odd.status.code(), Some(1), "{}", text(&odd));
    assert!(
        text(&odd).contains("--batch-size 33 is the global batch and does not divide among 2"),
        "{}",
        text(&odd)
    );
    // Under a launcher that set the variables already, --nproc is a mistake.
    let nested = elbo()
        .args(["train", "vae", "--steps", "2", "--nproc", "2"])
        .envs([
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "1"),
        ])
        .output()
        .unwrap();
    assert_eq!(nested.status.code(), Some(1), "{}", text(&nested));
    assert!(
        text(&nested).contains("leave --nproc out"),
        "{}",
        text(&nested)
    );
}

/// A worker killed with kill -9: the other one stops with c10d's error, the launcher
/// names the lost rank and exits with its status (137) well within the timeout; then
/// Ctrl-C (or SIGTERM) to a healthy job: one checkpoint (rank 0's), every process exits
/// with 130.
#[test]
fn a_killed_worker_ends_the_job_and_ctrl_c_stops_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["kill", "ctrl-c", "sigterm"] {
        let run_dir = dir.path().join(case);
        let r = run_dir.to_str().unwrap();
        let launcher = spawn(&[
            "train",
            "vae",
            "--steps",
            "1000000",
            "--batch-size",
            "32",
            "--checkpoint-every",
            "50",
            "--run",
            r,
            "--nproc",
            "2",
            "--dist-timeout",
            "20",
        ]);
        wait_for("a first checkpoint", || {
            files(&run_dir.join("checkpoints"))
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "json"))
        });
        let workers = workers_of(&launcher);
        assert_eq!(workers.len(), 2, "{workers:?}");
        let started = Instant::now();
        if case == "kill" {
            let killed = Command::new("kill")
                .args(["-9", &workers[1].1.to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
        } else if case == "ctrl-c" {
            signal(&launcher, "INT");
        } else {
            // A cluster's preemption: SIGTERM stops the job as Ctrl-C does.
            signal(&launcher, "TERM");
        }
        let out = launcher.wait_with_output().unwrap();
        let said = text(&out);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{case}: the job took {:?} to stop",
            started.elapsed()
        );
        for (_, pid) in &workers {
            assert!(
                !Path::new(&format!("/proc/{pid}/environ")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| s.contains(") Z ")),
                "{case}: worker {pid} is still running"
            );
        }
        if case == "kill" {
            assert_eq!(out.status.code(), Some(137), "{said}");
            assert!(
                said.contains("worker of rank 1 (of 2) was killed by signal 9 (SIGKILL) first"),
                "{said}"
            );
            assert!(said.contains("rank 0 of 2"), "rank 0's own error: {said}");
        } else {
            assert_eq!(out.status.code(), Some(130), "{said}");
            assert_eq!(said.matches("interrupted after step").count(), 1, "{said}");
            let step = checkpoint_json(&run_dir)["step"].as_u64().unwrap();
            assert!(
                said.contains(&format!("interrupted after step {step}")),
                "{said}"
            );
            assert!(temporaries(&run_dir).is_empty());
        }
    }
}

/// A run's `config.json` emptied, garbled or edited to another model is refused by
/// eval, plot and --resume, which leave it as it is; deleted, it is written again by
/// the resume (from the checkpoint), byte for byte as the run began.
#[test]
fn an_edited_config_json_is_refused_and_a_deleted_one_restored() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("r");
    let r = run_dir.to_str().unwrap();
    let out = run(&["train", "vae", "--steps", "2", "--iw", "0", "--run", r]);
    assert!(out.status.success(), "{}", text(&out));
    let config = run_dir.join("config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    let edits = [
        (
            r#"{"model": "ddpm", "model_config": {}, "train_config": {}}"#.to_string(),
            "the checkpoint holds a vae, config.json says ddpm",
        ),
        (
            original.replace("\"latent_dim\": 20", "\"latent_dim\": 10"),
            "model_config.latent_dim: the checkpoint has 20, config.json 10",
        ),
        ("{oops".to_string(), "found text that does not parse"),
        (String::new(), "found an empty file"),
    ];
    for (edit, expected) in edits {
        assert_ne!(edit, original);
        std::fs::write(&config, &edit).unwrap();
        for args in [
            vec!["eval", r],
            vec!["plot", r],
            vec![
                "train", "vae", "--steps", "3", "--iw", "0", "--resume", "--run", r,
            ],
        ] {
            let out = run(&args);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
            assert!(text(&out).contains(expected), "{args:?}: {}", text(&out));
            assert_eq!(std::fs::read_to_string(&config).unwrap(), edit);
        }
    }
    std::fs::remove_file(&config).unwrap();
    let out = run(&[
        "train", "vae", "--steps", "3", "--iw", "0", "--resume", "--run", r,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
}

/// A tmpfs of a given size mounted on a temporary folder, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` (said on stderr) where mounting is not allowed (it needs root).
    fn mount(kib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("not run: mounting a tmpfs needs root");
        }
        mounted.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A full disk (a 600 KiB tmpfs: the VAE's tensors take 7.8 MB) fails the checkpoint
/// naming the file and the operating system's reason, and leaves no part of it.
#[test]
fn a_full_disk_names_the_file_and_leaves_nothing_half_written() {
    let Some(disk) = Tmpfs::mount(600) else {
        return;
    };
    let run_dir = disk.0.path().join("r");
    let out = run(&[
        "train",
        "vae",
        "--steps",
        "3",
        "--run",
        run_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let expected = format!(
        "error: cannot write {}: No space left on device (os error 28)",
        run_dir
            .join("checkpoints/step-000000003.safetensors")
            .display()
    );
    assert!(text(&out).contains(&expected), "{}", text(&out));
    assert_eq!(files(&run_dir.join("checkpoints")), Vec::<PathBuf>::new());
}

/// A `--nproc 2` job on a run folder of `dir`, 1e6 steps, checkpoints every 50.
fn long_job(run_dir: &Path, extra: &[&str]) -> Child {
    let mut args = vec![
        "train",
        "vae",
        "--steps",
        "1000000",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "50",
        "--run",
        run_dir.to_str().unwrap(),
        "--nproc",
        "2",
    ];
    args.extend_from_slice(extra);
    spawn(&args)
}

/// A worker stopped with SIGSTOP: the other gives up at --dist-timeout and the
/// launcher names the stopped rank as the cause (not the healthy one that timed out);
/// with a day's timeout, a SIGTERM ends the job stuck waiting for it within seconds
/// (the waiting process gives up 10 s after the request), exit 130.
#[test]
fn a_stopped_worker_is_named_and_a_stop_ends_the_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    for (case, timeout) in [("timeout", "3"), ("sigterm", "86400")] {
        let run_dir = dir.path().join(case);
        let launcher = long_job(&run_dir, &["--dist-timeout", timeout]);
        signal_rank_1_after_a_checkpoint(&launcher, &run_dir, "STOP");
        let started = Instant::now();
        if case == "sigterm" {
            signal(&launcher, "TERM");
        }
        let out = launcher.wait_with_output().unwrap();
        let said = text(&out);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{case}: the job took {:?} to stop: {said}",
            started.elapsed()
        );
        assert!(
            said.contains("rank 1 of 2 had been stopped (SIGSTOP or a debugger)"),
            "{case}: {said}"
        );
        if case == "sigterm" {
            assert_eq!(out.status.code(), Some(130), "{said}");
            assert!(
                said.contains("in all-reduce for the other processes"),
                "{said}"
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{said}");
            assert!(said.contains("worker of rank 0 (of 2) exited"), "{said}");
        }
        assert!(temporaries(&run_dir).is_empty(), "{case}");
    }
}

/// `--max-restarts 1 --resume`: a worker killed with kill -9 after the first
/// checkpoint, the launcher starts the job again, it resumes, and the final weights,
/// Adam's moments and all are byte-identical to an unbroken run's. Without --resume
/// the option is refused; a batch that cannot divide is refused once, before any
/// worker starts.
#[test]
fn max_restarts_resumes_a_killed_job_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let job = |name: &str, extra: &[&str]| {
        let run_dir = dir.path().join(name);
        let mut args = vec![
            "train",
            "vae",
            "--steps",
            "200",
            "--batch-size",
            "32",
            "--checkpoint-every",
            "50",
            "--run",
            run_dir.to_str().unwrap(),
            "--nproc",
            "2",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        (run_dir, args)
    };
    let (unbroken, args) = job("unbroken", &[]);
    let out = run(&args_of(&args));
    assert!(out.status.success(), "{}", text(&out));
    let (restarted, args) = job("restarted", &["--max-restarts", "1", "--resume"]);
    let launcher = spawn(&args_of(&args));
    signal_rank_1_after_a_checkpoint(&launcher, &restarted, "9");
    let out = launcher.wait_with_output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("worker of rank 1 (of 2) was killed by signal 9 (SIGKILL) first")
            && said.contains("restarting the job from its newest checkpoint (restart 1 of 1)"),
        "{said}"
    );
    let (a, b) = (checkpoint_json(&unbroken), checkpoint_json(&restarted));
    assert_eq!(a["step"], 200);
    assert_eq!(a["tensors_sha256"], b["tensors_sha256"], "{said}");

    let (_, args) = job("no-resume", &["--max-restarts", "1"]);
    let out = run(&args_of(&args));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("add --resume"), "{}", text(&out));
    let odd = dir.path().join("odd");
    let out = run(&[
        "train",
        "vae",
        "--batch-size",
        "33",
        "--nproc",
        "64",
        "--run",
        odd.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        text(&out)
            .matches("does not divide among 64 processes")
            .count(),
        1,
        "{}",
        text(&out)
    );
    assert!(!odd.exists(), "a worker started");
}

/// `elbo eval` and `elbo sample` end at once on SIGTERM or Ctrl-C, with exit 130 and a
/// word that they wrote nothing (before, SIGTERM killed them silently with 143).
#[test]
fn sigterm_or_ctrl_c_ends_eval_and_sample_with_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("r");
    let r = run_dir.to_str().unwrap();
    let out = run(&["train", "vae", "--steps", "2", "--iw", "0", "--run", r]);
    assert!(out.status.success(), "{}", text(&out));
    let grid = dir.path().join("grid.png");
    for (args, name, what) in [
        (vec!["eval", r, "--iw", "5000"], "TERM", "the evaluation"),
        (
            vec![
                "sample",
                r,
                "--n",
                "100000",
                "--out",
                grid.to_str().unwrap(),
            ],
            "INT",
            "sampling",
        ),
    ] {
        let child = spawn(&args);
        // Once its handler is in place (SIGINT and SIGTERM caught, in /proc's SigCgt
        // mask), the command is in its work, seconds before it writes anything.
        let status = format!("/proc/{}/status", child.id());
        wait_for("the signal handler", || {
            std::fs::read_to_string(&status)
                .ok()
                .and_then(|s| {
                    let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
                    u64::from_str_radix(mask.trim(), 16).ok()
                })
                .is_some_and(|mask| mask & (1 << 1) != 0 && mask & (1 << 14) != 0)
        });
        let started = Instant::now();
        signal(&child, name);
        let out = child.wait_with_output().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?}");
        assert_eq!(out.status.code(), Some(130), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("interrupted: {what} stopped; it wrote nothing")),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert!(!grid.exists());
    assert!(temporaries(dir.path()).is_empty());
}

/// Two ranks started by hand (as another launcher would) with different options: both
/// refuse, and the one that differs names the option with both values.
#[test]
fn ranks_with_different_options_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("r");
    let port = crate::common::free_port();
    let ranks: Vec<Child> = ["0.001", "0.002"]
        .iter()
        .enumerate()
        .map(|(rank, lr)| {
            elbo()
                .args(["train", "vae", "--steps", "2", "--lr", lr, "--run"])
                .arg(&run_dir)
                .envs([
                    ("RANK", rank.to_string()),
                    ("WORLD_SIZE", "2".to_string()),
                    ("MASTER_ADDR", "127.0.0.1".to_string()),
                    ("MASTER_PORT", port.clone()),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let said: Vec<String> = ranks
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            text(&out)
        })
        .collect();
    for s in &said {
        assert!(s.contains("rank 1 differs from rank 0"), "{s}");
    }
    assert!(
        said[1].contains("(rank 1: train_config.lr: rank 0 has 0.001, this rank 0.002)"),
        "{}",
        said[1]
    );
}
