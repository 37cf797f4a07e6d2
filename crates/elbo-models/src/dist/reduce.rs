//! The gradient all-reduce: gradients flattened into buckets of at most 25 MiB (PyTorch
//! DDP's default), each bucket one Gloo all-reduce, all of them started before any is
//! waited for; the step's shared scalars (the loss, the stop flag) and one
//! "has a gradient" flag per parameter travel in the same round as a small f64 tensor.
//!
//! The buckets live on the group's device: the CPU for Gloo (CUDA gradients are copied
//! there and back), the GPU for NCCL. The reduction runs after the backward pass, not
//! overlapped with it: on the CPU both compete for the same cores, and the measured
//! reduction is a small part of a step (see the README's data-parallel section).

use tch::{Kind, Tensor};

use super::Parallel;
use crate::error::{Error, Result};

/// PyTorch DDP's default bucket size: 25 MiB.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Groups parameter indices `0..sizes.len()` into buckets in order: consecutive
/// parameters of the same kind, at most `cap` bytes each (a parameter larger than `cap`
/// gets a bucket of its own). `sizes` are (elements, kind) pairs.
pub fn buckets(sizes: &[(usize, Kind)], cap: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0usize;
    let mut kind = None;
    for (i, &(numel, k)) in sizes.iter().enumerate() {
        let size = numel * k.elt_size_in_bytes();
        let fits = kind == Some(k) && bytes + size <= cap;
        match out.last_mut() {
            Some(bucket) if fits => {
                bucket.push(i);
                bytes += size;
            }
            _ => {
                out.push(vec![i]);
                bytes = size;
                kind = Some(k);
            }
        }
    }
    out
}

impl Parallel {
    /// [`Replicas::reduce`](super::Replicas::reduce) over the job's process group.
    pub(super) fn reduce_gradients(
        &self,
        params: &[Tensor],
        share: f64,
        shared: &mut [f64],
    ) -> Result<()> {
        let device = self.device();
        tch::no_grad(|| {
            let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
            let sizes: Vec<(usize, Kind)> = params.iter().map(|p| (p.numel(), p.kind())).collect();
            let buckets = buckets(&sizes, self.bucket_bytes);
            let flats: Vec<Tensor> = buckets
                .iter()
                .map(|bucket| {
                    let parts: Vec<Tensor> = bucket
                        .iter()
                        .map(|&i| {
                            if grads[i].defined() {
                                grads[i].reshape([-1]).to_device(device)
                            } else {
                                Tensor::zeros([sizes[i].0 as i64], (sizes[i].1, device))
                            }
                        })
                        .collect();
                    let mut flat = Tensor::cat(&parts, 0);
                    let _ = flat.g_mul_scalar_(share);
                    flat
                })
                .collect();
            let mut extras: Vec<f64> = shared.to_vec();
            extras.extend(grads.iter().map(|g| f64::from(u8::from(g.defined()))));
            let extras = Tensor::from_slice(&extras).to_device(device);
            let mut round: Vec<Tensor> = flats.iter().map(Tensor::shallow_clone).collect();
            round.push(extras.shallow_clone());
            self.group()
                .all_reduce_sum(&round)
                .map_err(|detail| Error::Distributed { detail })?;
            let extras =
                Vec::<f64>::try_from(&extras.to_device(tch::Device::Cpu)).map_err(|e| {
                    Error::Distributed {
                        detail: format!("reading the reduced scalars: {e}"),
                    }
                })?;
            let (summed, defined) = extras.split_at(shared.len());
            shared.copy_from_slice(summed);
            for (bucket, flat) in buckets.iter().zip(&flats) {
                let mut offset = 0i64;
                for &i in bucket {
                    let n = sizes[i].0 as i64;
                    let reduced = flat.narrow(0, offset, n).view(params[i].size().as_slice());
                    offset += n;
                    if defined[i] == 0.0 {
                        // No process had a gradient: it stays undefined, as on one process.
                        continue;
                    }
                    let device = params[i].device();
                    if grads[i].defined() {
                        grads[i].shallow_clone().copy_(&reduced);
                    } else {
                        crate::sys::ffi::set_grad(&params[i], &reduced.to_device(device).copy())
                            .map_err(|detail| Error::Distributed {
                                detail: format!("setting a reduced gradient: {detail}"),
                            })?;
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fill_in_order_up_to_the_cap_and_split_on_kind() {
        let f = Kind::Float;
        // 4-byte floats: 10 + 10 elements fit 80 bytes, the third does not.
        let sizes = [
            (10, f),
            (10, f),
            (10, f),
            (100, f),
            (1, Kind::Double),
            (1, f),
        ];
        assert_eq!(
            buckets(&sizes, 80),
            vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5]]
        );
        assert_eq!(buckets(&sizes[..3], 1 << 20), vec![vec![0, 1, 2]]);
        assert!(buckets(&[], 80).is_empty());
    }
}
