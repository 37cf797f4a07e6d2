//! The deterministic weights of the frozen fixture (`tests/fixtures/fid-inception.safetensors`,
//! written by `benches/reference/fid_inception.py fixture --compact`): a formula both sides
//! compute, so the fixture carries only inputs and pytorch-fid's features.

use tch::Tensor;

/// The fixture formula of `benches/reference/fid_inception.py`: `u_i` from the FNV-1a
/// hash of `name` and murmur3's finaliser of `h + i * 0x9E3779B9` (mod 2^32), in
/// `(0, 1)`.
pub fn hash_uniform(name: &str, n: usize) -> Vec<f64> {
    let mut h: u32 = 2_166_136_261;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(16_777_619);
    }
    (0..n)
        .map(|i| {
            let mut x = h.wrapping_add((i as u32).wrapping_mul(0x9E37_79B9));
            x ^= x >> 16;
            x = x.wrapping_mul(0x85EB_CA6B);
            x ^= x >> 13;
            x = x.wrapping_mul(0xC2B2_AE35);
            x ^= x >> 16;
            (f64::from(x) + 0.5) / 4_294_967_296.0
        })
        .collect()
}

/// The fixture's value of weight `name` of `shape` (the same formula as the script's):
/// He-scaled uniform convolutions, BatchNorm scales and variances in (0.5, 1.5), shifts
/// and means in (-0.1, 0.1).
pub fn formula_weight(name: &str, shape: &[i64]) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let u = hash_uniform(name, n);
    let values: Vec<f32> = if name.ends_with(".conv.weight") {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        u.iter()
            .map(|u| ((2.0 * u - 1.0) * 3f64.sqrt() * (2.0 / fan_in).sqrt()) as f32)
            .collect()
    } else if name.ends_with(".bn.weight") || name.ends_with(".bn.running_var") {
        u.iter().map(|u| (0.5 + u) as f32).collect()
    } else {
        u.iter().map(|u| (0.2 * (u - 0.5)) as f32).collect()
    };
    Tensor::from_slice(&values).reshape(shape)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use tch::{Device, Tensor};

    use super::*;
    use crate::eval::inception::FidInception;
    use crate::train::checkpoint::read_tensor_file;

    fn fixture() -> BTreeMap<String, Tensor> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid-inception.safetensors");
        read_tensor_file(&path, "the fixture")
            .unwrap()
            .into_iter()
            .collect()
    }

    /// pytorch-fid's own network (its classes, in the bench venv) with the fixture
    /// formula's weights gave these features (`benches/reference/fid_inception.py
    /// fixture --compact`); elbo's network with the same weights must give them within
    /// 1e-4 relative to the largest feature. Float32 convolutions summed in another
    /// order differ by ~1e-6 relative; a wrong block (padding, pool, order) is off by
    /// O(1).
    #[test]
    fn features_equal_pytorch_fids_on_the_frozen_fixture() {
        let _generator = crate::testing::generator_lock();
        let fixture = fixture();
        let net = FidInception::from_fn(Device::Cpu, formula_weight).unwrap();
        let b: Vec<f32> = hash_uniform("input_b", 3 * 299 * 299)
            .iter()
            .map(|&u| u as f32)
            .collect();
        let input_b = Tensor::from_slice(&b).reshape([1, 3, 299, 299]);
        for (input, expected) in [
            (fixture["input_a"].shallow_clone(), "features_a"),
            (input_b, "features_b"),
            (fixture["input_c"].shallow_clone(), "features_c"),
        ] {
            let found = net.features(&input, 50);
            let expected = &fixture[expected];
            assert_eq!(found.size(), expected.size());
            let gap = (&found - expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]);
            assert!(gap <= 1e-4 * scale, "{input:?}: gap {gap} of {scale}");
        }
    }
}
