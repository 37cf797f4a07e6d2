//! The VDM's noise schedule on tensors: `gamma(t) = -log SNR(t)` on [0, 1], fixed or
//! learned, and the same schedule as a [`NoiseProcess`] on a grid of T steps for the
//! samplers.
//!
//! Every kind is written `gamma(t) = gamma_0 + (gamma_1 - gamma_0) s(t)` with a shape
//! `s` increasing from `s(0) = 0` to `s(1) = 1`:
//!
//! - `fixed`: `s(t) = t` between fixed endpoints (the linear schedule of
//!   [`elbo_math::vdm::LinearGamma`]);
//! - `learned-endpoints`: `s(t) = t` between learned endpoints `gamma.min`, `gamma.max`
//!   (Kingma et al.'s learnable-scalar schedule);
//! - `monotone`: learned endpoints and a learned shape, `s(t) = (phi(t) - phi(0)) /
//!   (phi(1) - phi(0))` with Kingma et al.'s monotone network `phi(t) = l1(t) +
//!   l3(sigmoid(l2(l1(t)))) / F` (weights taken in absolute value, so every layer is
//!   increasing; F features).
//!
//! The split matters for training: the continuous-time diffusion loss's expectation
//! depends on the endpoints only, so the endpoints take the ordinary gradient of the
//! bound and the shape the gradient of the loss's second moment (its variance, the mean
//! being fixed), as Kingma et al. do.

use elbo_math::NoiseSchedule;
use elbo_math::diffusion::{Posterior, posterior_between};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use crate::error::{Error, Result};
use crate::sample::NoiseProcess;

/// Which schedule a VDM has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GammaKind {
    /// Linear in gamma between fixed endpoints.
    Fixed,
    /// Linear in gamma between learned endpoints.
    LearnedEndpoints,
    /// Learned endpoints and a learned monotone shape (Kingma et al.'s network).
    #[default]
    Monotone,
}

/// `gamma` and `d gamma / dt` at a batch of times, and the shape `s(t)` and `s'(t)` as
/// the rest of the graph sees them.
pub struct GammaAt {
    /// `gamma(t)`, (B,).
    pub gamma: Tensor,
    /// `d gamma / dt`, (B,).
    pub derivative: Tensor,
    /// With [`GammaNet::at_split`], the shape's values `(s, s')` still attached to the
    /// shape's parameters, and the detached leaves that `gamma` and `derivative` were
    /// computed from, whose gradients [`GammaNet::shape_backward`] passes on.
    pub split: Option<ShapeSplit>,
}

/// The shape of a learned schedule cut out of the graph (see [`GammaNet::at_split`]).
pub struct ShapeSplit {
    attached: [Tensor; 2],
    leaves: [Tensor; 2],
}

/// Kingma et al.'s monotone network's parameters.
struct Monotone {
    l1_weight: Tensor,
    l1_bias: Tensor,
    l2_weight: Tensor,
    l2_bias: Tensor,
    l3_weight: Tensor,
}

impl Monotone {
    /// `phi(t)` and `phi'(t)` for times (B,), in float32 whatever the caller's autocast:
    /// under CUDA's bf16 autocast its products would round gamma by ~0.07, and the bound
    /// trained would not be the float32 one evaluation computes.
    fn phi(&self, t: &Tensor) -> (Tensor, Tensor) {
        tch::autocast(false, || self.phi_f32(t))
    }

    fn phi_f32(&self, t: &Tensor) -> (Tensor, Tensor) {
        // In `t`'s precision: float64 where differences of the schedule at nearby times
        // matter (the T-step loss).
        let kind = t.kind();
        let (w1, w2, w3) = (
            self.l1_weight.abs().to_kind(kind),
            self.l2_weight.abs().to_kind(kind),
            self.l3_weight.abs().to_kind(kind),
        );
        let (b1, b2) = (self.l1_bias.to_kind(kind), self.l2_bias.to_kind(kind));
        let features = w2.size()[0] as f64;
        // l1: 1 -> 1; l2: 1 -> F; l3: F -> 1, without bias.
        let u = t.unsqueeze(1).matmul(&w1.tr()) + b1; // (B, 1)
        let h = (u.matmul(&w2.tr()) + b2).sigmoid(); // (B, F)
        let phi = &u + h.matmul(&w3.tr()) / features;
        // d phi / dt = w1 (1 + sum_k w3_k h_k (1 - h_k) w2_k / F).
        let slope = (&h * (-&h + 1.0) * w2.tr()).matmul(&w3.tr()) / features;
        let derivative = w1.reshape([1, 1]) * (slope + 1.0);
        (phi.squeeze_dim(1), derivative.squeeze_dim(1))
    }
}

/// A VDM's schedule (its parameters under `gamma`) and the grid of steps its samplers
/// run on.
pub struct GammaNet {
    kind: GammaKind,
    ends: Ends,
    monotone: Option<Monotone>,
    grid: usize,
    device: tch::Device,
}

enum Ends {
    Fixed(f64, f64),
    Learned(Tensor, Tensor),
}

impl GammaNet {
    /// The schedule of kind `kind` under `path`, starting at (or fixed to) `gamma_0`,
    /// `gamma_1`; its monotone network has `features` units; samplers see it on `grid`
    /// steps.
    pub fn new(
        path: &nn::Path<'_>,
        kind: GammaKind,
        (gamma_0, gamma_1): (f64, f64),
        features: i64,
        grid: usize,
    ) -> Result<GammaNet> {
        if !(gamma_0.is_finite() && gamma_1.is_finite() && gamma_0 < gamma_1) {
            return Err(Error::Config {
                detail: format!(
                    "a VDM's schedule runs from gamma_min to a larger gamma_max, both finite; \
                     found {gamma_0} and {gamma_1}"
                ),
            });
        }
        if grid == 0 {
            return Err(Error::Config {
                detail: "a VDM's sampling grid needs at least 1 step, found 0".into(),
            });
        }
        let ends = match kind {
            GammaKind::Fixed => Ends::Fixed(gamma_0, gamma_1),
            _ => Ends::Learned(
                path.var("min", &[], nn::Init::Const(gamma_0)),
                path.var("max", &[], nn::Init::Const(gamma_1)),
            ),
        };
        let monotone = match kind {
            GammaKind::Monotone => {
                if !(1..=65_536).contains(&features) {
                    return Err(Error::Config {
                        detail: format!(
                            "the monotone schedule network needs 1 to 65536 features, found \
                             {features}"
                        ),
                    });
                }
                let normal = nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                };
                Some(Monotone {
                    // Starts as s(t) = t plus the sigmoid layer's (normalised) bend.
                    l1_weight: (path / "l1").var("weight", &[1, 1], nn::Init::Const(1.0)),
                    l1_bias: (path / "l1").var("bias", &[1], nn::Init::Const(0.0)),
                    l2_weight: (path / "l2").var("weight", &[features, 1], normal),
                    l2_bias: (path / "l2").var("bias", &[features], normal),
                    l3_weight: (path / "l3").var("weight", &[1, features], normal),
                })
            }
            _ => None,
        };
        Ok(GammaNet {
            kind,
            ends,
            monotone,
            grid,
            device: path.device(),
        })
    }

    /// The kind.
    pub fn kind(&self) -> GammaKind {
        self.kind
    }

    /// The shape `(s(t), s'(t))` for times (B,).
    fn shape(&self, t: &Tensor) -> (Tensor, Tensor) {
        match &self.monotone {
            None => (t.shallow_clone(), t.ones_like()),
            Some(net) => {
                let ends = Tensor::from_slice(&[0.0f32, 1.0])
                    .to_device(t.device())
                    .to_kind(t.kind());
                let (phi, phi_dot) = net.phi(t);
                let (phi_ends, _) = net.phi(&ends);
                let (p0, p1) = (phi_ends.get(0), phi_ends.get(1));
                let span = (&p1 - &p0).clamp_min(1e-12);
                ((phi - p0) / &span, phi_dot / span)
            }
        }
    }

    /// `(gamma_0, gamma_1)` as tensors (attached to the endpoints if learned).
    pub fn endpoints(&self) -> (Tensor, Tensor) {
        match &self.ends {
            Ends::Fixed(a, b) => (
                Tensor::from(*a as f32).to_device(self.device),
                Tensor::from(*b as f32).to_device(self.device),
            ),
            Ends::Learned(a, b) => (a.shallow_clone(), b.shallow_clone()),
        }
    }

    /// `(gamma_0, gamma_1)` now, in f64.
    pub fn endpoint_values(&self) -> (f64, f64) {
        let (a, b) = self.endpoints();
        (a.double_value(&[]), b.double_value(&[]))
    }

    fn combine(&self, s: &Tensor, s_dot: &Tensor) -> (Tensor, Tensor) {
        let (g0, g1) = self.endpoints();
        let span = &g1 - &g0;
        (&g0 + &span * s, span * s_dot)
    }

    /// `gamma` and `gamma'` at times `t` (B,), in [0, 1], with gradients to every
    /// parameter.
    pub fn at(&self, t: &Tensor) -> GammaAt {
        let (s, s_dot) = self.shape(t);
        let (gamma, derivative) = self.combine(&s, &s_dot);
        GammaAt {
            gamma,
            derivative,
            split: None,
        }
    }

    /// [`GammaNet::at`] with the learned shape cut out of the graph: `gamma` and
    /// `gamma'` depend on the shape through detached leaves, so the loss's backward pass
    /// stops there, and [`GammaNet::shape_backward`] then gives the shape the gradient
    /// it should have. Without a learned shape, the same as `at`.
    pub fn at_split(&self, t: &Tensor) -> GammaAt {
        if self.monotone.is_none() {
            return self.at(t);
        }
        let (s, s_dot) = self.shape(t);
        let leaves = [
            s.detach().set_requires_grad(true),
            s_dot.detach().set_requires_grad(true),
        ];
        let (gamma, derivative) = self.combine(&leaves[0], &leaves[1]);
        GammaAt {
            gamma,
            derivative,
            split: Some(ShapeSplit {
                attached: [s, s_dot],
                leaves,
            }),
        }
    }

    /// After the loss's backward pass: the shape's parameters receive the leaves'
    /// gradients multiplied per example by `scale` (B,). With `scale = 2 L_i` for
    /// example i's loss `L_i` in the batch mean, that is the gradient of the mean of
    /// `L_i^2`: the variance-minimising gradient. Nothing to do without a split.
    pub fn shape_backward(split: &ShapeSplit, scale: &Tensor) {
        let mut surrogate: Option<Tensor> = None;
        for (attached, leaf) in split.attached.iter().zip(&split.leaves) {
            let grad = leaf.grad();
            if !grad.defined() {
                continue;
            }
            let term = (attached * (grad * scale).detach()).sum(Kind::Float);
            surrogate = Some(match surrogate {
                None => term,
                Some(s) => s + term,
            });
        }
        if let Some(surrogate) = surrogate
            && surrogate.requires_grad()
        {
            surrogate.backward();
        }
    }

    /// The schedule on its grid of T steps, `alpha_bar_i = sigmoid(-gamma(i / T))`, as
    /// elbo-math's discrete schedule (one batched evaluation).
    pub fn discretized(&self) -> Result<NoiseSchedule> {
        let alpha_bar = tch::no_grad(|| {
            let t = Tensor::arange_start(1, self.grid as i64 + 1, (Kind::Double, self.device))
                / self.grid as f64;
            let gamma = self.at(&t.to_kind(Kind::Float)).gamma.to_kind(Kind::Double);
            (-gamma).sigmoid().to_device(tch::Device::Cpu)
        });
        let alpha_bar = Vec::<f64>::try_from(alpha_bar)?;
        NoiseSchedule::from_alpha_bar(&alpha_bar).map_err(|e| Error::Config {
            detail: format!(
                "the VDM's schedule on its grid of {} steps is not a noise schedule (gamma \
                 must increase): {e}",
                self.grid
            ),
        })
    }

    /// `gamma(i / T)` at grid step `i` (0..=T), in f64.
    pub fn gamma_at_step(&self, i: usize) -> f64 {
        tch::no_grad(|| {
            let t =
                Tensor::from_slice(&[(i as f64 / self.grid as f64) as f32]).to_device(self.device);
            self.at(&t).gamma.double_value(&[0])
        })
    }

    /// The posterior `q(z_prev | z_t, x_0)` from grid step `t` (of `1..=T`) back to
    /// `prev < t`: elbo-math's [`posterior_between`] the two steps' `alpha_bar`s.
    pub(super) fn step_posterior(&self, t: usize, prev: usize) -> Result<Posterior> {
        let (ab, ab_prev) = (self.alpha_bar(t)?, self.alpha_bar(prev.min(t))?);
        posterior_between(ab_prev, ab).map_err(math)
    }
}

fn math(e: elbo_math::MathError) -> Error {
    Error::MathIn {
        what: "the VDM's schedule".to_string(),
        source: e,
    }
}

/// The learned schedule as samplers see it: `alpha_bar(i) = sigmoid(-gamma(i / T))` on
/// the grid, with `alpha_bar(0) = 1` (the data; the decoder's `gamma_0` is within a
/// pixel's width of it). Evaluated from the current parameters at each call.
impl NoiseProcess for GammaNet {
    fn timesteps(&self) -> usize {
        self.grid
    }
    fn alpha_bar(&self, t: usize) -> Result<f64> {
        if t == 0 {
            return Ok(1.0);
        }
        if t > self.grid {
            return Err(Error::Config {
                detail: format!("step {t} is past the VDM's grid of {} steps", self.grid),
            });
        }
        Ok(elbo_math::vdm::alpha_squared(self.gamma_at_step(t)))
    }
    fn posterior_variance(&self, t: usize) -> Result<f64> {
        Ok(self.step_posterior(t, t.saturating_sub(1))?.variance())
    }
    fn respace(&self, kept: &[usize]) -> Result<NoiseSchedule> {
        self.discretized()?.respace(kept).map_err(math)
    }
    fn log_snr(&self, t: usize) -> Result<f64> {
        if t == 0 {
            return Ok(f64::INFINITY);
        }
        self.alpha_bar(t)?;
        Ok(-self.gamma_at_step(t))
    }
}
