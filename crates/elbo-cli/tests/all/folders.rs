//! A folder of your own images as data: three classes of shapes in mixed formats and
//! sizes, trained as a class-conditional DDPM (the class count from the folders) and a
//! grey VAE; the folder's options recorded and read again by eval; bad files skipped
//! and listed; options that do not apply refused.

use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};

use std::process::Output;

use crate::common::{elbo, text};

/// `elbo args...` with its data folder (where packs go) in `data`.
fn run_with(data: &Path, args: &[&str]) -> Output {
    elbo()
        .env("ELBO_DATA_DIR", data)
        .args(args)
        .output()
        .expect("elbo runs")
}

/// `root/<class>/<i>.<ext>`: a bright disc, square or bar on a dark ground, in sizes
/// from 30 to 58 pixels, as PNG, JPEG, WebP and BMP.
fn shapes(root: &Path) {
    for (k, class) in ["disc", "square", "bar"].iter().enumerate() {
        for i in 0..12u32 {
            let (w, h) = (30 + i * 2, 58 - i * 2);
            let image = RgbImage::from_fn(w, h, |x, y| {
                let (u, v) = (x as f32 / w as f32 - 0.5, y as f32 / h as f32 - 0.5);
                let inside = match k {
                    0 => u * u + v * v < 0.09,
                    1 => u.abs() < 0.3 && v.abs() < 0.3,
                    _ => u.abs() < 0.1,
                };
                if inside {
                    Rgb([220, 60 + 10 * i as u8, 40 * k as u8])
                } else {
                    Rgb([20, 20, 20])
                }
            });
            let format = [
                ImageFormat::Png,
                ImageFormat::Jpeg,
                ImageFormat::WebP,
                ImageFormat::Bmp,
            ][i as usize % 4];
            let path = root
                .join(class)
                .join(format!("{i}.{}", format.extensions_str()[0]));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image.save_with_format(path, format).unwrap();
        }
    }
}

#[test]
fn a_folder_of_your_images_trains_a_conditional_ddpm_and_a_grey_vae() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("shapes");
    shapes(&images);
    std::fs::write(images.join("bar/broken.png"), b"\x89PNG\r\n\x1a\n cut").unwrap();
    let data = format!("folder:{}", images.display());
    let packs = dir.path().join("data");
    let run = |args: &[&str]| run_with(&packs, args);

    // Without --skip-bad the broken file is named.
    let ddpm = dir.path().join("ddpm");
    let args = [
        "train",
        "ddpm",
        "--data",
        &data,
        "--image-size",
        "16",
        "--cond-drop",
        "0.1",
        "--steps",
        "2",
        "--final-examples",
        "0",
        "--run",
        ddpm.to_str().unwrap(),
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("broken.png") && text(&out).contains("--skip-bad"),
        "{}",
        text(&out)
    );
    // With it: trained, the file listed in the run folder, three classes.
    let out = run(&[&args[..], &["--skip-bad"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let skipped = std::fs::read_to_string(ddpm.join("skipped-images.txt")).unwrap();
    assert!(skipped.starts_with(&images.join("bar/broken.png").display().to_string()));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ddpm.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_config"]["unet"]["num_classes"], 3, "{config}");
    assert_eq!(
        config["train_config"]["data"],
        format!(
            "folder:{}?image-size=16&skip-bad",
            std::fs::canonicalize(&images).unwrap().display()
        )
    );
    let grid = dir.path().join("class-2.png");
    let out = run(&[
        "sample",
        ddpm.to_str().unwrap(),
        "--class",
        "2",
        "--sampler",
        "ddim-2",
        "--n",
        "4",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["sample", ddpm.to_str().unwrap(), "--class", "3", "--n", "4"]);
    assert!(!out.status.success(), "class 3 of 3 was accepted");

    // A grey 28x28 VAE of the same images; eval reads the folder as recorded.
    std::fs::remove_file(images.join("bar/broken.png")).unwrap();
    let vae = dir.path().join("vae");
    let out = run(&[
        "train",
        "vae",
        "--data",
        &data,
        "--image-size",
        "28",
        "--channels",
        "1",
        "--steps",
        "3",
        "--iw",
        "0",
        "--run",
        vae.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["eval", vae.to_str().unwrap(), "--iw", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ELBO"), "{}", text(&out));
    // Packed once per options (by the first run of each); two ranks map that pack.
    let packed = std::fs::read_dir(packs.join("packed"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(
        packed, 2,
        "one pack per source folder and options (16 RGB, 28 grey)"
    );
    let two = dir.path().join("two");
    let out = run(&[
        "train",
        "vae",
        "--data",
        &data,
        "--image-size",
        "28",
        "--channels",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--iw",
        "0",
        "--nproc",
        "2",
        "--run",
        two.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("packing"),
        "the pack was found: {}",
        text(&out)
    );

    // Options of a folder refused for other data, and --cond-drop without labels.
    let out = run(&["train", "vae", "--image-size", "28", "--steps", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("apply to a folder of images"),
        "{}",
        text(&out)
    );
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for entry in std::fs::read_dir(images.join("disc")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, flat.join(path.file_name().unwrap())).unwrap();
    }
    let out = run(&[
        "train",
        "ddpm",
        "--data",
        &format!("folder:{}", flat.display()),
        "--image-size",
        "16",
        "--cond-drop",
        "0.1",
        "--steps",
        "1",
        "--run",
        dir.path().join("flat-run").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("this data has 0"), "{}", text(&out));
}

/// `elbo data inspect` on the bundled sample: its counts and classes, and pixel
/// statistics near torchvision's well-known MNIST normalisation (mean 0.1307, std
/// 0.3081, of all 60,000 training digits): a digit's mean pixel varies by about 0.04, so
/// 9,000 of them give the mean to about 0.0004; 0.002 is 5 of that. `elbo data pack`
/// packs a folder once, and refuses what is not a folder of images.
#[test]
fn data_inspect_and_pack() {
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("grid.png");
    let packs = dir.path().join("data");
    let out = run_with(
        &packs,
        &[
            "data",
            "inspect",
            "mnist-sample",
            "--out",
            grid.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("images 9000 training, 1000 test, 1x28x28"),
        "{said}"
    );
    assert!(said.contains("classes 10"), "{said}");
    let stats = said
        .lines()
        .find(|l| l.starts_with("pixels channel 0:"))
        .unwrap();
    let numbers: Vec<f64> = stats
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    let (mean, std) = (numbers[1], numbers[2]);
    assert!(
        (mean - 0.1307).abs() < 0.002 && (std - 0.3081).abs() < 0.002,
        "{stats}"
    );
    assert!(grid.exists());

    let images = dir.path().join("shapes");
    shapes(&images);
    let data = format!("folder:{}", images.display());
    for expected in ["packed ", "already packed: "] {
        let out = run_with(&packs, &["data", "pack", &data, "--image-size", "16"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(expected), "{}", text(&out));
    }
    let out = run_with(&packs, &["data", "pack", "mnist-sample"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("only a folder of images"),
        "{}",
        text(&out)
    );
}

/// Parquet shards written by Hugging Face `datasets` (elbo-data's fixture): inspected,
/// then trained on and evaluated, their class names and columns recorded.
#[test]
fn parquet_shards_of_datasets_train_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let packs = dir.path().join("data");
    let shard =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../elbo-data/src/folder/hf-tiny-train.parquet");
    let data = format!("parquet:{}?test-fraction=0.5", shard.display());
    let grid = dir.path().join("g.png");
    let out = run_with(
        &packs,
        &["data", "inspect", &data, "--out", grid.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("images 3 training, 3 test, 3x8x8"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("even") && text(&out).contains("odd"),
        "{}",
        text(&out)
    );
    let vae = dir.path().join("vae");
    let out = run_with(
        &packs,
        &[
            "train",
            "vae",
            "--data",
            &data,
            "--label-column",
            "label",
            "--steps",
            "2",
            "--iw",
            "0",
            "--run",
            vae.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let config = std::fs::read_to_string(vae.join("config.json")).unwrap();
    assert!(
        config.contains("test-fraction=0.5&label-column=label"),
        "{config}"
    );
    let out = run_with(&packs, &["eval", vae.to_str().unwrap(), "--iw", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run_with(
        &packs,
        &[
            "train",
            "vae",
            "--data",
            &data,
            "--label-column",
            "nope",
            "--steps",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("\"nope\""), "{}", text(&out));
}
