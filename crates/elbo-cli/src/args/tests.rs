//! The parser: each model's options, their types, and the help's defaults.
use super::*;
use clap::FromArgMatches;
use elbo_models::session::{DdpmPreset, Device, GammaKind, HvaeVariant, Job, Objective};

fn parse_args(argv: &[&str]) -> Result<Cli, clap::Error> {
    let matches = command().try_get_matches_from(argv)?;
    Cli::from_arg_matches(&matches)
}

fn help(model: &str) -> String {
    let mut cmd = command();
    let train = cmd.find_subcommand_mut("train").unwrap();
    train
        .find_subcommand_mut(model)
        .unwrap()
        .render_long_help()
        .to_string()
}

#[test]
fn the_command_is_well_formed() {
    command().debug_assert();
}

/// Each model's command accepts only its own options: another model's is refused by
/// the parser, not deep inside with a runtime error.
#[test]
fn options_of_another_model_are_refused_by_the_parser() {
    for (model, foreign) in [
        ("ddpm", "--likelihood=bernoulli"),
        ("ddpm", "--kl-warmup=10"),
        ("ddpm", "--free-bits=1"),
        ("ddpm", "--iw=10"),
        ("vae", "--objective=v"),
        ("vae", "--recipe=mnist"),
        ("vae", "--layers=3"),
        ("hvae", "--timesteps=10"),
        ("classifier", "--resume"),
        ("classifier", "--objective=v"),
    ] {
        let err = parse_args(&["elbo", "train", model, foreign])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unexpected argument"),
            "{model} {foreign}: {err}"
        );
    }
}

/// Values that would mean something else, and options that would be ignored, are
/// refused by the parser: a negative number of importance samples (it silently meant
/// none), port 0 for the launcher (the workers refuse it), --sweep-out without a sweep.
#[test]
fn values_that_would_be_ignored_or_misread_are_refused() {
    for argv in [
        &["elbo", "train", "vae", "--iw", "-1"][..],
        &["elbo", "train", "vae", "--iw=-1"][..],
        &["elbo", "eval", "runs/x", "--iw=-5"][..],
        &["elbo", "train", "vae", "--nproc", "2", "--master-port", "0"][..],
        &["elbo", "eval", "runs/x", "--sweep-out", "chart.png"][..],
    ] {
        assert!(parse_args(argv).is_err(), "{argv:?} was accepted");
    }
    assert!(parse_args(&["elbo", "train", "vae", "--iw", "0"]).is_ok());
    assert!(
        parse_args(&[
            "elbo",
            "eval",
            "runs/x",
            "--frechet",
            "10",
            "--classifier",
            "c",
            "--sweep",
            "--sweep-out",
            "chart.png"
        ])
        .is_ok()
    );
}

/// The help of each model shows its true defaults, read from the library.
#[test]
fn help_shows_each_models_true_defaults() {
    let ddpm = help("ddpm");
    assert!(!ddpm.contains("--likelihood"), "{ddpm}");
    assert!(
        ddpm.contains("[default: the recipe's: mnist 0.0005, ho-cifar10 0.0002]"),
        "{ddpm}"
    );
    assert!(
        ddpm.contains("mnist 2000 steps, ho-cifar10 800000 steps"),
        "{ddpm}"
    );
    let vae = help("vae");
    assert!(vae.contains("[default: 10 epochs]"), "{vae}");
    assert!(vae.contains("[default: 0.001]"), "{vae}");
    assert!(vae.contains("--likelihood"), "{vae}");
    assert!(!vae.contains("--objective"), "{vae}");
}

#[test]
fn values_are_parsed_into_the_librarys_types() {
    let cli = parse_args(&[
        "elbo",
        "train",
        "ddpm",
        "--objective",
        "v",
        "--lr",
        "1e-4",
        "--timesteps",
        "500",
    ])
    .unwrap();
    let Command::Train {
        model: TrainModel::Ddpm(args),
    } = cli.command
    else {
        panic!("expected train ddpm");
    };
    let job = args.job(Device::Cpu);
    // No --preset: ddpm-mnist for a new run (a resumed one keeps its own network).
    assert_eq!(job.preset, None);
    assert_eq!(job.label(), DdpmPreset::Mnist.to_string());
    assert_eq!(job.recipe, RecipeName::Mnist);
    assert_eq!(job.objective, Some(Objective::V));
    assert_eq!(job.timesteps, Some(500));
    assert_eq!(job.train.lr, Some(1e-4));
    assert_eq!(
        job.train.batch_size, None,
        "the recipe's, filled in the library"
    );
    assert!(job.train.tensorboard, "event files are written by default");
    let cli = parse_args(&["elbo", "train", "ddpm", "--no-tensorboard"]).unwrap();
    let Command::Train {
        model: TrainModel::Ddpm(args),
    } = cli.command
    else {
        panic!("expected train ddpm");
    };
    assert!(!args.job(Device::Cpu).train.tensorboard);
    let err = parse_args(&["elbo", "train", "ddpm", "--variance", "learned"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected one of fixed-large, fixed-small, learned-range"),
        "{err}"
    );
    let err = parse_args(&["elbo", "train", "vae", "--preset", "vae-big"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected vae-mlp or vae-conv"), "{err}");
    let err = parse_args(&["elbo", "train", "vae", "--resume"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--run"), "{err}");
}

#[test]
fn train_hvae_parses_its_options_and_the_shared_ones() {
    let cli = parse_args(&[
        "elbo",
        "train",
        "hvae",
        "--variant",
        "markov",
        "--layers",
        "3",
        "--latent-dims",
        "20,10,5",
        "--kl-warmup",
        "500",
        "--free-bits",
        "0.25",
        "--epochs",
        "2",
        "--deterministic",
    ])
    .unwrap();
    let Command::Train {
        model: TrainModel::Hvae(args),
    } = cli.command
    else {
        panic!("expected train hvae");
    };
    assert!(args.train.deterministic);
    let job = args.job(Device::Cpu);
    assert_eq!(job.variant, HvaeVariant::Markov);
    assert_eq!(job.layers, 3);
    assert_eq!(job.latent_dims, Some(vec![20, 10, 5]));
    assert_eq!(job.training.aids.kl_warmup_steps, 500);
    assert_eq!(job.training.aids.free_bits, 0.25);
    assert_eq!(job.training.train.epochs, Some(2));
    assert_eq!(job.training.train.skip_grad_norm, None);
    let err = parse_args(&["elbo", "train", "hvae", "--latent-dims", "a,b"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--latent-dims"), "{err}");
}

#[test]
fn eval_and_sample_parse() {
    let cli = parse_args(&[
        "elbo",
        "eval",
        "runs/x",
        "--frechet",
        "1000",
        "--classifier",
        "runs/c",
    ])
    .unwrap();
    let Command::Eval(args) = cli.command else {
        panic!("expected eval");
    };
    assert_eq!(args.frechet, Some(1000));
    assert_eq!(args.classifier, Some(PathBuf::from("runs/c")));
    let err = parse_args(&["elbo", "eval", "runs/x", "--frechet", "10"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--classifier"), "{err}");
    let sweep = parse_args(&[
        "elbo",
        "eval",
        "runs/x",
        "--frechet",
        "100",
        "--classifier",
        "c",
        "--sweep",
    ])
    .unwrap();
    let Command::Eval(sweep) = sweep.command else {
        panic!("an eval command")
    };
    assert!(sweep.sweep && sweep.sweep_out.is_none());
    let both = [
        "elbo",
        "eval",
        "runs/x",
        "--frechet",
        "9",
        "--classifier",
        "c",
        "--sweep",
    ];
    let err = parse_args(&[&both[..], &["--sampler", "ddim-5"]].concat())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--sampler"),
        "a sweep chooses its samplers: {err}"
    );
    let dpm = parse_args(&["elbo", "sample", "runs/x", "--sampler", "dpm++2m-15"]).unwrap();
    let Command::Sample(dpm) = dpm.command else {
        panic!("a sample command")
    };
    assert_eq!(
        dpm.sampler.map(|s| s.to_string()).as_deref(),
        Some("dpm++2m-15")
    );
    let cli = parse_args(&["elbo", "sample", "runs/x", "--sampler", "ddim-20"]).unwrap();
    let Command::Sample(args) = cli.command else {
        panic!("expected sample");
    };
    assert_eq!(args.sampler, Some("ddim-20".parse().unwrap()));
    // A negative guidance scale is a value (the model refuses it with its range), not an
    // unknown option.
    let cli = parse_args(&[
        "elbo",
        "sample",
        "runs/x",
        "--class",
        "1",
        "--guidance",
        "-1",
    ])
    .unwrap();
    let Command::Sample(args) = cli.command else {
        panic!("expected sample");
    };
    assert_eq!(args.steps.guidance, Some(-1.0));
    for bad in [
        vec!["elbo", "sample", "runs/x", "--sampler", "ddpm"],
        vec!["elbo", "sample", "runs/x", "--n", "0"],
        vec!["elbo", "sample", "runs/x", "--interpolate", "0"],
    ] {
        assert!(parse_args(&bad).is_err(), "{bad:?}");
    }
    let cli = parse_args(&["elbo", "train", "classifier", "--epochs", "3"]).unwrap();
    let Command::Train {
        model: TrainModel::Classifier(args),
    } = cli.command
    else {
        panic!("expected train classifier");
    };
    assert_eq!((args.epochs, args.batch_size, args.run.seed), (3, 128, 0));
    assert!(parse_args(&["elbo", "plot", "runs/x"]).is_ok());
}

#[test]
fn train_vdm_parses_its_schedule_and_features() {
    let parse_vdm = |extra: &[&str]| {
        let mut argv = vec!["elbo", "train", "vdm"];
        argv.extend_from_slice(extra);
        let cli = parse_args(&argv)?;
        let Command::Train {
            model: TrainModel::Vdm(args),
        } = cli.command
        else {
            panic!("expected train vdm");
        };
        Ok::<_, clap::Error>(args.job(Device::Cpu))
    };
    let job = parse_vdm(&[
        "--schedule",
        "fixed",
        "--gamma-min",
        "-10",
        "--fourier",
        "5,6,7",
        "--timesteps",
        "100",
        "--grid",
        "50",
    ])
    .unwrap();
    assert_eq!(job.gamma, Some(GammaKind::Fixed));
    // One end given: the other keeps Kingma et al.'s default.
    assert_eq!(job.gamma_range, Some((-10.0, 5.0)));
    assert_eq!(job.fourier, Some(vec![5, 6, 7]));
    assert_eq!((job.timesteps, job.grid), (Some(100), Some(50)));
    let config = job.config([1, 28, 28]).unwrap();
    assert_eq!(config.unet.extra_inputs, 6);
    let plain = parse_vdm(&["--no-fourier"]).unwrap();
    assert_eq!(plain.fourier, Some(Vec::new()));
    assert_eq!(plain.config([1, 28, 28]).unwrap().unet.extra_inputs, 0);
    let defaults = parse_vdm(&[]).unwrap().config([1, 28, 28]).unwrap();
    assert_eq!(defaults.gamma, GammaKind::Monotone);
    assert_eq!((defaults.gamma_min, defaults.gamma_max), (-13.3, 5.0));
    let err = parse_vdm(&["--schedule", "cosine"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "VDM noise schedule \"cosine\": expected one of fixed, learned-endpoints, monotone"
        ),
        "{err}"
    );
    let err = parse_vdm(&["--fourier", "6", "--no-fourier"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be used with"), "{err}");
    let err = parse_vdm(&["--gamma-min", "6"])
        .unwrap()
        .config([1, 28, 28])
        .unwrap_err()
        .to_string();
    assert!(err.contains("found 6 and 5"), "{err}");
}
