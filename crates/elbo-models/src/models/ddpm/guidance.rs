//! Classifier-free guidance (Ho & Salimans 2022). A class-conditional DDPM learns
//! `eps(x_t, c)` for each class `c` and, from the labels dropped during training
//! (`cond_drop`), `eps(x_t, null)`, the unconditional model. Sampling with
//! `eps = (1 + w) eps(x_t, c) - w eps(x_t, null)` moves each step towards images the
//! model finds more typical of `c` than of the data as a whole: larger `w` trades
//! diversity for fidelity to the class.
//!
//! The two predictions come from one network call on the batch doubled (the labels,
//! then the null label). Whatever the network predicts (eps, x_0 or v) is affine in eps
//! with the same coefficients for both halves at `(x_t, t)`, so combining the outputs
//! is combining the eps predictions. [`Guided`] is a [`Denoiser`]: every sampler guides.

use tch::{Device, Kind, Tensor};

use super::Ddpm;
use crate::error::{Error, Result};
use crate::sample::{Classes, ClipX0, Denoiser, Guidance, NoiseProcess};

/// The classes of a class-conditional model; an error naming the option otherwise.
pub fn classes_of(model: &Ddpm) -> Result<i64> {
    model.null_label().ok_or_else(|| Error::Config {
        detail: "classes and guidance need a class-conditional DDPM (trained with \
                 --cond-drop), found an unconditional one"
            .into(),
    })
}

/// A class-conditional DDPM guided towards given labels: the [`Denoiser`] the samplers
/// run.
pub struct Guided<'a> {
    model: &'a Ddpm,
    /// (n,) int64 labels.
    labels: Tensor,
    /// The null label's, (n,).
    null: Tensor,
    scale: f64,
}

impl<'a> Guided<'a> {
    /// `model` guided as `guidance` says for a batch of `n`, which must name one class
    /// (`Classes::All` is drawn class by class, see [`Ddpm`]'s `sample_with`). Errors: an
    /// unconditional model, a class out of range, a scale that is negative or not
    /// finite, and a positive scale on a model trained without label dropout (its null
    /// label was never trained).
    pub fn new(model: &'a Ddpm, guidance: &Guidance, n: i64) -> Result<Guided<'a>> {
        let classes = classes_of(model)?;
        let class = match guidance.classes {
            Classes::One(k) if (0..classes).contains(&k) => k,
            other => {
                return Err(Error::Config {
                    detail: format!(
                        "expected a class between 0 and {} (the model has {classes}), found {other}",
                        classes - 1
                    ),
                });
            }
        };
        let w = guidance.scale;
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::Config {
                detail: format!("the guidance scale must be a finite w >= 0, found {w}"),
            });
        }
        if w > 0.0 && model.config().cond_drop == 0.0 {
            return Err(Error::Config {
                detail: format!(
                    "guidance w = {w} needs the unconditional model of label dropout, but this \
                     model was trained with --cond-drop 0: its null label is untrained (use w = 0)"
                ),
            });
        }
        let device = model.diffusion.device();
        Ok(Guided {
            model,
            labels: Tensor::full([n], class, (Kind::Int64, device)),
            null: Tensor::full([n], classes, (Kind::Int64, device)),
            scale: w,
        })
    }

    /// The conditional and the unconditional outputs at `(x_t, t)` from one call on the
    /// doubled batch.
    pub fn both(&self, x_t: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
        let x = Tensor::cat(&[x_t, x_t], 0);
        let steps = Tensor::cat(&[t, t], 0);
        let labels = Tensor::cat(&[&self.labels, &self.null], 0);
        let out = self
            .model
            .unet
            .forward_labelled(&x, &steps, Some(&labels), false);
        let halves = out.chunk(2, 0);
        (halves[0].shallow_clone(), halves[1].shallow_clone())
    }

    /// The guided output at `(x_t, t)`: at w = 0 the conditional network's alone (one
    /// call on the batch), else `(1 + w) cond - w uncond` from [`Guided::both`].
    pub fn output(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        if self.scale == 0.0 {
            return self
                .model
                .unet
                .forward_labelled(x_t, t, Some(&self.labels), false);
        }
        let (cond, uncond) = self.both(x_t, t);
        let diffusion = &self.model.diffusion;
        let guided = diffusion.mean_output(&cond, x_t) * (1.0 + self.scale)
            - diffusion.mean_output(&uncond, x_t) * self.scale;
        if !diffusion.learns_variance() {
            return guided;
        }
        // A learned variance is the conditional model's (GLIDE's and diffusers' choice):
        // guidance moves the mean only.
        let c = x_t.size()[1];
        Tensor::cat(&[guided, cond.narrow(1, c, c)], 1)
    }
}

impl Denoiser for Guided<'_> {
    fn process(&self) -> &dyn NoiseProcess {
        Denoiser::process(self.model)
    }

    fn device(&self) -> Device {
        self.model.diffusion.device()
    }

    fn predict(&self, x_t: &Tensor, t: usize, clip_x0: ClipX0) -> (Tensor, Tensor) {
        let t = Tensor::full([x_t.size()[0]], t as i64, (Kind::Int64, x_t.device()));
        let output = self.output(x_t, &t);
        self.model.diffusion.predictions(&output, x_t, &t, clip_x0)
    }

    fn ancestral_step(
        &self,
        x_t: &Tensor,
        t: usize,
        prev: usize,
        clip_x0: ClipX0,
    ) -> crate::error::Result<(Tensor, Tensor)> {
        let steps = Tensor::full([x_t.size()[0]], t as i64, (Kind::Int64, x_t.device()));
        let output = self.output(x_t, &steps);
        self.model
            .diffusion
            .ancestral_step(&output, x_t, t, prev, clip_x0)
    }
}
