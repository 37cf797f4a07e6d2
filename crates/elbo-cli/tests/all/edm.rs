//! EDM from the command line: `elbo train edm` (its options, a grid of levels), the
//! bound on the grid, Heun's sampler by default and any other on the grid, the
//! weighting chart; EDM's options are its own.

use crate::common::{run, text};

#[test]
fn edm_trains_evaluates_samples_and_draws_its_weighting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("edm");
    let dir = dir.to_str().unwrap();
    // edm-mnist's network, 2 steps, a grid of 20 levels.
    let out = run(&[
        "train",
        "edm",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--levels",
        "20",
        "--sigma-data",
        "0.6",
        "--final-examples",
        "1",
        "--threads",
        "1",
        "--run",
        dir,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("edm_loss") && printed.contains("denoising_matching t=11..20"),
        "{printed}"
    );
    let config = std::fs::read_to_string(std::path::Path::new(dir).join("config.json")).unwrap();
    assert!(
        config.contains("\"sigma_data\": 0.6") || config.contains("\"sigma_data\":0.6"),
        "{config}"
    );
    for sampler in ["heun-3", "ddim-4", "heun-3-churn=10"] {
        let png = std::path::Path::new(dir).join(format!("{sampler}.png"));
        let out = run(&[
            "sample",
            dir,
            "--sampler",
            sampler,
            "--n",
            "2",
            "--threads",
            "1",
            "--out",
            png.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{sampler}: {}", text(&out));
        assert!(png.is_file());
    }
    let out = run(&["plot", dir, "--weighting"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("EDM's loss") && text(&out).contains("not monotone"),
        "{}",
        text(&out)
    );
    // EDM's options are not a DDPM's, and its own are checked.
    let out = run(&["train", "ddpm", "--sigma-data", "0.5", "--run", dir]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--sigma-data"), "{}", text(&out));
    let other = tmp.path().join("bad");
    let out = run(&[
        "train",
        "edm",
        "--p-std",
        "0",
        "--run",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("p_std"), "{}", text(&out));
}
