//! Adam and AdamW whose moment tensors this crate owns, so that they can be saved in a
//! checkpoint and restored exactly (tch's optimisers keep their state out of reach).

use std::collections::BTreeMap;

use tch::{Kind, Tensor, nn::VarStore};

use crate::error::{Error, Result};
use crate::sys::ffi::{FusedAdamStep, fused_adam};

/// Adam's hyper-parameters. `weight_decay > 0` gives AdamW (decoupled decay, Loshchilov
/// & Hutter), applied as PyTorch's `AdamW` does: `p <- p (1 - lr wd)` before the step.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Exponential decay of the first moment.
    pub beta1: f64,
    /// Exponential decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (0 for plain Adam).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam over the trainable variables of a [`VarStore`], in the order of their names.
pub struct Adam {
    config: AdamConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: i64,
    fused: bool,
    /// Each variable's learning-rate multiplier (1 unless [`Adam::scale_lr`] set one).
    lr_scale: Vec<f64>,
    /// `steps` as the fused kernel reads it: on the parameters' device, counted there
    /// (made from `steps` when missing, after a restore).
    step_on_device: Option<Tensor>,
}

impl Adam {
    /// An optimiser for every trainable variable in `vs`, with zero moments.
    pub fn new(vs: &VarStore, config: AdamConfig) -> Adam {
        let trainable: Vec<Tensor> = vs.trainable_variables();
        let variables: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        debug_assert_eq!(trainable.len(), variables.len());
        let (names, params): (Vec<String>, Vec<Tensor>) = variables.into_iter().unzip();
        let m = params.iter().map(Tensor::zeros_like).collect();
        let v = params.iter().map(Tensor::zeros_like).collect();
        let lr_scale = vec![1.0; params.len()];
        Adam {
            lr_scale,
            config,
            names,
            params,
            m,
            v,
            steps: 0,
            fused: true,
            step_on_device: None,
        }
    }

    /// Whether steps use libtorch's fused Adam kernel (one pass over each parameter;
    /// the default) or tch's elementary operations (about eight passes). Both compute
    /// the same update; the fused one is used when the kernel takes the variables' kind
    /// and device. Either way a variable without a gradient is left alone.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Multiplies the learning rate of the variables whose names start with `prefix` by
    /// `multiplier` (a parameter group of its own, as PyTorch's optimisers have; the
    /// warm-up and decay scale every group alike); returns how many variables it names.
    pub fn scale_lr(&mut self, prefix: &str, multiplier: f64) -> usize {
        let mut named = 0;
        for (name, scale) in self.names.iter().zip(&mut self.lr_scale) {
            if name.starts_with(prefix) {
                *scale = multiplier;
                named += 1;
            }
        }
        named
    }

    /// The variables it updates, in a fixed order (by name).
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// How many steps have been taken.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Clears every gradient: drops it (it becomes undefined, as PyTorch's
    /// `zero_grad(set_to_none=True)`), so that the next backward pass writes each
    /// gradient into a fresh buffer rather than zeroing one and adding to it; without the
    /// compiled shim, zeroes it.
    pub fn zero_grad(&mut self) {
        if crate::sys::ffi::clear_grads(&self.params).is_err() {
            for p in &mut self.params {
                p.zero_grad();
            }
        }
    }

    /// The global L2 norm of the gradients before clipping, as a one-element float32
    /// tensor on the gradients' device (zero without gradients); every gradient is
    /// scaled by `min(1, max_norm / (norm + 1e-6))`, on the device, as
    /// `torch.nn.utils.clip_grad_norm_` does, so that clipping never waits for the
    /// device. With an infinite `max_norm` the gradients are left as they are.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.grad())
                .filter(|g| g.defined())
                .collect();
            if grads.is_empty() {
                let device = self.params.first().map_or(tch::Device::Cpu, Tensor::device);
                return Tensor::zeros([], (Kind::Float, device));
            }
            let squares: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Float)).collect();
            let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt();
            if max_norm.is_finite() {
                // max_norm / (norm + 1e-6) as PyTorch computes a scalar over a tensor.
                let scale = (&norm + 1e-6)
                    .reciprocal()
                    .g_mul_scalar(max_norm)
                    .clamp_max(1.0);
                for g in &grads {
                    let _ = g.shallow_clone().g_mul_(&scale);
                }
            }
            norm
        })
    }

    /// Counts a step without updating anything (a skipped update), so that the step
    /// count, and with it the bias correction, stays that of the training loop and a
    /// resumed run continues exactly.
    pub fn skip_step(&mut self) {
        self.steps += 1;
        if let Some(on_device) = &mut self.step_on_device {
            let _ = tch::no_grad(|| on_device.g_add_scalar_(1.0));
        }
    }

    /// One Adam step at learning rate `lr`, from the current gradients.
    pub fn step(&mut self, lr: f64) {
        self.step_unless(lr, None);
    }

    /// One Adam step at learning rate `lr`, unless `held` (a one-element float32 tensor
    /// on the parameters' device) holds 1; counted as a step either way, as
    /// [`Adam::skip_step`] counts one. The fused kernel reads the flag on the device, so
    /// that deciding never waits for it; the unfused step reads it on the host.
    pub fn step_unless(&mut self, lr: f64, held: Option<&Tensor>) {
        if !self.fused && held.is_some_and(|h| h.double_value(&[]) != 0.0) {
            self.skip_step();
            return;
        }
        self.steps += 1;
        let AdamConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let t = self.steps as f64;
        let bias1 = 1.0 - beta1.powf(t);
        let bias2_sqrt = (1.0 - beta2.powf(t)).sqrt();
        let step_size = lr / bias1;
        if self.fused {
            // A variable without a gradient (it took no part in the loss) is left alone,
            // moments included, as PyTorch leaves a parameter whose grad is None. One
            // kernel call per learning-rate group.
            let mut groups: Vec<(f64, [Vec<Tensor>; 4])> = Vec::new();
            for (i, p) in self.params.iter().enumerate() {
                let g = p.grad();
                if g.defined() {
                    let scale = self.lr_scale[i];
                    let at = match groups.iter().position(|(s, _)| *s == scale) {
                        Some(at) => at,
                        None => {
                            groups.push((scale, Default::default()));
                            groups.len() - 1
                        }
                    };
                    let lists = &mut groups[at].1;
                    lists[0].push(p.shallow_clone());
                    lists[1].push(g);
                    lists[2].push(self.m[i].shallow_clone());
                    lists[3].push(self.v[i].shallow_clone());
                }
            }
            let hyper = |scale: f64| FusedAdamStep {
                lr: lr * scale,
                beta1,
                beta2,
                weight_decay,
                eps,
                decoupled: true,
            };
            // The step count stays on the device and is counted there: copying it from
            // the host at every step would wait for the GPU to drain.
            let step = match self.step_on_device.take() {
                Some(mut on_device) => {
                    let _ = tch::no_grad(|| on_device.g_add_scalar_(1.0));
                    on_device
                }
                None => {
                    let device = self.params.first().map_or(tch::Device::Cpu, Tensor::device);
                    Tensor::from_slice(&[self.steps as f32]).to_device(device)
                }
            };
            let result = groups
                .iter()
                .try_for_each(|(scale, [params, grads, m, v])| {
                    fused_adam(params, grads, m, v, &step, held, hyper(*scale))
                });
            self.step_on_device = Some(step);
            match result {
                Ok(()) => return,
                // A kind or device the fused kernel does not take: the unfused step,
                // from now on.
                Err(message) => {
                    tracing::debug!("fused Adam unavailable ({message}); using tch's operations");
                    self.fused = false;
                    if held.is_some_and(|h| h.double_value(&[]) != 0.0) {
                        return;
                    }
                }
            }
        }
        // Unfused: a variable without a gradient is left alone here too.
        tch::no_grad(|| {
            let vars = self.params.iter_mut().zip(&mut self.m).zip(&mut self.v);
            for (((p, m), v), scale) in vars.zip(&self.lr_scale) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let (lr, step_size) = (lr * scale, step_size * scale);
                if weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = m.lerp_(&g, 1.0 - beta1);
                let _ = v.lerp_(&g.square(), 1.0 - beta2);
                // p <- p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
                let mut denom = v.sqrt();
                let _ = denom.g_div_scalar_(bias2_sqrt);
                let _ = denom.g_add_scalar_(eps);
                let _ = denom.g_mul_scalar_(-1.0 / step_size);
                let _ = p.addcdiv_(m, &denom);
            }
        });
    }

    /// The moments as named tensors (`adam.m.<var>`, `adam.v.<var>`: the prefix is
    /// [`super::layout::ADAM`]), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.names.len());
        for (name, (m, v)) in self.names.iter().zip(self.m.iter().zip(&self.v)) {
            out.push((
                format!("{}m.{name}", super::layout::ADAM),
                m.shallow_clone(),
            ));
            out.push((
                format!("{}v.{name}", super::layout::ADAM),
                v.shallow_clone(),
            ));
        }
        out
    }

    /// Restores moments saved by [`Adam::state`] and the step count; every moment must
    /// be present with its variable's shape.
    pub fn load_state(&mut self, named: &BTreeMap<String, Tensor>, steps: i64) -> Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            for (moment, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{}{moment}.{name}", super::layout::ADAM);
                let saved = named.get(&key).ok_or_else(|| Error::Checkpoint {
                    detail: format!("optimiser state {key} is missing"),
                })?;
                if saved.size() != slot.size() {
                    return Err(Error::Checkpoint {
                        detail: format!(
                            "optimiser state {key} has shape {:?}, the model needs {:?}",
                            saved.size(),
                            slot.size()
                        ),
                    });
                }
                tch::no_grad(|| slot.copy_(saved));
            }
        }
        self.steps = steps;
        self.step_on_device = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};

    /// Adam on f(x) = sum (x - 3)^2 against the update written out in f64.
    #[test]
    fn matches_the_adam_update_written_out_in_f64() {
        let _generator = crate::testing::generator_lock();
        let vs = VarStore::new(tch::Device::Cpu);
        let x = vs.root().var("x", &[1], nn::Init::Const(0.5));
        let config = AdamConfig {
            weight_decay: 0.01,
            ..AdamConfig::default()
        };
        let mut adam = Adam::new(&vs, config);
        let (mut xr, mut m, mut v) = (0.5f64, 0.0f64, 0.0f64);
        let lr = 0.1;
        for t in 1..=20 {
            adam.zero_grad();
            (&x - 3.0).square().sum(Kind::Float).backward();
            adam.step(lr);
            let g = 2.0 * (xr - 3.0);
            xr *= 1.0 - lr * config.weight_decay;
            m = config.beta1 * m + (1.0 - config.beta1) * g;
            v = config.beta2 * v + (1.0 - config.beta2) * g * g;
            let mhat = m / (1.0 - config.beta1.powi(t));
            let vhat = v / (1.0 - config.beta2.powi(t));
            xr -= lr * mhat / (vhat.sqrt() + config.eps);
        }
        // f32 parameters: 20 steps of a handful of f32 operations each, around 1e-6
        // relative per step.
        let got = x.double_value(&[0]);
        assert!((got - xr).abs() < 1e-4, "tensor {got}, f64 {xr}");
        assert_eq!(adam.steps(), 20);
    }

    #[test]
    fn state_round_trips_and_resumes_identically() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(1);
        let make = || {
            let vs = VarStore::new(tch::Device::Cpu);
            let net = nn::linear(vs.root() / "fc", 3, 2, Default::default());
            (vs, net)
        };
        let (vs_a, net_a) = make();
        let (mut vs_b, net_b) = make();
        vs_b.copy(&vs_a).unwrap();
        let input = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu));
        let mut adam_a = Adam::new(&vs_a, AdamConfig::default());
        let train = |adam: &mut Adam, net: &nn::Linear| {
            adam.zero_grad();
            net.forward(&input).square().mean(Kind::Float).backward();
            adam.step(0.01);
        };
        for _ in 0..3 {
            train(&mut adam_a, &net_a);
        }
        vs_b.copy(&vs_a).unwrap();
        let saved: BTreeMap<String, Tensor> = adam_a
            .state()
            .into_iter()
            .map(|(k, t)| (k, t.copy()))
            .collect();
        let mut adam_b = Adam::new(&vs_b, AdamConfig::default());
        adam_b.load_state(&saved, adam_a.steps()).unwrap();
        train(&mut adam_a, &net_a);
        train(&mut adam_b, &net_b);
        assert!(net_a.ws.equal(&net_b.ws), "bit-identical after resume");
        assert!(net_a.bs.as_ref().unwrap().equal(net_b.bs.as_ref().unwrap()));

        let mut missing: BTreeMap<String, Tensor> = saved
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        missing.remove("adam.v.fc.weight");
        let err = adam_b.load_state(&missing, 3).unwrap_err().to_string();
        assert!(err.contains("adam.v.fc.weight is missing"), "{err}");
    }

    /// libtorch's fused kernel and the elementary operations give the same Adam and
    /// AdamW, and the fused one really runs (it reports no fallback).
    #[test]
    fn fused_and_unfused_steps_agree() {
        let _generator = crate::testing::generator_lock();
        // One draw of the weights and the input, copied into each run: no re-seeding of
        // libtorch's global generator, which other test threads draw from.
        let source = VarStore::new(tch::Device::Cpu);
        let _ = nn::linear(source.root() / "fc", 6, 4, Default::default());
        let input = Tensor::randn([8, 6], (Kind::Float, tch::Device::Cpu));
        let run = |fused: bool, weight_decay: f64| {
            let mut vs = VarStore::new(tch::Device::Cpu);
            let net = nn::linear(vs.root() / "fc", 6, 4, Default::default());
            vs.copy(&source).unwrap();
            let config = AdamConfig {
                weight_decay,
                ..AdamConfig::default()
            };
            let mut adam = Adam::new(&vs, config);
            adam.set_fused(fused);
            for i in 0..10 {
                adam.zero_grad();
                net.forward(&input).square().mean(Kind::Float).backward();
                // Skipped updates count as steps (the bias correction's t): the fused
                // kernel's count, kept on the device, must follow them.
                if i % 4 == 3 {
                    adam.skip_step();
                } else {
                    adam.step(0.05);
                }
            }
            assert_eq!(adam.steps, 10);
            assert_eq!(adam.fused, fused, "no fallback from the fused kernel");
            if fused {
                let on_device = adam.step_on_device.as_ref().unwrap().double_value(&[0]);
                assert_eq!(on_device, 10.0, "the device's count follows the loop's");
            }
            (net.ws.copy(), adam.state())
        };
        for weight_decay in [0.0, 0.1] {
            let (fused_w, fused_state) = run(true, weight_decay);
            let (plain_w, plain_state) = run(false, weight_decay);
            // f32 throughout; the two orders of operations differ by rounding only.
            let gap = (&fused_w - &plain_w).abs().max().double_value(&[]);
            assert!(
                gap < 1e-5,
                "weights differ by {gap} (weight decay {weight_decay})"
            );
            for ((name, a), (_, b)) in fused_state.iter().zip(&plain_state) {
                let gap = (a - b).abs().max().double_value(&[]);
                assert!(gap < 1e-6, "{name} differs by {gap}");
            }
        }
    }

    /// After `zero_grad` a variable that takes no part in the loss has no gradient, and
    /// the (fused) step leaves it and its moments alone while updating the others.
    #[test]
    fn variables_without_gradients_are_left_alone() {
        let _generator = crate::testing::generator_lock();
        let vs = VarStore::new(tch::Device::Cpu);
        let used = vs.root().var("used", &[3], nn::Init::Const(1.0));
        let unused = vs.root().var("unused", &[2], nn::Init::Const(1.0));
        let mut adam = Adam::new(&vs, AdamConfig::default());
        for _ in 0..3 {
            adam.zero_grad();
            assert!(!used.grad().defined(), "zero_grad drops the gradient");
            used.square().sum(Kind::Float).backward();
            adam.step(0.1);
        }
        assert!(adam.fused, "the fused kernel ran");
        assert!(!unused.grad().defined());
        assert_eq!(Vec::<f32>::try_from(&unused).unwrap(), vec![1.0, 1.0]);
        let state: BTreeMap<String, Tensor> = adam.state().into_iter().collect();
        let moment = |name: &str| state[name].abs().max().double_value(&[]);
        assert_eq!(moment("adam.m.unused"), 0.0);
        assert_eq!(moment("adam.v.unused"), 0.0);
        assert!(moment("adam.m.used") > 0.0);
        // Adam's step is lr m_hat / sqrt(v_hat), about lr while the gradient keeps its
        // sign; it falls a little below as the gradient 2x shrinks from 2 to 1.5: three
        // steps of lr 0.1 move x by just under 0.3.
        let moved = 1.0 - used.double_value(&[0]);
        assert!((0.29..=0.3).contains(&moved), "moved {moved}");
    }

    /// Clipping on the device equals `torch.nn.utils.clip_grad_norm_`'s formula: the
    /// gradient scaled by min(1, max / (norm + 1e-6)), the norm reported before it.
    #[test]
    fn clipping_on_the_device_follows_pytorch() {
        let _generator = crate::testing::generator_lock();
        let vs = VarStore::new(tch::Device::Cpu);
        let x = vs.root().var("x", &[2], nn::Init::Const(0.0));
        let mut adam = Adam::new(&vs, AdamConfig::default());
        let g = Tensor::from_slice(&[30.0f32, 40.0]);
        (&x * &g).sum(Kind::Float).backward();
        let norm = adam.clip_grad_norm(2.0).double_value(&[]);
        assert_eq!(norm, 50.0);
        let scale = 2.0f32 / (50.0f32 + 1e-6);
        let expected = [30.0 * scale, 40.0 * scale];
        let got = Vec::<f32>::try_from(x.grad()).unwrap();
        for (a, b) in got.iter().zip(expected) {
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b.abs(),
                "{got:?} vs {expected:?}"
            );
        }
        // Under the limit the gradient is multiplied by exactly 1.
        let norm = adam.clip_grad_norm(100.0).double_value(&[]);
        assert!((norm - 2.0).abs() < 1e-5, "{norm}");
        assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), got);
    }

    /// A learning-rate group: the variables a prefix names move `multiplier` times as
    /// far on Adam's first step (whose update is lr m_hat / (sqrt(v_hat) + eps), about
    /// lr for any gradient), fused or not; an unknown prefix names none.
    #[test]
    fn a_learning_rate_group_scales_its_variables_updates() {
        let _generator = crate::testing::generator_lock();
        for fused in [true, false] {
            let vs = VarStore::new(tch::Device::Cpu);
            let a = vs.root().var("a", &[2], nn::Init::Const(1.0));
            let b = vs.root().sub("gamma").var("b", &[2], nn::Init::Const(1.0));
            let mut adam = Adam::new(&vs, AdamConfig::default());
            adam.set_fused(fused);
            assert_eq!(adam.scale_lr("gamma.", 10.0), 1);
            assert_eq!(adam.scale_lr("nothing.", 2.0), 0);
            (&a * 3.0 + &b * 3.0).sum(Kind::Float).backward();
            adam.step(0.01);
            let moved = |t: &Tensor| 1.0 - t.double_value(&[0]);
            let ratio = moved(&b) / moved(&a);
            assert!((ratio - 10.0).abs() < 1e-4, "fused {fused}: {ratio}");
            assert_eq!(adam.fused, fused);
        }
    }
}
