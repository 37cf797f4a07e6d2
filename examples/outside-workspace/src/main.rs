//! Trains a VAE for a few steps on the bundled MNIST sample with elbo's trainer, then
//! prints its bound on 200 test images.

use std::sync::atomic::AtomicBool;

use elbo_models::models::ModelConfig;
use elbo_models::models::vae::{VaeConfig, VaePreset};
use elbo_models::nn::likelihood::Likelihood;
use elbo_models::train::{self, Control, RunDir, TrainConfig};
use elbo_models::{data, eval, fit, models};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let splits = elbo_data::load_bundled()?;
    let device = elbo_models::DeviceSpec::Auto.resolve()?;
    let config = ModelConfig::Vae(VaeConfig::preset(
        VaePreset::Mlp,
        [1, 28, 28],
        Likelihood::Bernoulli,
    )?);
    let mut vs = train::var_store(0, device);
    let model = config.build(&vs.root())?;
    let run = std::env::temp_dir().join(format!("elbo-outside-{}", std::process::id()));
    let settings = TrainConfig {
        steps: 20,
        cadence: train::Cadence { eval_examples: 0, ..train::Cadence::default() },
        ..TrainConfig::default()
    };
    let step = models::step_for(model.as_ref(), &settings.aids)?;
    let stop = AtomicBool::new(false);
    let report = fit::trainer(model.as_ref(), settings, RunDir::new(&run), "vae-mlp", None)
        .fit(
            step.as_ref(),
            &mut vs,
            &splits.train,
            Control {
                resume: false,
                stop: &stop,
                allow_changes: false,
            },
            &mut (),
        )?;
    let test = data::fixed_tensor(&splits.test, model.likelihood(), Some(200), device)?;
    let bound = eval::evaluate(model.as_ref(), &test, None, 100)?;
    println!(
        "trained {} steps; test ELBO {:.2} nats per image",
        report.steps_taken, bound.elbo
    );
    std::fs::remove_dir_all(&run)?;
    Ok(())
}
