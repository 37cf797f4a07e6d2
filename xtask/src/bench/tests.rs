//! Tests of the orchestration: each side's command line for a case (the device and
//! precision settings, the protocol, a compiled run's warm-up).

use super::*;
use crate::bench::cases::CASES;

#[derive(clap::Parser)]
struct BenchCli {
    #[command(flatten)]
    args: BenchArgs,
}

fn command_args(command: &Command) -> Vec<String> {
    command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn both_sides_get_the_device_settings_and_a_compiled_run_two_warm_up_steps() {
    use clap::Parser;
    let cli = BenchCli::try_parse_from([
        "bench",
        "--device",
        "cuda:1",
        "--autocast",
        "bf16",
        "--tf32",
    ])
    .unwrap();
    let sample = CASES[3];
    assert_eq!(sample.protocol, Some([1, 2, 1]));
    let ws = Path::new("/ws");
    let eager = side_command(ws, Path::new("steptime"), &[], &sample, 1, &cli.args);
    let eager = command_args(&eager);
    assert!(
        eager.windows(2).any(|w| w == ["--warmup", "1"]),
        "{eager:?}"
    );
    for pair in [["--device", "cuda:1"], ["--autocast", "bf16"]] {
        assert!(eager.windows(2).any(|w| w == pair), "{eager:?}");
    }
    assert!(eager.contains(&"--tf32".to_string()));
    let prefix = ["steptime.py", "--adam", "fused", "--compile"];
    let compiled = side_command(ws, Path::new("python"), &prefix, &sample, 1, &cli.args);
    let compiled = command_args(&compiled);
    assert!(
        compiled.windows(2).any(|w| w == ["--warmup", "2"]),
        "{compiled:?}"
    );
    assert_eq!(&compiled[..4], prefix);
    // The defaults: the CPU, float32, TF32 off (no flag).
    let cli = BenchCli::try_parse_from(["bench"]).unwrap();
    let cpu = command_args(&side_command(
        ws,
        Path::new("s"),
        &[],
        &CASES[0],
        2,
        &cli.args,
    ));
    assert!(cpu.windows(2).any(|w| w == ["--device", "cpu"]), "{cpu:?}");
    assert!(
        cpu.windows(2).any(|w| w == ["--autocast", "none"]),
        "{cpu:?}"
    );
    assert!(!cpu.contains(&"--tf32".to_string()));
    assert_eq!(
        cli.args.variants,
        [
            VariantChoice::Compiled,
            VariantChoice::ChannelsLast,
            VariantChoice::CompiledChannelsLast
        ]
    );
}
