//! Layer initialisations that the presets name explicitly.
//!
//! tch's `nn::linear` draws weights from a Kaiming-uniform for ReLU (bound
//! `sqrt(6 / fan_in)`); PyTorch's `torch.nn.Linear` draws weights and biases from
//! `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (Kaiming-uniform with `a = sqrt(5)`). A preset
//! that reproduces a PyTorch model, such as pytorch/examples' VAE, uses the latter so
//! that it trains as the original does (the 10-epoch IWAE NLL of `vae-mlp` differs by
//! 1.7 nats between the two initialisations).

use tch::nn;

/// A linear layer initialised as `torch.nn.Linear` is: weights and biases uniform in
/// `(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
pub fn torch_linear<'a>(
    path: impl std::borrow::Borrow<nn::Path<'a>>,
    input: i64,
    output: i64,
) -> nn::Linear {
    let bound = 1.0 / (input.max(1) as f64).sqrt();
    let uniform = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        path,
        input,
        output,
        nn::LinearConfig {
            ws_init: uniform,
            bs_init: Some(uniform),
            bias: true,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn weights_and_biases_are_uniform_within_one_over_root_fan_in() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = torch_linear(vs.root() / "fc", 400, 300);
        let bound = 1.0 / 20.0;
        for t in [&layer.ws, layer.bs.as_ref().unwrap()] {
            let max = t.abs().max().double_value(&[]);
            assert!(max <= bound, "max |w| = {max} > {bound}");
            // U(-b, b) has variance b^2 / 3; over >= 300 draws the sample variance is
            // within 30% of it with overwhelming probability (its relative sd is
            // sqrt(0.8 / n) <= 5.2% for n = 300).
            let var = t.var(true).double_value(&[]);
            let expected = bound * bound / 3.0;
            assert!(
                (var / expected - 1.0).abs() < 0.3,
                "var {var} vs {expected}"
            );
            assert_eq!(t.kind(), Kind::Float);
        }
    }
}
