//! diffusers' UNet2DModel in and out, against the frozen fixture of
//! `benches/reference/diffusers_unet.py fixture` (diffusers 0.42.1, torch 2.13.0): a
//! two-level UNet2DModel with Ho et al.'s conventions (attention on the second level,
//! GroupNorm epsilon 1e-6, TensorFlow padding, `flip_sin_to_cos: false`,
//! `freq_shift: 1`), random weights, and its eps at three timesteps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use elbo_models::data::DataSpec;
use elbo_models::interop::diffusers::{read_diffusers, write_diffusers};
use elbo_models::models::ddpm::{ScheduleKind, VarianceKind};
use elbo_models::nn::unet::Unet;
use elbo_models::session::{self, ImportRequest, RecipeName};
use elbo_models::train::checkpoint::{read_tensor_file, write_tensor_file};
use tch::{Device, Kind, Tensor, nn};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers-tiny")
}

fn expected() -> BTreeMap<String, Tensor> {
    read_tensor_file(&fixture().join("expected.safetensors"), "the fixture")
        .unwrap()
        .into_iter()
        .collect()
}

/// elbo's UNet with `weights` (by elbo's names), at diffusers' inputs (`t` counted from
/// 0, elbo's from 1).
fn eps(config: &elbo_models::nn::unet::UnetConfig, weights: &BTreeMap<String, Tensor>) -> Tensor {
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = Unet::new(&vs.root(), config).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            var.copy_(&weights[&name]);
        }
    });
    let e = expected();
    tch::no_grad(|| unet.forward(&e["x"], &(&e["t"] + 1), false))
}

/// The largest gap relative to the largest value.
fn gap(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in [
        "config.json",
        "scheduler_config.json",
        "diffusion_pytorch_model.safetensors",
    ] {
        std::fs::copy(fixture().join(name), to.join(name)).unwrap();
    }
}

/// Float32 convolutions and attention summed in other orders than PyTorch's: ~1e-6
/// relative; a wrong mapping, padding or time convention is off by O(1e-2) or more.
const TOLERANCE: f64 = 1e-5;

#[test]
fn a_diffusers_unet_predicts_the_same_eps_in_elbo() {
    let _generator = crate::common::exclusive();
    let model = read_diffusers(&fixture(), None).unwrap();
    let c = &model.config;
    assert_eq!(
        (c.unet.base_channels, c.unet.channel_mults.clone()),
        (8, vec![1, 2])
    );
    assert_eq!(
        (c.unet.res_blocks, c.unet.attention_resolutions.clone()),
        (1, vec![4])
    );
    assert_eq!(
        (
            c.unet.norm_eps,
            c.unet.downsample_padding,
            c.unet.time_offset
        ),
        (1e-6, 0, -1)
    );
    assert_eq!(
        (c.timesteps, c.schedule, c.variance),
        (1000, ScheduleKind::Linear, VarianceKind::FixedLarge)
    );
    let found = eps(&c.unet, &model.weights);
    let g = gap(&found, &expected()["eps"]);
    assert!(g < TOLERANCE, "eps differs by {g} relative");

    // The same weights under the attention names of older diffusers versions.
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    std::fs::copy(
        fixture().join("legacy-names.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let legacy = read_diffusers(dir.path(), None).unwrap();
    assert!(
        gap(
            &eps(&legacy.config.unet, &legacy.weights),
            &expected()["eps"]
        ) < TOLERANCE
    );
}

#[test]
fn an_export_reads_back_tensor_for_tensor() {
    let _generator = crate::common::exclusive();
    let model = read_diffusers(&fixture(), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let files = write_diffusers(&model.config, &model.weights, &out).unwrap();
    assert_eq!(files.len(), 4);
    assert!(out.join("model_index.json").is_file());
    let back = read_diffusers(&out, None).unwrap();
    assert_eq!(back.config, model.config);
    assert_eq!(back.weights.len(), model.weights.len());
    for (name, t) in &model.weights {
        assert!(back.weights[name].equal(t), "{name}");
    }
    // The diffusers names are the fixture's own, every one of them.
    let theirs: Vec<String> =
        read_tensor_file(&fixture().join("diffusion_pytorch_model.safetensors"), "x")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    let ours: Vec<String> = read_tensor_file(&out.join("diffusion_pytorch_model.safetensors"), "x")
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let (mut a, mut b) = (theirs, ours);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn what_elbo_cannot_express_or_read_is_refused_naming_it() {
    let _generator = crate::common::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("m");
    let edit = |file: &str, from: &str, to: &str| {
        copy_fixture(&folder);
        let path = folder.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        read_diffusers(&folder, None).err().unwrap().to_string()
    };
    let err = edit(
        "config.json",
        "\"AttnDownBlock2D\"",
        "\"CrossAttnDownBlock2D\"",
    );
    assert!(
        err.contains("down_block_types[1] is CrossAttnDownBlock2D"),
        "{err}"
    );
    let err = edit(
        "config.json",
        "\"flip_sin_to_cos\": false",
        "\"flip_sin_to_cos\": true",
    );
    assert!(err.contains("flip_sin_to_cos is true"), "{err}");
    let err = edit(
        "config.json",
        "\"attention_head_dim\": null",
        "\"attention_head_dim\": 8",
    );
    assert!(err.contains("attention_head_dim is 8"), "{err}");
    let err = edit(
        "scheduler_config.json",
        "\"fixed_large\"",
        "\"learned_range\"",
    );
    assert!(err.contains("variance_type is learned_range"), "{err}");
    let err = edit(
        "scheduler_config.json",
        "\"beta_end\": 0.02",
        "\"beta_end\": 0.03",
    );
    assert!(err.contains("beta_end 0.03"), "{err}");

    // A missing file names itself and what was expected.
    copy_fixture(&folder);
    std::fs::remove_file(folder.join("scheduler_config.json")).unwrap();
    let err = read_diffusers(&folder, None).err().unwrap().to_string();
    assert!(
        err.contains("scheduler_config.json") && err.contains("beta schedule"),
        "{err}"
    );

    // A tensor of the wrong shape, a missing one and an extra one.
    copy_fixture(&folder);
    let weights = folder.join("diffusion_pytorch_model.safetensors");
    let original = read_tensor_file(&weights, "x").unwrap();
    let mut changed: Vec<(String, Tensor)> = original
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let at = changed
        .iter()
        .position(|(n, _)| n == "conv_in.weight")
        .unwrap();
    changed[at].1 = Tensor::zeros([8, 3, 1, 1], (Kind::Float, Device::Cpu));
    write_tensor_file(&weights, &changed).unwrap();
    let err = read_diffusers(&folder, None).err().unwrap().to_string();
    assert!(
        err.contains("conv_in.weight has shape [8, 3, 1, 1]") && err.contains("[8, 3, 3, 3]"),
        "{err}"
    );
    let _ = changed.remove(at);
    write_tensor_file(&weights, &changed).unwrap();
    let err = read_diffusers(&folder, None).err().unwrap().to_string();
    assert!(
        err.contains("conv_in.weight") && err.contains("missing"),
        "{err}"
    );
    let mut extra = original;
    extra.push((
        "time_embedding.cond_proj.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    write_tensor_file(&weights, &extra).unwrap();
    let err = read_diffusers(&folder, None).err().unwrap().to_string();
    assert!(
        err.contains("time_embedding.cond_proj.weight") && err.contains("no place"),
        "{err}"
    );

    // A checksum given and not matched.
    copy_fixture(&folder);
    let err = read_diffusers(&folder, Some(&"0".repeat(64)))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("sha256 checksum mismatch: expected 000"),
        "{err}"
    );
}

#[test]
fn an_imported_run_samples_and_exports_back_to_the_same_network() {
    let _generator = crate::common::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let request = ImportRequest {
        folder: fixture(),
        run: run.clone(),
        data: DataSpec::Bundled,
        recipe: RecipeName::HoCifar10,
        sha256: None,
        seed: 0,
    };
    let report = session::import_diffusers(&request).unwrap();
    assert!(
        report.checkpoint.ends_with("step-000000000.json"),
        "{report:?}"
    );
    assert!(run.join("config.json").is_file());
    // A second import into the same run is refused.
    let err = session::import_diffusers(&request).unwrap_err().to_string();
    assert!(err.contains("already holds a run"), "{err}");
    // The run restores (its EMA is the weights) and predicts the fixture's eps.
    let restored = session::restore(&run, Device::Cpu, true).unwrap();
    let weights: BTreeMap<String, Tensor> = restored
        .vs
        .variables()
        .into_iter()
        .filter_map(|(n, t)| Some((n.strip_prefix("unet.")?.to_string(), t)))
        .collect();
    assert!(gap(&eps(&report.config.unet, &weights), &expected()["eps"]) < TOLERANCE);
    // Exported again: the fixture's tensors, bit for bit.
    let out = dir.path().join("out");
    session::export_diffusers(&run, &out).unwrap();
    let theirs: BTreeMap<String, Tensor> =
        read_tensor_file(&fixture().join("diffusion_pytorch_model.safetensors"), "x")
            .unwrap()
            .into_iter()
            .collect();
    for (name, t) in
        read_tensor_file(&out.join("diffusion_pytorch_model.safetensors"), "x").unwrap()
    {
        assert!(theirs[&name].equal(&t), "{name}");
    }
}

/// Opt-in evidence at full size (not a CI test: it needs the bench venv's output):
/// `ELBO_DIFFUSERS_PARITY=/tmp/diffusers_parity` after
/// `benches/reference/diffusers_unet.py parity /tmp/diffusers_parity`: the
/// google/ddpm-cifar10-32 configuration with random weights, its eps at two timesteps
/// within 1e-5, and DDIM-50 from the same starting noise within 1e-4 of diffusers'
/// DDIMScheduler (`timestep_spacing="trailing"`, elbo's uniform steps), clipped
/// (`use_clipped_model_output=True`: elbo's DDIM recomputes eps from the clipped x_0)
/// and unclipped. Prints the gaps.
#[test]
fn full_size_parity_with_diffusers_when_asked() {
    let _generator = crate::common::exclusive();
    let Some(dir) = std::env::var_os("ELBO_DIFFUSERS_PARITY").map(PathBuf::from) else {
        eprintln!(
            "not run: set ELBO_DIFFUSERS_PARITY to the folder diffusers_unet.py parity wrote"
        );
        return;
    };
    use elbo_models::models::ddpm::Ddpm;
    use elbo_models::sample::{ClipX0, SamplerSpec, SamplingOptions, sample};
    let model = read_diffusers(&dir.join("model"), None).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let ddpm = Ddpm::new(&vs.root(), model.config.clone()).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            var.copy_(&model.weights[name.strip_prefix("unet.").unwrap()]);
        }
    });
    let get = |file: &str| -> BTreeMap<String, Tensor> {
        read_tensor_file(&dir.join(file), file)
            .unwrap()
            .into_iter()
            .collect()
    };
    let e = get("eps.safetensors");
    let ours = tch::no_grad(|| ddpm.unet().forward(&e["x"], &(&e["t"] + 1), false));
    let eps_gap = gap(&ours, &e["eps"]);
    eprintln!("eps: largest gap {eps_gap:.3e} relative to the largest |eps|");
    assert!(eps_gap < 1e-5);
    let d = get("ddim.safetensors");
    for (clip, key) in [
        (ClipX0::Static, "ddim_clip_recomputed_eps"),
        (ClipX0::None, "ddim_noclip"),
    ] {
        tch::manual_seed(2);
        let options = SamplingOptions {
            clip_x0: clip,
            ..SamplingOptions::clipped("ddim-50".parse::<SamplerSpec>().unwrap())
        };
        let start = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert!(
            start.equal(&d["start"]),
            "libtorch's generator gives diffusers' start noise"
        );
        tch::manual_seed(2);
        let (x, _) = tch::no_grad(|| sample(&ddpm, &[2, 3, 32, 32], &options, 0)).unwrap();
        let g = gap(&x, &d[key]);
        eprintln!("DDIM-50 {key}: largest gap {g:.3e} relative to the largest |x_0|");
        assert!(g < 1e-4);
    }
}

/// Opt-in: `ELBO_DIFFUSERS_EXPORT=/tmp/export` writes a small elbo-trained-shape DDPM
/// (time counted from 1: the export folds the shift) with random weights as a
/// diffusers folder there, with inputs and elbo's eps in `elbo-eps.safetensors`, for
/// `diffusers_unet.py check-export` to compare.
#[test]
fn an_export_for_diffusers_to_check_when_asked() {
    let _generator = crate::common::exclusive();
    let Some(dir) = std::env::var_os("ELBO_DIFFUSERS_EXPORT").map(PathBuf::from) else {
        eprintln!("not run: set ELBO_DIFFUSERS_EXPORT to a folder to write the export to");
        return;
    };
    let mut config = crate::common::tiny_ddpm();
    config.unet.in_channels = 3;
    config.unet.image_size = 16;
    config.unet.attention_resolutions = vec![8];
    config.timesteps = 1000;
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = Unet::new(&(vs.root() / "unet"), &config.unet).unwrap();
    let weights: BTreeMap<String, Tensor> = tch::no_grad(|| {
        vs.variables()
            .into_iter()
            .map(|(n, mut t)| {
                let _ = t.g_add_(&(Tensor::randn_like(&t) * 0.05));
                (n.strip_prefix("unet.").unwrap().to_string(), t)
            })
            .collect()
    });
    write_diffusers(&config, &weights, &dir).unwrap();
    let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 640]);
    let eps = tch::no_grad(|| unet.forward(&x, &(&t + 1), false));
    write_tensor_file(
        &dir.join("elbo-eps.safetensors"),
        &[("x".into(), x), ("t".into(), t), ("eps".into(), eps)],
    )
    .unwrap();
}

/// Opt-in evidence for the FID Inception (not a CI test: it needs the bench venv's
/// output): `ELBO_FID_PARITY=/tmp/fid_parity` after `benches/reference/fid_inception.py
/// parity /tmp/fid_parity`: pytorch-fid's network with random weights, saved by
/// `torch.save` in both formats, converted by elbo-data and loaded here: its pool
/// features on MNIST digits and random images of three sizes within 1e-4 of
/// pytorch-fid's, and the FID of two sets of 200 images within 1e-3 of
/// `calculate_frechet_distance`'s. Prints the gaps and the times.
#[test]
fn fid_parity_with_pytorch_fid_when_asked() {
    let _generator = crate::common::exclusive();
    let Some(dir) = std::env::var_os("ELBO_FID_PARITY").map(PathBuf::from) else {
        eprintln!("not run: set ELBO_FID_PARITY to the folder fid_inception.py parity wrote");
        return;
    };
    use elbo_math::frechet::{GaussianFit, frechet_distance};
    use elbo_models::eval::inception::FidInception;
    let scratch = tempfile::tempdir().unwrap();
    let mut nets = Vec::new();
    for format in ["zip", "legacy"] {
        let converted = scratch.path().join(format!("{format}.safetensors"));
        let started = std::time::Instant::now();
        elbo_data::convert_to_safetensors(
            &dir.join(format!("random-inception-{format}.pth")),
            &converted,
        )
        .unwrap();
        eprintln!(
            "{format}: converted in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        nets.push(FidInception::load(&converted, Device::Cpu).unwrap());
    }
    let features: BTreeMap<String, Tensor> =
        read_tensor_file(&dir.join("features.safetensors"), "x")
            .unwrap()
            .into_iter()
            .collect();
    for (name, input) in features.iter().filter(|(n, _)| n.starts_with("input_")) {
        let expected = &features[&name.replacen("input_", "features_", 1)];
        for net in &nets {
            let g = gap(&net.features(input, 50), expected);
            eprintln!(
                "{name} {:?}: features within {g:.3e} relative",
                input.size()
            );
            assert!(g < 1e-4);
        }
    }
    let sets: BTreeMap<String, Tensor> = read_tensor_file(&dir.join("fid_sets.safetensors"), "x")
        .unwrap()
        .into_iter()
        .collect();
    let started = std::time::Instant::now();
    let fit = |images: &Tensor| {
        let f = nets[0].features(images, 50).to_kind(Kind::Double);
        let (n, d) = (f.size()[0] as usize, f.size()[1] as usize);
        let values = Vec::<f64>::try_from(f.flatten(0, -1)).unwrap();
        GaussianFit::from_samples(&ndarray::Array2::from_shape_vec((n, d), values).unwrap())
            .unwrap()
    };
    let (a, b) = (fit(&sets["set_a"]), fit(&sets["set_b"]));
    let featured = started.elapsed().as_secs_f64();
    let fid = frechet_distance(&a, &b).unwrap();
    let distance = started.elapsed().as_secs_f64() - featured;
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fid.json")).unwrap()).unwrap();
    let theirs = theirs["fid"].as_f64().unwrap();
    let relative = (fid - theirs).abs() / theirs;
    eprintln!(
        "FID {fid:.6} against pytorch-fid's {theirs:.6}: {relative:.3e} relative; features \
         {featured:.1} s, statistics and distance {distance:.1} s"
    );
    assert!(relative < 1e-3);
}

fn import_into(run: &Path, data: DataSpec) {
    session::import_diffusers(&ImportRequest {
        folder: fixture(),
        run: run.to_path_buf(),
        data,
        recipe: RecipeName::HoCifar10,
        sha256: None,
        seed: 0,
    })
    .unwrap();
}

#[test]
fn an_interrupted_export_continues_to_the_same_file() {
    use elbo_models::session::{ExportFormat, ExportRequest, export_samples};
    use std::sync::atomic::{AtomicBool, Ordering};
    let _generator = crate::common::exclusive();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    import_into(&run, DataSpec::Bundled);
    let request = |out: &str, seed: u64, format: ExportFormat| ExportRequest {
        n: 10,
        batch: 4,
        format,
        out: dir.path().join(out),
        seed,
        sampler: Some("ddim-5".parse().unwrap()),
        clip_x0: elbo_models::sample::ClipX0::Static,
        guidance: None,
    };
    let never = AtomicBool::new(false);
    let whole = request("a.npz", 3, ExportFormat::Npz);
    let report = export_samples(&run, &whole, Device::Cpu, &never, &mut |_, _| {}).unwrap();
    assert_eq!((report.drawn_batches, report.stopped), (3, false));
    // Stopped after its first batch: no .npz yet, the batch kept.
    let cut = request("b.npz", 3, ExportFormat::Npz);
    let stop = AtomicBool::new(false);
    let report = export_samples(&run, &cut, Device::Cpu, &stop, &mut |done, _| {
        if done == 1 {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!((report.drawn_batches, report.stopped), (1, true));
    assert!(!cut.out.exists());
    assert!(dir.path().join("b.npz.partial/batch-000000.u8").is_file());
    // Other settings into the same place are refused, not mixed in.
    let other = request("b.npz", 4, ExportFormat::Npz);
    let err = export_samples(&run, &other, Device::Cpu, &never, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds an export of other settings"), "{err}");
    // Run again: the two missing batches, and the same bytes as the whole export.
    let report = export_samples(&run, &cut, Device::Cpu, &never, &mut |_, _| {}).unwrap();
    assert_eq!((report.drawn_batches, report.stopped), (2, false));
    assert_eq!(
        std::fs::read(&cut.out).unwrap(),
        std::fs::read(&whole.out).unwrap()
    );
    assert!(!dir.path().join("b.npz.partial").exists());
    // A finished file is never overwritten.
    let err = export_samples(&run, &cut, Device::Cpu, &never, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("never overwrites"), "{err}");
    // guided-diffusion's layout, and the PNG folder holds the same pixels.
    let arrays = elbo_data::npy::read_npz(&whole.out).unwrap();
    assert_eq!(arrays.len(), 1);
    let (name, images) = &arrays[0];
    assert_eq!(
        (name.as_str(), images.shape.clone()),
        ("arr_0", vec![10, 8, 8, 3])
    );
    let pngs = request("c", 3, ExportFormat::PngDir);
    export_samples(&run, &pngs, Device::Cpu, &never, &mut |_, _| {}).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(pngs.out.join("000007.png")).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0u8; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    assert_eq!(pixels, images.data[7 * 192..8 * 192]);
    // A missing PNG is drawn again, alone, identically.
    std::fs::remove_file(pngs.out.join("000009.png")).unwrap();
    let report = export_samples(&run, &pngs, Device::Cpu, &never, &mut |_, _| {}).unwrap();
    assert_eq!(report.drawn_batches, 1);
}

/// A run of another family does not export to diffusers: UNet2DModel is a DDPM's.
#[test]
fn only_ddpm_runs_export_to_diffusers() {
    use elbo_models::models::ModelConfig;
    use elbo_models::train::optim::Adam;
    use elbo_models::train::{self, RunDir, TrainConfig, checkpoint};
    let _generator = crate::common::exclusive();
    // The VAE checkpoint of the format fixture, with today's tensors for it.
    let json = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1/vae-mlp-step-3.json"),
    )
    .unwrap();
    let meta: checkpoint::CheckpointMeta = serde_json::from_str(&json).unwrap();
    let config = ModelConfig::from_record(&meta.model, &meta.model_config).unwrap();
    let train_config: TrainConfig = serde_json::from_value(meta.train_config.clone()).unwrap();
    let vs = train::var_store(meta.seed, Device::Cpu);
    let _model = config.build(&vs.root()).unwrap();
    let tensors = train::state_tensors(&vs, &Adam::new(&vs, train_config.adam), None);
    let run = tempfile::tempdir().unwrap();
    let folder = RunDir::new(run.path());
    std::fs::create_dir_all(folder.checkpoints()).unwrap();
    std::fs::write(folder.checkpoints().join("step-000000003.json"), &json).unwrap();
    Tensor::write_safetensors(
        &tensors,
        folder.checkpoints().join("step-000000003.safetensors"),
    )
    .unwrap();
    let err = session::export_diffusers(run.path(), &run.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds a vae model") && err.contains("only DDPM runs export"),
        "{err}"
    );
    assert!(!run.path().join("out").exists());
}
