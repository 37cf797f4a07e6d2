//! A class-conditional DDPM from the command line: `elbo train ddpm --cond-drop`, then
//! `elbo sample --class K --guidance W` and `--class all` (one row per class), and the
//! refusals of options that do not fit the model.

use std::path::Path;

use crate::common::{run, text};

/// The width and height in a PNG's header.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG", "{}", path.display());
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

/// ddpm-mnist's network with T = 20, trained 2 steps: a checkpoint to sample from in
/// seconds (no evaluation at the end: `--final-examples 0` skips it).
fn train(run_dir: &Path, extra: &[&str]) {
    let dir = run_dir.to_str().unwrap();
    let mut args = vec![
        "train",
        "ddpm",
        "--timesteps",
        "20",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--final-examples",
        "0",
        "--threads",
        "1",
        "--run",
        dir,
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("bits/dim"), "{}", text(&out));
}

#[test]
fn a_conditional_ddpm_samples_a_class_and_every_class() {
    let tmp = tempfile::tempdir().unwrap();
    let conditional = tmp.path().join("cond");
    train(&conditional, &["--cond-drop", "0.1"]);
    let config = std::fs::read_to_string(conditional.join("config.json")).unwrap();
    assert!(config.contains("\"num_classes\": 10"), "{config}");
    let run_dir = conditional.to_str().unwrap();

    let three = tmp.path().join("three.png");
    let out = run(&[
        "sample",
        run_dir,
        "--class",
        "3",
        "--guidance",
        "1.5",
        "--sampler",
        "dpm++2m-4",
        "--dynamic-threshold",
        "0.995",
        "--n",
        "4",
        "--out",
        three.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // 4 samples in a grid of 8 columns: one row of 4 (28 pixels and a 2-pixel border).
    assert_eq!(png_size(&three), (4 * 30 + 2, 30 + 2));

    let all = tmp.path().join("all.png");
    let out = run(&[
        "sample",
        run_dir,
        "--class",
        "all",
        "--guidance",
        "1",
        "--sampler",
        "ddim-3",
        "--n",
        "20",
        "--out",
        all.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // Two of each class: 10 rows of 2.
    assert_eq!(png_size(&all), (2 * 30 + 2, 10 * 30 + 2));
    let (_, strip_height) = png_size(&tmp.path().join("all-trajectory.png"));
    assert_eq!(strip_height, 10 * 30 + 2, "one trajectory row per class");

    for (args, expected) in [
        (
            vec!["--class", "all", "--n", "7"],
            "a multiple of 10, found 7",
        ),
        (vec!["--class", "10"], "between 0 and 9"),
        (vec!["--class", "1", "--guidance=-2"], "finite w >= 0"),
    ] {
        let mut full = vec!["sample", run_dir, "--out", "/dev/null"];
        full.extend(args.iter().copied());
        let out = run(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{args:?}: {}", text(&out));
    }
    // Options the parser refuses.
    for args in [
        vec!["--guidance", "1"],
        vec!["--class", "three"],
        vec!["--no-clip", "--dynamic-threshold", "0.9"],
    ] {
        let mut full = vec!["sample", run_dir];
        full.extend(args.iter().copied());
        let out = run(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }

    let plain = tmp.path().join("plain");
    train(&plain, &[]);
    let out = run(&[
        "sample",
        plain.to_str().unwrap(),
        "--class",
        "1",
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("need a class-conditional DDPM (trained with --cond-drop)"),
        "{}",
        text(&out)
    );
}
