//! A VDM from the command line: `elbo train vdm`, then `elbo eval` (the bound in time
//! groups, repeatable with --seed, no IWAE bound), `elbo sample` with a fast sampler in
//! the learned schedule, and `elbo plot` (the schedule chart).

use crate::common::{run, text};

#[test]
fn a_vdm_trains_evaluates_samples_and_plots_its_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vdm");
    let dir = dir.to_str().unwrap();
    // vdm-mnist's network, 2 steps, a grid (and evaluation) of 10 times.
    let out = run(&[
        "train",
        "vdm",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--grid",
        "10",
        "--final-examples",
        "1",
        "--threads",
        "1",
        "--run",
        dir,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("diffusion t=0.9..1.0"),
        "{}",
        text(&out)
    );

    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", dir, "--examples", "2", "--threads", "1"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (first, again) = (eval(&[]), eval(&[]));
    assert!(first.status.success(), "{}", text(&first));
    // Seeded: the same numbers twice.
    assert_eq!(text(&first), text(&again));
    let other = eval(&["--seed", "1"]);
    assert_ne!(text(&first), text(&other));
    let refused = eval(&["--iw", "5"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("no importance-weighted (IWAE) bound"),
        "{}",
        text(&refused)
    );

    let png = tmp.path().join("samples.png");
    let out = run(&[
        "sample",
        dir,
        "--sampler",
        "dpm++2m-4",
        "--n",
        "4",
        "--threads",
        "1",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(png.is_file());
    let out = run(&["sample", dir, "--class", "3", "--threads", "1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("unconditional"), "{}", text(&out));

    let out = run(&["plot", dir]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::path::Path::new(dir).join("gamma.png").is_file());
    // The VDM's objective is the ELBO itself: w = 1, monotone.
    let out = run(&["plot", dir, "--weighting"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the VDM's bound") && text(&out).contains("weighting monotone"),
        "{}",
        text(&out)
    );
    assert!(std::path::Path::new(dir).join("weighting.png").is_file());
    // EDM's sampler on the VDM, through its noise levels.
    let png = std::path::Path::new(dir).join("heun.png");
    let out = run(&[
        "sample",
        dir,
        "--sampler",
        "heun-3",
        "--n",
        "2",
        "--threads",
        "1",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(png.is_file());
}
