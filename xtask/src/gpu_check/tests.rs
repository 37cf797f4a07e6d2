//! Tests of the GPU check that need no GPU: its arguments, nvidia-smi's probe (missing,
//! failing, listing GPUs), the plan, the report's markdown (written after every step),
//! skips and tests not run, the command runner's time limit and tail, the
//! tensor-by-tensor comparison of checkpoints, `elbo info`'s CUDA line and the training
//! run's checks.

use super::*;
use clap::Parser;
use std::process::Command;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: GpuCheckArgs,
}

#[test]
fn the_arguments_default_to_the_first_gpu_and_200_steps() {
    let cli = Cli::try_parse_from(["gpu-check"]).unwrap();
    assert_eq!(cli.args.device, "cuda:0");
    assert_eq!(cli.args.steps, 200);
    assert_eq!(cli.args.out, PathBuf::from("target/gpu-check"));
    assert!(!cli.args.no_pytorch);
    let cli = Cli::try_parse_from([
        "gpu-check",
        "--device",
        "cuda:1",
        "--steps",
        "20",
        "--no-pytorch",
    ])
    .unwrap();
    assert_eq!((cli.args.device.as_str(), cli.args.steps), ("cuda:1", 20));
    assert!(cli.args.no_pytorch);
}

#[test]
fn the_cpu_and_one_step_are_refused() {
    let err = Cli::try_parse_from(["gpu-check", "--device", "cpu"]).unwrap_err();
    assert!(err.to_string().contains("runs on a CUDA device"), "{err}");
    let err = Cli::try_parse_from(["gpu-check", "--device", "gpu0"]).unwrap_err();
    assert!(
        err.to_string().contains("expected cpu, cuda or cuda:N"),
        "{err}"
    );
    let err = Cli::try_parse_from(["gpu-check", "--steps", "1"]).unwrap_err();
    assert!(err.to_string().contains("--steps"), "{err}");
}

#[test]
fn without_nvidia_smi_there_is_no_gpu_and_the_check_does_nothing() {
    let probe = probe("/nonexistent/nvidia-smi");
    let GpuProbe::NoGpu(why) = &probe else {
        panic!("{probe:?}")
    };
    assert!(why.contains("could not be run"), "{why}");
    let ws = tempfile::tempdir().unwrap();
    let cli = Cli::try_parse_from(["gpu-check"]).unwrap();
    run(ws.path(), &cli.args, probe).unwrap();
    // Nothing was done: not even the report's folder.
    assert_eq!(std::fs::read_dir(ws.path()).unwrap().count(), 0);
}

#[test]
fn nvidia_smi_failing_or_listing_nothing_is_no_gpu_and_its_lines_are_the_gpus() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let failing = fake("failing", "echo 'NVIDIA-SMI has failed' >&2; exit 9");
    let GpuProbe::NoGpu(why) = probe(&failing) else {
        panic!("a failing nvidia-smi is no GPU")
    };
    assert!(why.contains("NVIDIA-SMI has failed"), "{why}");
    let empty = fake("empty", "exit 0");
    assert_eq!(
        probe(&empty),
        GpuProbe::NoGpu(format!("{empty} lists no GPU"))
    );
    let two = fake(
        "two",
        "echo 'NVIDIA H100 80GB HBM3, 81559 MiB, 580.65'; echo ''; \
         echo 'NVIDIA H100 80GB HBM3, 81559 MiB, 580.65'",
    );
    let GpuProbe::Gpus(gpus) = probe(&two) else {
        panic!("two GPUs")
    };
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0], "NVIDIA H100 80GB HBM3, 81559 MiB, 580.65");
}

fn step(name: &str, outcome: Outcome, details: &[&str]) -> Step {
    Step {
        name: name.into(),
        outcome,
        seconds: 12.4,
        estimate: 30.0,
        details: details.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn the_report_lists_every_step_with_its_result_and_keeps_the_details() {
    let mut report = CheckReport {
        gpus: vec!["NVIDIA A100, 40960 MiB, 550.1".into()],
        device: "cuda:0".into(),
        commit: Some("abc1234".into()),
        steps: vec![
            step("build", Outcome::Passed, &[]),
            step(
                "train",
                Outcome::Passed,
                &["loss 1.0 at step 1 -> 0.1 at step 200"],
            ),
            step("bench", Outcome::Skipped("--no-pytorch".into()), &[]),
        ],
        plan: vec![],
        environment: vec!["torch 2.13.0".into()],
        bench: None,
    };
    assert!(report.passed());
    let md = markdown(&report);
    assert!(
        md.starts_with("# elbo GPU check\n\nDevice cuda:0; commit abc1234;"),
        "{md}"
    );
    assert!(md.contains("- NVIDIA A100, 40960 MiB, 550.1\n"));
    assert!(
        md.contains("Result: **every step passed** (3 of 3 steps run)"),
        "{md}"
    );
    assert!(md.contains("| build | passed | 12 | 30 |\n"));
    assert!(md.contains("| bench | skipped: --no-pytorch | 12 | 30 |\n"));
    assert!(md.contains("\n## Environment\n\n```\ntorch 2.13.0\n```\n"));
    assert!(md.contains("\n## train\n\n```\nloss 1.0 at step 1 -> 0.1 at step 200\n```\n"));
    assert!(
        !md.contains("## build"),
        "a step without details has no section"
    );
    report.steps.push(step(
        "resume",
        Outcome::Failed("two | three\nsecond line".into()),
        &[],
    ));
    report.bench = Some("| case | ... |\n".into());
    assert!(!report.passed());
    let md = markdown(&report);
    assert!(md.contains("Result: **a step failed**"));
    // One line per cell, no pipes that would break the table.
    assert!(
        md.contains("| resume | **failed**: two / three | 12 | 30 |\n"),
        "{md}"
    );
    assert!(md.ends_with("\n## CUDA bench against PyTorch\n\n| case | ... |\n"));
}

#[test]
fn cuda_is_available_only_when_elbo_info_says_yes() {
    let without = "elbo 0.1.0\nCUDA available  no (0 device(s))\ncuDNN available no\n";
    assert!(!cuda_available(without));
    let with = "elbo 0.1.0\nCUDA available  yes (2 device(s))\ncuDNN available yes\n";
    assert!(cuda_available(with));
    assert!(!cuda_available("cuDNN available yes\n"));
}

#[test]
fn a_run_passes_when_its_loss_fell_and_a_checkpoint_exists() {
    let run = tempfile::tempdir().unwrap();
    let metrics = run.path().join("metrics.jsonl");
    std::fs::write(
        &metrics,
        concat!(
            r#"{"kind":"start","steps":200}"#,
            "\n",
            r#"{"kind":"step","step":1,"loss":1.25}"#,
            "\n",
            r#"{"kind":"step","step":200,"loss":0.0625}"#,
            "\n"
        ),
    )
    .unwrap();
    let checkpoints = run.path().join("checkpoints");
    std::fs::create_dir(&checkpoints).unwrap();
    let err = loss_falls(run.path()).unwrap_err();
    assert!(err.to_string().contains("no checkpoint"), "{err}");
    // Where the trainer writes them (train::checkpoint), not the run folder itself.
    std::fs::write(run.path().join("step-000000200.safetensors"), b"x").unwrap();
    assert!(loss_falls(run.path()).is_err());
    std::fs::write(checkpoints.join("step-000000200.safetensors"), b"x").unwrap();
    let details = loss_falls(run.path()).unwrap();
    assert_eq!(details[0], "loss 1.2500 at step 1 -> 0.0625 at step 200");
    std::fs::write(
        &metrics,
        concat!(
            r#"{"kind":"step","step":1,"loss":1.0}"#,
            "\n",
            r#"{"kind":"step","step":200,"loss":1.5}"#,
            "\n"
        ),
    )
    .unwrap();
    let err = loss_falls(run.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the loss did not fall: 1 at step 1, 1.5 at step 200"
    );
}

#[test]
fn the_plan_names_every_step_and_quick_leaves_out_what_can_wait() {
    let full = Cli::try_parse_from(["gpu-check"]).unwrap().args;
    let quick = Cli::try_parse_from(["gpu-check", "--quick"]).unwrap().args;
    let names = |args: &GpuCheckArgs| plan(args).iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(names(&full).len(), 9);
    assert_eq!(
        names(&quick),
        [SETUP, BUILD, CUDA_TESTS, TRAIN, RESUME, BENCH],
        "quick: the build, the cuda tests, training with resume, the bench's case"
    );
    let seconds = |args: &GpuCheckArgs| -> f64 {
        plan(args)
            .iter()
            .filter(|p| p.name != SETUP)
            .map(|p| p.estimate.as_secs_f64())
            .sum()
    };
    assert!(seconds(&quick) <= 600.0, "{}", seconds(&quick));
    assert!(seconds(&full) > seconds(&quick));
    for p in plan(&full) {
        assert!(p.limit > p.estimate, "{p:?}");
    }
    let no_pytorch = Cli::try_parse_from(["gpu-check", "--no-pytorch"])
        .unwrap()
        .args;
    assert!(!names(&no_pytorch).contains(&BENCH));
}

#[test]
fn a_report_in_progress_lists_the_steps_to_come_and_tests_not_run() {
    let report = CheckReport {
        gpus: vec!["GPU".into()],
        device: "cuda:0".into(),
        commit: None,
        environment: vec![],
        steps: vec![step(
            "cuda-tests suite",
            Outcome::NotRun(
                "two_ranks_on_two_gpus_with_nccl: 1 GPU(s) here, 2 needed: not run".into(),
            ),
            &[],
        )],
        plan: vec![("cuda-tests suite".into(), 30.0), ("train".into(), 60.0)],
        bench: None,
    };
    assert!(report.passed(), "a test not run is not a failure");
    let md = markdown(&report);
    assert!(
        md.contains("in progress: every step so far passed** (1 of 2 steps run)"),
        "{md}"
    );
    assert!(
        md.contains("| cuda-tests suite | not run: two_ranks_on_two_gpus_with_nccl"),
        "{md}"
    );
    assert!(md.contains("| train | to come | - | 60 |\n"), "{md}");
}

fn check<'a>(ws: &'a Path, out: &'a Path, args: &'a GpuCheckArgs) -> Check<'a> {
    Check {
        ws,
        args,
        out,
        plan: plan(args),
        data: "mnist-sample",
        gpus: 1,
    }
}

#[test]
fn each_step_writes_the_report_and_a_skip_or_a_test_not_run_is_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let args = Cli::try_parse_from(["gpu-check"]).unwrap().args;
    let check = check(dir.path(), dir.path(), &args);
    let mut report = CheckReport {
        gpus: vec![],
        device: "cuda:0".into(),
        commit: None,
        environment: vec![],
        steps: vec![],
        plan: vec![],
        bench: None,
    };
    let fetched = check.step(&mut report, CIFAR, |_| {
        Err(
            Skip("CIFAR-10 could not be fetched, so the runs train on the bundled MNIST".into())
                .into(),
        )
    });
    assert!(!fetched);
    assert!(
        matches!(&report.steps[0].outcome, Outcome::Skipped(why) if why.contains("bundled MNIST"))
    );
    assert!(report.passed(), "a fallback is not a failure");
    let written = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        written.contains("skipped: CIFAR-10 could not be fetched"),
        "{written}"
    );

    let tests = check.step(&mut report, CUDA_TESTS, |_| {
        Ok(Found {
            details: vec!["test result: ok. 4 passed".into()],
            not_run: vec!["two GPUs: not run".into()],
        })
    });
    assert!(!tests);
    assert_eq!(
        report.steps[1].outcome,
        Outcome::NotRun("two GPUs: not run".into())
    );
    let failed = check.step(&mut report, TRAIN, |_| {
        bail!("the loss did not fall\nline two")
    });
    assert!(!failed && !report.passed());
    assert_eq!(report.steps[2].details, ["line two"]);
    let written = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        written.contains("**failed**: the loss did not fall"),
        "{written}"
    );
}

#[test]
fn a_command_past_its_limit_is_stopped_with_what_it_started_and_its_tail_is_kept() {
    let mut command = Command::new("sh");
    command.args([
        "-c",
        "for i in $(seq 1 40); do echo line $i; done; echo oops >&2; exit 3",
    ]);
    let ran = runner::run(&mut command, Duration::from_secs(30), false).unwrap();
    assert!(!ran.succeeded());
    assert_eq!(ran.lines.len(), 41);
    assert_eq!(ran.tail.len(), runner::TAIL_LINES);
    // Standard output and error are read side by side: the tail is the last lines read.
    assert!(ran.lines.contains(&"oops".to_string()));
    assert!(
        ran.failure("sh", Duration::from_secs(30))
            .contains("exit status: 3")
    );

    // A child that starts a grandchild: both are stopped at the limit.
    let marker = tempfile::tempdir().unwrap();
    let flag = marker.path().join("still-running");
    let mut command = Command::new("sh");
    command.args([
        "-c",
        &format!(
            "echo started; (sleep 3; touch {}) & sleep 30",
            flag.display()
        ),
    ]);
    let started = Instant::now();
    let ran = runner::run(&mut command, Duration::from_millis(500), false).unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(ran.status.is_none());
    assert_eq!(ran.lines, ["started"]);
    assert!(
        ran.failure("sh", Duration::from_secs(1))
            .contains("did not finish within")
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(!flag.exists(), "the grandchild was stopped with its group");

    let lines: Vec<String> = [
        "test a ... ok",
        "two_gpus: 1 GPU(s) here, 2 needed: not run",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(not_run(&lines), [lines[1].clone()]);
}

fn write_checkpoint(path: &Path, tensors: &[(&str, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, values)| {
            (
                name.to_string(),
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![values.len()],
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, data, shape)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn checkpoints_are_compared_tensor_by_tensor_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let state = |m: f32| {
        vec![
            ("model.w", vec![1.0, 2.0, f32::NAN]),
            ("adam.m.w", vec![0.5, m]),
            ("ema.w", vec![1.0, 2.0, 3.0]),
        ]
    };
    write_checkpoint(&a, &state(0.25));
    write_checkpoint(&b, &state(0.25));
    let same = compare(&a, &b).unwrap();
    assert!(same.identical(), "{same:?}");
    assert_eq!(same.tensors, 3);
    write_checkpoint(&b, &state(0.75));
    let different = compare(&a, &b).unwrap();
    assert!(!different.identical());
    assert_eq!(different.largest["adam"], (0.5, "adam.m.w".to_string()));
    assert_eq!(
        different.largest["model"].0, 0.0,
        "NaN against NaN is no difference"
    );
    assert!(
        different
            .lines()
            .iter()
            .any(|l| l.contains("adam: largest |difference| 5e-1 (in adam.m.w)"))
    );
    write_checkpoint(&b, &[("model.w", vec![1.0, 2.0, 3.0])]);
    let err = compare(&a, &b).unwrap_err().to_string();
    assert!(
        err.contains("hold different tensors") && err.contains("ema.w"),
        "{err}"
    );
    write_checkpoint(
        &b,
        &[
            ("model.w", vec![1.0, 2.0, 3.0]),
            ("adam.m.w", vec![0.5, 0.25]),
            ("ema.w", vec![1.0, 2.0, 3.0]),
        ],
    );
    let nan = compare(&a, &b).unwrap();
    assert!(
        nan.largest["model"].0.is_infinite(),
        "a NaN against a number is a difference"
    );
}

#[test]
fn the_cuda_tests_build_and_run_in_the_release_profile() {
    let build = cuda_tests(&["--no-run"]);
    assert_eq!(&build[..3], ["test", "--release", "--no-run"]);
    let run = cuda_tests(&[]);
    assert_eq!(&run[..2], ["test", "--release"]);
    assert!(run.windows(2).any(|w| w == ["--features", "cuda-tests"]));
    assert!(run.windows(2).any(|w| w == ["--test", "parallel"]));
    assert_eq!(build.len(), run.len() + 1);
}

/// The two-GPU step: skipped with one GPU or without NCCL in the build (neither a
/// failure nor a pass), and its verdict read from what `elbo train` prints.
#[test]
fn the_nccl_run_is_skipped_without_two_gpus_or_nccl_and_reads_the_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let args = Cli::try_parse_from(["gpu-check"]).unwrap().args;
    let mut check = check(dir.path(), dir.path(), &args);
    let mut report = CheckReport {
        gpus: vec!["GPU".into()],
        device: "cuda:0".into(),
        commit: None,
        environment: vec![],
        steps: vec![],
        plan: vec![],
        bench: None,
    };
    let info = "compiled in     data-parallel on Gloo yes, NCCL no, CUDA memory peaks yes";
    assert!(!check.step(&mut report, NCCL, |limit| check.nccl(info, limit)));
    assert!(
        matches!(&report.steps[0].outcome, Outcome::Skipped(why) if why.contains("1 GPU here, 2 needed")),
        "{:?}",
        report.steps[0].outcome
    );
    check.gpus = 2;
    assert!(!check.step(&mut report, NCCL, |limit| check.nccl(info, limit)));
    assert!(
        matches!(&report.steps[1].outcome, Outcome::Skipped(why) if why.contains("no NCCL")),
        "{:?}",
        report.steps[1].outcome
    );
    assert!(report.passed(), "skips are not failures");
    assert!(nccl_compiled(
        "torch version   2.13.0\ncompiled in     data-parallel on Gloo yes, NCCL yes (2.27.3)"
    ));
    assert!(!nccl_compiled(info));

    let hex = "0123456789abcdef".repeat(4);
    let printed = format!(
        "checkpoint runs/x/checkpoints/step-000000020.json\n\
         every process holds the same final state (weights, Adam moments, EMA): sha256 {hex}\n"
    );
    assert_eq!(agreed_digest(&printed).unwrap(), hex);
    let err = agreed_digest("checkpoint a\nsamples b").unwrap_err();
    assert!(
        err.contains("did not report") && err.contains("checkpoint a | samples b"),
        "{err}"
    );
    let cut = "every process holds the same final state (weights, Adam moments, EMA): sha256 01ab";
    assert!(
        agreed_digest(cut).is_err(),
        "a digest must have 64 hex digits"
    );
}

/// torch.compile's prerequisites as the probe script prints them: both there, or each
/// missing one named with how to get it.
#[test]
fn torch_compile_prerequisites_are_named_when_missing() {
    let ok = "include /usr/include/python3.11 True\ncompiler /usr/bin/cc\n";
    assert_eq!(compile_ready(ok), Ok(()));
    let err = compile_ready("include /usr/include/python3.11 False\ncompiler -\n").unwrap_err();
    assert!(
        err.contains("no Python.h in /usr/include/python3.11")
            && err.contains("python3-dev")
            && err.contains("a C compiler"),
        "{err}"
    );
    let err = compile_ready("").unwrap_err();
    assert!(err.contains("no include line"), "{err}");
    // The probe itself runs with this machine's Python, when there is one, and says
    // something compile_ready reads either way.
    if let Ok(out) = Command::new("python3").args(["-c", COMPILE_PROBE]).output() {
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.contains("include ") && printed.contains("compiler "),
            "{printed}"
        );
        if let Err(why) = compile_ready(&printed) {
            assert!(!why.contains("no include line"), "{why}");
        }
    }
}
