//! Tests of the GPU check that need no GPU: its arguments, nvidia-smi's probe (missing,
//! failing, listing GPUs), the report's markdown, `elbo info`'s CUDA line and the
//! training run's checks.

use super::*;
use clap::Parser;

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
        bench: None,
    };
    assert!(report.passed());
    let md = markdown(&report);
    assert!(
        md.starts_with("# elbo GPU check\n\nDevice cuda:0; commit abc1234;"),
        "{md}"
    );
    assert!(md.contains("- NVIDIA A100, 40960 MiB, 550.1\n"));
    assert!(md.contains("Result: **every step passed**"));
    assert!(md.contains("| build | passed | 12 |\n"));
    assert!(md.contains("| bench | skipped: --no-pytorch | 12 |\n"));
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
        md.contains("| resume | **failed**: two / three | 12 |\n"),
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
