//! GroupNorm, optionally after adding a per-(example, channel) shift and optionally
//! followed by SiLU: `silu(group_norm(x + shift))`, the UNet's normalise-then-activate
//! (the shift is its time embedding), and its attention's plain GroupNorm.
//!
//! On float32 CPU tensors this runs as elbo's fused kernel ([`crate::sys::ffi::group_norm`]):
//! one pass over memory forward and one backward where libtorch's separate add,
//! GroupNorm and SiLU make three and four, and it keeps only its input for the backward
//! pass (the separate operations also keep the normalised tensor). libtorch's own
//! GroupNorm kernels are also slow on small maps (7x7: a 49-element row per channel).
//! A channels-last input (the UNet's on the CPU) runs the kernel's per-example path,
//! vectorised over the channels, and the output keeps that layout.
//! Elsewhere (CUDA, other kinds, a build without the compiled shim) it runs libtorch's
//! operations; both compute the same function up to float rounding. The variables are
//! those of tch's `nn::group_norm` (`weight`, `bias`), so checkpoints do not change.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// GroupNorm's epsilon: tch's and PyTorch's default, which `nn::group_norm` is built with.
pub(crate) const EPS: f64 = 1e-5;

/// An affine GroupNorm, followed by SiLU when `silu` (see the module docs).
#[derive(Debug)]
pub(crate) struct GroupNorm {
    norm: nn::GroupNorm,
    silu: bool,
    eps: f64,
}

impl GroupNorm {
    /// Variables `weight` and `bias` (C) under `path`; SiLU after the norm when `silu`;
    /// the epsilon `eps` ([`EPS`], PyTorch's; TensorFlow's models, and diffusers' ports
    /// of them, use 1e-6).
    pub(crate) fn with_eps(
        path: nn::Path<'_>,
        groups: i64,
        channels: i64,
        silu: bool,
        eps: f64,
    ) -> GroupNorm {
        let config = nn::GroupNormConfig {
            eps,
            ..Default::default()
        };
        GroupNorm {
            norm: nn::group_norm(path, groups, channels, config),
            silu,
            eps,
        }
    }

    /// `group_norm(x + shift)` (then SiLU), `x` (N, C, ...), `shift` (N, C) or none.
    pub(crate) fn forward(&self, x: &Tensor, shift: Option<&Tensor>) -> Tensor {
        if let Some(z) = self.fused(x, shift) {
            return z;
        }
        self.separate(x, shift)
    }

    /// The fused kernel, where it applies: float32 CPU tensors, a build with the shim.
    /// A failure there is a shape error, reported as tch reports one (a panic with
    /// the reason), never hidden behind the separate operations.
    fn fused(&self, x: &Tensor, shift: Option<&Tensor>) -> Option<Tensor> {
        let (weight, bias) = (self.norm.ws.as_ref()?, self.norm.bs.as_ref()?);
        let float_cpu = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float;
        if !(cfg!(elbo_ops) && float_cpu(x) && float_cpu(weight) && shift.is_none_or(float_cpu)) {
            return None;
        }
        let groups = self.norm.num_groups;
        match crate::sys::ffi::group_norm(x, shift, weight, bias, groups, self.eps, self.silu) {
            Ok(z) => Some(z),
            Err(reason) => panic!("GroupNorm of a {:?} input: {reason}", x.size()),
        }
    }

    /// libtorch's separate operations.
    fn separate(&self, x: &Tensor, shift: Option<&Tensor>) -> Tensor {
        let normed = match shift {
            Some(s) => {
                let mut size = s.size();
                size.resize(x.dim(), 1);
                self.norm.forward(&(x + s.view(size.as_slice())))
            }
            None => self.norm.forward(x),
        };
        if self.silu { normed.silu() } else { normed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(shape: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    /// A layer with non-trivial weight and bias.
    fn layer(vs: &nn::VarStore, groups: i64, channels: i64, silu: bool) -> GroupNorm {
        let layer = GroupNorm::with_eps(vs.root() / "norm", groups, channels, silu, EPS);
        tch::no_grad(|| {
            let ws = layer.norm.ws.as_ref().unwrap();
            let bs = layer.norm.bs.as_ref().unwrap();
            ws.shallow_clone()
                .copy_(&(randn(&[channels], 7) * 0.5 + 1.0));
            bs.shallow_clone().copy_(&(randn(&[channels], 8) * 0.5));
        });
        layer
    }

    fn max_relative_gap(a: &Tensor, b: &Tensor) -> f64 {
        let gap = (a - b).abs().max().double_value(&[]);
        gap / b.abs().max().double_value(&[]).max(1e-12)
    }

    /// Forward and every gradient of the fused kernel against libtorch's operations,
    /// from the same upstream gradient. Float32 sums over a group of up to ~10^4
    /// elements, accumulated in different orders, differ by about 1e-6 relative; 1e-4
    /// leaves room for that and none for a wrong formula (those are off by O(1)).
    fn check(shape: &[i64], groups: i64, with_shift: bool, silu: bool) {
        check_layout(shape, groups, with_shift, silu, false);
    }

    /// [`check`] with the input laid out channels-last (`nhwc`: the kernel's per-example
    /// path), whose output keeps that layout.
    fn check_layout(shape: &[i64], groups: i64, with_shift: bool, silu: bool, nhwc: bool) {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = layer(&vs, groups, shape[1], silu);
        let x = randn(shape, 1) * 2.0 + 0.5;
        let x = if nhwc {
            super::super::to_channels_last(&x)
        } else {
            x
        }
        .set_requires_grad(true);
        let shift = with_shift.then(|| randn(&shape[..2], 2).set_requires_grad(true));
        let upstream = randn(shape, 3);
        let fused = layer
            .fused(&x, shift.as_ref())
            .expect("the fused kernel runs");
        let separate = layer.separate(&x, shift.as_ref());
        assert!(
            max_relative_gap(&fused, &separate) < 1e-5,
            "{shape:?} forward"
        );
        assert_eq!(
            super::super::is_channels_last(&fused),
            nhwc,
            "{shape:?} layout"
        );
        let mut inputs = vec![
            &x,
            layer.norm.ws.as_ref().unwrap(),
            layer.norm.bs.as_ref().unwrap(),
        ];
        inputs.extend(shift.as_ref());
        let grads = |z: &Tensor| {
            Tensor::run_backward(&[(z * &upstream).sum(Kind::Float)], &inputs, false, false)
        };
        let names = ["x", "weight", "bias", "shift"];
        for ((a, b), name) in grads(&fused).iter().zip(grads(&separate)).zip(names) {
            let gap = max_relative_gap(a, &b);
            assert!(gap < 1e-4, "{shape:?} {silu} d{name}: relative gap {gap}");
        }
    }

    #[test]
    fn the_fused_kernel_matches_libtorchs_operations_and_their_gradients() {
        let _generator = crate::testing::generator_lock();
        // UNet shapes (28x28 and 7x7 maps, 8 groups), a side that leaves a remainder
        // after the vector width, one channel per group, a sequence and a single group.
        for silu in [true, false] {
            check(&[4, 32, 28, 28], 8, true, silu);
            check(&[3, 64, 7, 7], 8, false, silu);
            check(&[2, 12, 5, 3], 4, true, silu);
            check(&[2, 8, 3, 3], 8, false, silu);
            check(&[3, 6, 17], 2, false, silu);
            check(&[2, 4, 9, 9], 1, true, silu);
        }
    }

    #[test]
    fn the_channels_last_kernel_matches_libtorchs_operations_and_their_gradients() {
        let _generator = crate::testing::generator_lock();
        // The UNet's channels-last maps (28x28 and 7x7, 8 groups; CIFAR's 32 groups), a
        // channel count that leaves a remainder after the vector width, one channel per
        // group and a single group.
        for silu in [true, false] {
            check_layout(&[4, 32, 28, 28], 8, true, silu, true);
            check_layout(&[3, 64, 7, 7], 8, false, silu, true);
            check_layout(&[2, 64, 8, 8], 32, true, silu, true);
            check_layout(&[2, 12, 5, 3], 4, true, silu, true);
            check_layout(&[2, 8, 3, 3], 8, false, silu, true);
            check_layout(&[2, 4, 9, 9], 1, true, silu, true);
        }
    }

    #[test]
    fn a_group_of_one_channel_cancels_its_shift() {
        let _generator = crate::testing::generator_lock();
        // With one channel per group the shift moves the whole group, which the
        // normalisation removes: its gradient is zero (up to float rounding, here
        // sums of 9 terms of size ~1, so ~1e-6), and the output does not depend on it.
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = layer(&vs, 8, 8, true);
        let x = randn(&[2, 8, 3, 3], 10);
        let shift = randn(&[2, 8], 11).set_requires_grad(true);
        let shifted = layer.fused(&x, Some(&shift)).unwrap();
        let plain = layer.fused(&x, None).unwrap();
        assert!(max_relative_gap(&shifted, &plain) < 1e-5);
        let upstream = randn(&[2, 8, 3, 3], 12);
        let loss = (&shifted * upstream).sum(Kind::Float);
        let dshift = Tensor::run_backward(&[loss], &[&shift], false, false).remove(0);
        let largest = dshift.abs().max().double_value(&[]);
        assert!(largest < 1e-4, "dshift {largest}");
    }

    #[test]
    fn saturated_and_nan_inputs_behave_as_silu() {
        let _generator = crate::testing::generator_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = GroupNorm::with_eps(vs.root() / "norm", 1, 2, true, EPS);
        tch::no_grad(|| {
            let ws = layer.norm.ws.as_ref().unwrap();
            ws.shallow_clone()
                .copy_(&Tensor::from_slice(&[1e4f32, 1e4]));
        });
        // Normalised to -1 and +1, scaled to -1e4 and 1e4: silu is 0 and 1e4.
        let x = Tensor::from_slice(&[-1.0f32, -1.0, 1.0, 1.0]).view([1, 2, 2]);
        let z = layer.fused(&x, None).unwrap();
        let z = Vec::<f32>::try_from(z.flatten(0, -1)).unwrap();
        assert!(z[0].abs() < 1e-30 && z[1].abs() < 1e-30, "{z:?}");
        assert!((z[2] / 1e4 - 1.0).abs() < 1e-4, "{z:?}");
        let x = Tensor::from_slice(&[f32::NAN, 0.0, 1.0, 2.0]).view([1, 2, 2]);
        let z = layer.fused(&x, None).unwrap();
        assert!(
            Vec::<f32>::try_from(z.flatten(0, -1))
                .unwrap()
                .iter()
                .all(|v| v.is_nan())
        );
    }

    #[test]
    fn forward_only_needs_no_graph_and_matches() {
        let _generator = crate::testing::generator_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = layer(&vs, 4, 16, true);
        let x = randn(&[2, 16, 6, 6], 4);
        let shift = randn(&[2, 16], 5);
        let (fused, separate) = tch::no_grad(|| {
            (
                layer.fused(&x, Some(&shift)).unwrap(),
                layer.separate(&x, Some(&shift)),
            )
        });
        assert!(!fused.requires_grad());
        assert!(max_relative_gap(&fused, &separate) < 1e-5);
    }

    #[test]
    fn other_kinds_and_bad_shapes_run_libtorchs_operations() {
        let _generator = crate::testing::generator_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = layer(&vs, 2, 4, true);
        // float64 input: no fused kernel (the float32 weights make libtorch refuse it
        // too, as it does for nn::GroupNorm).
        let x = randn(&[1, 4, 3, 3], 6);
        assert!(layer.fused(&x.to_kind(Kind::Double), None).is_none());
        // A shift of the wrong shape is refused by the kernel, with its reason.
        let err = crate::sys::ffi::group_norm(
            &x,
            Some(&randn(&[1, 3], 6)),
            layer.norm.ws.as_ref().unwrap(),
            layer.norm.bs.as_ref().unwrap(),
            2,
            EPS,
            true,
        )
        .unwrap_err();
        assert!(err.contains("shift of shape (1, 4)"), "{err}");
        let err = crate::sys::ffi::group_norm(
            &x,
            None,
            layer.norm.ws.as_ref().unwrap(),
            layer.norm.bs.as_ref().unwrap(),
            3,
            EPS,
            true,
        )
        .unwrap_err();
        assert!(
            err.contains("4 channels do not split into 3 groups"),
            "{err}"
        );
    }

    #[test]
    fn a_second_derivative_is_refused_with_a_reason() {
        let _generator = crate::testing::generator_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = layer(&vs, 2, 4, true);
        let x = randn(&[2, 4, 3, 3], 9).set_requires_grad(true);
        let z = layer.fused(&x, None).unwrap().sum(Kind::Float);
        let err = Tensor::f_run_backward(&[z], &[&x], true, true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no second derivative"), "{text}");
    }
}
