//! A run's state as tensors: the weights, Adam's moments and the EMA, named with the
//! prefixes of [`super::layout`], saved into and restored from checkpoints; and the
//! seeding that makes a run a function of (seed, step).

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor, nn::VarStore};

use super::layout::{ADAM, EMA, MODEL};
use super::optim::Adam;
use crate::error::{Error, Result};

/// The seed of libtorch's generator for step `step` of a run seeded `seed` (SplitMix64
/// of the pair, so neighbouring steps get unrelated streams).
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as i64 & i64::MAX
}

/// The seed of the model's draws at step `step` in the process of rank `rank` of a
/// data-parallel job (so that processes do not draw the same noise); rank 0's is
/// [`step_seed`], the one-process seed.
pub fn rank_step_seed(seed: u64, step: u64, rank: usize) -> i64 {
    if rank == 0 {
        step_seed(seed, step)
    } else {
        step_seed(
            seed ^ (rank as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
            step,
        )
    }
}

/// The device-independent part of a model's set-up: a fresh [`VarStore`] on `device`
/// with libtorch's generator seeded from the run's seed (so initial weights are a
/// function of the seed).
pub fn var_store(seed: u64, device: Device) -> VarStore {
    tch::manual_seed(step_seed(seed, u64::MAX));
    VarStore::new(device)
}

/// The exponential moving average of the weights.
pub struct Ema {
    names: Vec<String>,
    shadow: Vec<Tensor>,
}

impl Ema {
    /// Starts at the current weights of `vs`.
    pub fn new(vs: &VarStore) -> Ema {
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let (names, shadow) = vars
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .unzip();
        Ema { names, shadow }
    }

    /// `shadow <- decay shadow + (1 - decay) weights`, unless `held` (a one-element
    /// float32 tensor on the weights' device, see [`super::optim::Adam::step_unless`])
    /// holds 1: then the shadow stays as it is. The weight of the average is computed on
    /// the device, so that a held step never waits for it.
    pub fn update(&mut self, vs: &VarStore, decay: f64, held: Option<&Tensor>) {
        let vars = vs.variables();
        let Some(device) = self.shadow.first().map(Tensor::device) else {
            return;
        };
        tch::no_grad(|| {
            let weight = match held {
                Some(h) => h
                    .to_kind(Kind::Float)
                    .neg()
                    .g_add_scalar(1.0)
                    .g_mul_scalar(1.0 - decay),
                // A fill on the device, not a copy from the host (which would wait).
                None => Tensor::full([], 1.0 - decay, (Kind::Float, device)),
            };
            for (name, shadow) in self.names.iter().zip(&mut self.shadow) {
                if let Some(v) = vars.get(name) {
                    let _ = shadow.lerp_tensor_(v, &weight);
                }
            }
        });
    }
}

/// Everything a checkpoint holds of a run: weights, Adam's moments, the EMA if any.
pub fn state_tensors(vs: &VarStore, adam: &Adam, ema: Option<&Ema>) -> Vec<(String, Tensor)> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut out: Vec<(String, Tensor)> = vars
        .into_iter()
        .map(|(name, t)| (format!("{MODEL}{name}"), t.detach()))
        .collect();
    out.extend(adam.state());
    if let Some(ema) = ema {
        out.extend(
            ema.names
                .iter()
                .zip(&ema.shadow)
                .map(|(n, t)| (format!("{EMA}{n}"), t.shallow_clone())),
        );
    }
    out
}

/// Copies the weights of a checkpoint into `vs` (the EMA weights when `use_ema` and
/// present), checking every name and shape.
pub fn load_weights(
    vs: &mut VarStore,
    tensors: &BTreeMap<String, Tensor>,
    use_ema: bool,
) -> Result<()> {
    let prefix = if use_ema && tensors.keys().any(|k| k.starts_with(EMA)) {
        EMA
    } else {
        MODEL
    };
    let mut vars = vs.variables();
    for (name, var) in vars.iter_mut() {
        let key = format!("{prefix}{name}");
        let saved = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
            detail: format!("weight {key} is missing: the checkpoint is of another model"),
        })?;
        if saved.size() != var.size() || saved.kind() != var.kind() {
            return Err(Error::Checkpoint {
                detail: format!(
                    "weight {key} is {:?} of shape {:?}, the model needs {:?} of shape {:?}",
                    saved.kind(),
                    saved.size(),
                    var.kind(),
                    var.size()
                ),
            });
        }
        tch::no_grad(|| var.copy_(&saved.to_device(var.device())));
    }
    Ok(())
}

/// Restores a whole run state saved by [`state_tensors`] at step `step`.
pub fn restore_state(
    vs: &mut VarStore,
    adam: &mut Adam,
    ema: Option<&mut Ema>,
    tensors: &BTreeMap<String, Tensor>,
    step: u64,
) -> Result<()> {
    load_weights(vs, tensors, false)?;
    let device = vs.device();
    let on_device: BTreeMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| k.starts_with(ADAM))
        .map(|(k, t)| (k.clone(), t.to_device(device)))
        .collect();
    adam.load_state(&on_device, step as i64)?;
    if let Some(ema) = ema {
        for (name, shadow) in ema.names.iter().zip(&mut ema.shadow) {
            let key = format!("{EMA}{name}");
            let saved = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
                detail: format!("{key} is missing: the run has EMA, the checkpoint has none"),
            })?;
            tch::no_grad(|| shadow.copy_(&saved.to_device(device)));
        }
    }
    Ok(())
}

/// The sha256 (hex) of named tensors in the order given: each name, its kind and shape,
/// and its elements' bytes (from the device, contiguous). Two states with the same digest
/// are equal to the bit.
pub fn digest(tensors: &[(String, Tensor)]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (name, t) in tensors {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        hasher.update(format!("{name} {:?} {:?}\n", t.kind(), t.size()).as_bytes());
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut bytes, numel);
        hasher.update(&bytes);
    }
    elbo_data::hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal states have equal digests; one ulp in one element, another name or another
    /// shape of the same bytes change it.
    #[test]
    fn the_digest_sees_every_bit_name_and_shape() {
        let state = |values: &[f32], name: &str, shape: &[i64]| {
            vec![
                ("a".to_string(), Tensor::from_slice(&[1i64, 2])),
                (name.to_string(), Tensor::from_slice(values).reshape(shape)),
            ]
        };
        let base = digest(&state(&[0.5, 1.0, 2.0, 3.0], "w", &[4]));
        assert_eq!(base.len(), 64);
        assert_eq!(base, digest(&state(&[0.5, 1.0, 2.0, 3.0], "w", &[4])));
        let ulp = f32::from_bits(2.0f32.to_bits() + 1);
        for other in [
            state(&[0.5, 1.0, ulp, 3.0], "w", &[4]),
            state(&[0.5, 1.0, 2.0, 3.0], "v", &[4]),
            state(&[0.5, 1.0, 2.0, 3.0], "w", &[2, 2]),
        ] {
            assert_ne!(base, digest(&other));
        }
    }
}
