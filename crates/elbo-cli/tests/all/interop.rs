//! Models and samples in and out: a diffusers UNet2DModel (the frozen fixture of
//! elbo-models) imported as a run that samples, evaluates (bits/dim, Inception FID and
//! KID with the fixture network's formula weights), fine-tunes with `--resume` and
//! exports again; sample exports in both layouts.

use std::path::{Path, PathBuf};
use std::process::Output;

use image::{Rgb, RgbImage};

use crate::common::{elbo, text};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../elbo-models/tests/fixtures/diffusers-tiny")
}

/// `elbo args...` with its data folder (where packs and FID statistics go) in `data`.
fn run_in(data: &Path, args: &[&str]) -> Output {
    elbo()
        .env("ELBO_DATA_DIR", data)
        .args(args)
        .output()
        .expect("elbo runs")
}

/// 12 RGB images of 8x8 in two classes: the imported network's shape.
fn images(root: &Path) -> String {
    for i in 0..12u32 {
        let class = if i % 2 == 0 { "a" } else { "b" };
        let image = RgbImage::from_fn(8, 8, |x, y| {
            Rgb([(x * 30) as u8, (y * 30) as u8, (i * 20) as u8])
        });
        let path = root.join(class).join(format!("{i}.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image.save(path).unwrap();
    }
    format!("folder:{}", root.display())
}

/// The FID Inception with the fixture formula's weights, as the safetensors file
/// `cargo xtask data inception` would write.
fn formula_inception(path: &Path) {
    use elbo_models::eval::inception::{FidInception, formula_weight};
    let tensors: Vec<(String, tch::Tensor)> = FidInception::weight_names()
        .into_iter()
        .map(|(name, shape)| {
            let t = formula_weight(&name, &shape);
            (name, t)
        })
        .collect();
    elbo_models::train::checkpoint::write_tensor_file(path, &tensors).unwrap();
}

#[test]
fn an_imported_diffusers_model_samples_evaluates_fine_tunes_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let data = images(&dir.path().join("images"));
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let fixture = fixture();
    let out = run_in(
        dir.path(),
        &[
            "import",
            "diffusers",
            fixture.to_str().unwrap(),
            "--out",
            run_s,
            "--data",
            &data,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("step-000000000.json"), "{}", text(&out));

    let grid = dir.path().join("grid.png");
    let out = run_in(
        dir.path(),
        &[
            "sample",
            run_s,
            "--n",
            "4",
            "--sampler",
            "ddim-5",
            "--out",
            grid.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(grid.is_file());

    // Its objective (L_simple on eps, Ho et al.'s linear schedule) as a weighting of the
    // ELBO: the density of the levels, not monotone.
    let out = run_in(dir.path(), &["plot", run_s, "--weighting"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("objective L_simple, eps target, linear schedule")
            && text(&out).contains("not monotone"),
        "{}",
        text(&out)
    );
    assert!(run.join("weighting.png").is_file());

    let out = run_in(dir.path(), &["eval", run_s, "--examples", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("bits/dim"), "{}", text(&out));

    // FID and KID with the formula network; the reference statistics are cached.
    let weights = dir.path().join("inception.safetensors");
    formula_inception(&weights);
    let fid = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            run_s,
            "--fid",
            "6",
            "--sampler",
            "ddim-5",
            "--inception-weights",
            weights.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_in(dir.path(), &args)
    };
    let out = fid(&["--kid"]);
    assert!(out.status.success(), "{}", text(&out));
    let first = text(&out);
    assert!(
        first.contains("FID (Inception pool features, 6 samples vs ")
            && first.contains(" training images): "),
        "{first}"
    );
    assert!(first.contains("KID (subsets of 6)"), "{first}");
    let stats: Vec<PathBuf> = std::fs::read_dir(dir.path().join("fid-stats"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stats.len(), 2, "{stats:?}");
    let written = std::fs::metadata(&stats[0]).unwrap().modified().unwrap();
    let out = fid(&["--kid"]);
    let again = text(&out);
    assert_eq!(
        first.lines().find(|l| l.starts_with("FID")),
        again.lines().find(|l| l.starts_with("FID")),
        "the same draws and the cached statistics give the same FID"
    );
    assert_eq!(
        std::fs::metadata(&stats[0]).unwrap().modified().unwrap(),
        written
    );
    // Without weights: how to get them.
    let out = run_in(dir.path(), &["eval", run_s, "--fid", "6"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cargo xtask data inception"),
        "{}",
        text(&out)
    );

    // Fine-tuning: --resume without --preset continues the run's own network.
    let out = run_in(
        dir.path(),
        &[
            "train",
            "ddpm",
            "--run",
            run_s,
            "--resume",
            "--recipe",
            "ho-cifar10",
            "--data",
            &data,
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--allow-changes",
            "--final-examples",
            "0",
            "--no-tensorboard",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        run.join("checkpoints/step-000000002.json").is_file(),
        "{}",
        text(&out)
    );

    let export = dir.path().join("export");
    let out = run_in(
        dir.path(),
        &[
            "export",
            "diffusers",
            run_s,
            "--out",
            export.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for file in [
        "model_index.json",
        "config.json",
        "scheduler_config.json",
        "diffusion_pytorch_model.safetensors",
    ] {
        assert!(export.join(file).is_file(), "{file}");
    }
    // And it imports again.
    let again = dir.path().join("again");
    let out = run_in(
        dir.path(),
        &[
            "import",
            "diffusers",
            export.to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
            "--data",
            &data,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn imports_and_exports_refuse_what_they_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let run = dir.path().join("run");
    let out = run_in(
        dir.path(),
        &[
            "import",
            "diffusers",
            missing.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("nothing-here") && text(&out).contains("config.json"),
        "{}",
        text(&out)
    );
    // Nothing to export: the error names the folder without a checkpoint (a run of
    // another family is refused by the library's own test of export_diffusers' match).
    let out = run_in(
        dir.path(),
        &[
            "export",
            "diffusers",
            missing.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("nothing-here"), "{}", text(&out));
    // Wrong values are refused by the parser, naming the option.
    let out = run_in(
        dir.path(),
        &["sample", "x", "--format", "tar", "--out", "y"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("png-dir or npz"), "{}", text(&out));
    let out = run_in(dir.path(), &["eval", "x", "--kid"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--fid"), "{}", text(&out));
}

#[test]
fn a_sample_export_writes_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let fixture = fixture();
    let out = run_in(
        dir.path(),
        &[
            "import",
            "diffusers",
            fixture.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--data",
            "mnist-sample",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let npz = dir.path().join("s.npz");
    let out = run_in(
        dir.path(),
        &[
            "sample",
            run.to_str().unwrap(),
            "--n",
            "6",
            "--batch",
            "4",
            "--format",
            "npz",
            "--sampler",
            "ddim-5",
            "--out",
            npz.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("wrote 6 samples"), "{}", text(&out));
    let arrays = elbo_data::npy::read_npz(&npz).unwrap();
    assert_eq!(arrays[0].1.shape, [6, 8, 8, 3]);
    let pngs = dir.path().join("pngs");
    let out = run_in(
        dir.path(),
        &[
            "sample",
            run.to_str().unwrap(),
            "--n",
            "6",
            "--batch",
            "4",
            "--format",
            "png-dir",
            "--sampler",
            "ddim-5",
            "--out",
            pngs.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(pngs.join("000005.png").is_file() && !pngs.join("000006.png").exists());
}
