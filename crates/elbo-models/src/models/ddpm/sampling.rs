//! How a DDPM samples: the [`Denoiser`] its samplers run (the network's prediction and
//! the reverse step of its schedule), and its [`SteppedSampling`]: the sampler of
//! choice, classifier-free guidance towards one class ([`Guided`]) or every class in
//! turn.

use tch::{Kind, Tensor};

use super::Ddpm;
use super::guidance::{self, Guided};
use crate::error::{Error, Result};
use crate::models::SteppedSampling;
use crate::sample::{Classes, ClipX0, Denoiser, Guidance, NoiseProcess, SamplingOptions};

impl Ddpm {
    fn image_shape(&self, n: i64) -> [i64; 4] {
        let u = &self.config.unet;
        [n, u.in_channels, u.image_size, u.image_size]
    }
}

/// The number of classes of a guided draw of `n` of each class from `model`: an error
/// unless the model is class-conditional and n a multiple of its classes.
fn guided_classes(model: &Ddpm, n: i64) -> Result<i64> {
    let classes = guidance::classes_of(model)?;
    if n % classes != 0 {
        return Err(Error::Config {
            detail: format!(
                "drawing every class draws as many of each: expected a number of samples that \
                 is a multiple of {classes}, found {n}"
            ),
        });
    }
    Ok(classes)
}

impl Denoiser for Ddpm {
    fn process(&self) -> &dyn NoiseProcess {
        self.diffusion.schedule()
    }

    fn device(&self) -> tch::Device {
        self.diffusion.device()
    }

    fn predict(&self, x_t: &Tensor, t: usize, clip_x0: ClipX0) -> (Tensor, Tensor) {
        let t = Tensor::full([x_t.size()[0]], t as i64, (Kind::Int64, x_t.device()));
        let output = self.unet.forward(x_t, &t, false);
        self.diffusion.predictions(&output, x_t, &t, clip_x0)
    }

    fn ancestral_step(
        &self,
        x_t: &Tensor,
        t: usize,
        prev: usize,
        clip_x0: ClipX0,
    ) -> Result<(Tensor, Tensor)> {
        let steps = Tensor::full([x_t.size()[0]], t as i64, (Kind::Int64, x_t.device()));
        let output = self.unet.forward(x_t, &steps, false);
        self.diffusion
            .ancestral_step(&output, x_t, t, prev, clip_x0)
    }
}

impl SteppedSampling for Ddpm {
    /// DDIM with min(T, 50) uniform steps, `eta = 0`, each step's `x_0` clipped,
    /// unless [`Ddpm::with_sampling`] chose otherwise.
    fn default_sampling(&self) -> SamplingOptions {
        self.sampling
    }

    fn classes(&self) -> Option<i64> {
        self.null_label()
    }

    /// A guided draw must fit a class-conditional model ([`Guided::new`]'s errors);
    /// `Classes::All` is checked as its first class.
    fn check_guidance(&self, guidance: Option<Guidance>) -> Result<()> {
        match guidance {
            None => Ok(()),
            Some(guidance) => {
                let one = match guidance.classes {
                    Classes::All => Guidance {
                        classes: Classes::One(0),
                        ..guidance
                    },
                    Classes::One(_) => guidance,
                };
                Guided::new(self, &one, 1).map(|_| ())
            }
        }
    }

    /// With `options.guidance`, a class-conditional model's guided draw ([`Guided`]);
    /// `Classes::All` draws n / classes of each class in turn (in batches of at most
    /// 256), in class order, and keeps the frames of each.
    fn sample_with(
        &self,
        n: i64,
        options: &SamplingOptions,
        frames: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.check(options)?;
        let Some(guidance) = options.guidance else {
            return tch::no_grad(|| {
                crate::sample::sample(self, &self.image_shape(n), options, frames)
            });
        };
        let Classes::All = guidance.classes else {
            let guided = Guided::new(self, &guidance, n)?;
            return tch::no_grad(|| {
                crate::sample::sample(&guided, &self.image_shape(n), options, frames)
            });
        };
        let classes = guided_classes(self, n)?;
        let mut images = Vec::new();
        let mut kept: Vec<Vec<Tensor>> = Vec::new();
        for class in 0..classes {
            let mut left = n / classes;
            while left > 0 {
                let now = left.min(256);
                let one = SamplingOptions {
                    guidance: Some(Guidance {
                        classes: Classes::One(class),
                        ..guidance
                    }),
                    ..*options
                };
                let (x, states) = self.sample_with(now, &one, frames)?;
                images.push(x);
                kept.resize_with(states.len().max(kept.len()), Vec::new);
                for (all, state) in kept.iter_mut().zip(states) {
                    all.push(state);
                }
                left -= now;
            }
        }
        let frames = kept.iter().map(|f| Tensor::cat(f, 0)).collect();
        Ok((Tensor::cat(&images, 0), frames))
    }
}
