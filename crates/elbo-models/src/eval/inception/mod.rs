//! The FID Inception-v3: pytorch-fid's port of the 2015-12-05 TensorFlow Inception graph
//! (torchvision's Inception3 layout with the FID-specific blocks), giving the 2048
//! pool features FID and KID are computed in.
//!
//! What makes it the FID network and not torchvision's ImageNet Inception: the average
//! pools of the A, C and first E blocks leave padding out of their means
//! (`count_include_pad=False`), and the last E block pools its branch by max, not
//! average. Inputs are images in `[0, 1]` of any size: resized to 299x299 bilinearly
//! (`align_corners=False`, no antialiasing, as `F.interpolate`), scaled to `[-1, 1]`;
//! grey images are repeated to 3 channels, as pytorch-fid's RGB conversion does.
//!
//! Weights come from the safetensors conversion of pytorch-fid's file
//! (`cargo xtask data inception`), by name: every convolution and BatchNorm tensor
//! must be there with its shape; the file's 1008-way `fc` and BatchNorm's
//! `num_batches_tracked`, which the features do not use, are the only tensors left
//! unused, and any other is refused.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::train::checkpoint::read_tensor_file;

mod formula;

pub use formula::{formula_weight, hash_uniform};

/// The features' dimension.
pub const FEATURES: i64 = 2048;

/// The side images are resized to.
pub const SIDE: i64 = 299;

/// BatchNorm's epsilon in the TensorFlow graph.
const BN_EPS: f64 = 1e-3;

/// Where a weight comes from: its name and the shape the network needs; the tensor.
type Source<'a> = dyn FnMut(&str, &[i64]) -> Result<Tensor> + 'a;

/// Convolution (no bias), BatchNorm with running statistics, ReLU.
#[derive(Debug)]
struct BasicConv {
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    mean: Tensor,
    var: Tensor,
    stride: [i64; 2],
    padding: [i64; 2],
}

impl BasicConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        source: &mut Source<'_>,
        name: &str,
        c_in: i64,
        c_out: i64,
        kernel: [i64; 2],
        stride: i64,
        padding: [i64; 2],
    ) -> Result<BasicConv> {
        let weight = source(
            &format!("{name}.conv.weight"),
            &[c_out, c_in, kernel[0], kernel[1]],
        )?;
        let bn =
            |field: &str, source: &mut Source<'_>| source(&format!("{name}.bn.{field}"), &[c_out]);
        Ok(BasicConv {
            weight,
            scale: bn("weight", source)?,
            shift: bn("bias", source)?,
            mean: bn("running_mean", source)?,
            var: bn("running_var", source)?,
            stride: [stride; 2],
            padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            None::<Tensor>,
            self.stride,
            self.padding,
            [1, 1],
            1,
        )
        .batch_norm(
            Some(&self.scale),
            Some(&self.shift),
            Some(&self.mean),
            Some(&self.var),
            false,
            0.0,
            BN_EPS,
            false,
        )
        .relu()
    }
}

fn avg_pool_3x3_excluding_padding(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>)
}

/// The A block (FIDInceptionA): 1x1, 5x5, double 3x3 and average-pool branches.
#[derive(Debug)]
struct BlockA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

/// The B block (grid reduction to 17x17).
#[derive(Debug)]
struct BlockB {
    b3: BasicConv,
    b3dbl: [BasicConv; 3],
}

/// The C block (FIDInceptionC): factorised 7x7 branches.
#[derive(Debug)]
struct BlockC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    b7dbl: [BasicConv; 5],
    pool: BasicConv,
}

/// The D block (grid reduction to 8x8).
#[derive(Debug)]
struct BlockD {
    b3: [BasicConv; 2],
    b7x3: [BasicConv; 4],
}

/// The E blocks (FIDInceptionE_1 averages its pool branch, E_2 takes the max).
#[derive(Debug)]
struct BlockE {
    b1: BasicConv,
    b3: BasicConv,
    b3_2: [BasicConv; 2],
    b3dbl: [BasicConv; 2],
    b3dbl_3: [BasicConv; 2],
    pool: BasicConv,
    max_pool: bool,
}

/// The network up to its 2048 pool features.
#[derive(Debug)]
pub struct FidInception {
    stem: Vec<(BasicConv, bool)>,
    a: Vec<BlockA>,
    b: BlockB,
    c: Vec<BlockC>,
    d: BlockD,
    e: [BlockE; 2],
    device: Device,
}

fn cat(parts: &[Tensor]) -> Tensor {
    Tensor::cat(parts, 1)
}

impl FidInception {
    /// Builds the network from `source`, asked for each weight by name and shape.
    fn build(source: &mut Source<'_>, device: Device) -> Result<FidInception> {
        let mut conv = |name: &str, c_in, c_out, k: [i64; 2], stride, pad: [i64; 2]| {
            BasicConv::new(source, name, c_in, c_out, k, stride, pad)
        };
        // (name, in, out, kernel, stride, padding, max pool after)
        let stem_spec: [(&str, i64, i64, i64, i64, i64, bool); 5] = [
            ("Conv2d_1a_3x3", 3, 32, 3, 2, 0, false),
            ("Conv2d_2a_3x3", 32, 32, 3, 1, 0, false),
            ("Conv2d_2b_3x3", 32, 64, 3, 1, 1, true),
            ("Conv2d_3b_1x1", 64, 80, 1, 1, 0, false),
            ("Conv2d_4a_3x3", 80, 192, 3, 1, 0, true),
        ];
        let mut stem = Vec::new();
        for (name, i, o, k, s, p, pool) in stem_spec {
            stem.push((conv(name, i, o, [k, k], s, [p, p])?, pool));
        }
        let mut a = Vec::new();
        for (name, c, pool) in [
            ("Mixed_5b", 192, 32),
            ("Mixed_5c", 256, 64),
            ("Mixed_5d", 288, 64),
        ] {
            let n = |b: &str| format!("{name}.{b}");
            a.push(BlockA {
                b1: conv(&n("branch1x1"), c, 64, [1, 1], 1, [0, 0])?,
                b5: [
                    conv(&n("branch5x5_1"), c, 48, [1, 1], 1, [0, 0])?,
                    conv(&n("branch5x5_2"), 48, 64, [5, 5], 1, [2, 2])?,
                ],
                b3: [
                    conv(&n("branch3x3dbl_1"), c, 64, [1, 1], 1, [0, 0])?,
                    conv(&n("branch3x3dbl_2"), 64, 96, [3, 3], 1, [1, 1])?,
                    conv(&n("branch3x3dbl_3"), 96, 96, [3, 3], 1, [1, 1])?,
                ],
                pool: conv(&n("branch_pool"), c, pool, [1, 1], 1, [0, 0])?,
            });
        }
        let b = BlockB {
            b3: conv("Mixed_6a.branch3x3", 288, 384, [3, 3], 2, [0, 0])?,
            b3dbl: [
                conv("Mixed_6a.branch3x3dbl_1", 288, 64, [1, 1], 1, [0, 0])?,
                conv("Mixed_6a.branch3x3dbl_2", 64, 96, [3, 3], 1, [1, 1])?,
                conv("Mixed_6a.branch3x3dbl_3", 96, 96, [3, 3], 2, [0, 0])?,
            ],
        };
        let mut c = Vec::new();
        for (name, c7) in [
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ] {
            let n = |b: &str| format!("{name}.{b}");
            let (row, col) = ([1, 7], [7, 1]);
            let (pr, pc) = ([0, 3], [3, 0]);
            c.push(BlockC {
                b1: conv(&n("branch1x1"), 768, 192, [1, 1], 1, [0, 0])?,
                b7: [
                    conv(&n("branch7x7_1"), 768, c7, [1, 1], 1, [0, 0])?,
                    conv(&n("branch7x7_2"), c7, c7, row, 1, pr)?,
                    conv(&n("branch7x7_3"), c7, 192, col, 1, pc)?,
                ],
                b7dbl: [
                    conv(&n("branch7x7dbl_1"), 768, c7, [1, 1], 1, [0, 0])?,
                    conv(&n("branch7x7dbl_2"), c7, c7, col, 1, pc)?,
                    conv(&n("branch7x7dbl_3"), c7, c7, row, 1, pr)?,
                    conv(&n("branch7x7dbl_4"), c7, c7, col, 1, pc)?,
                    conv(&n("branch7x7dbl_5"), c7, 192, row, 1, pr)?,
                ],
                pool: conv(&n("branch_pool"), 768, 192, [1, 1], 1, [0, 0])?,
            });
        }
        let d = BlockD {
            b3: [
                conv("Mixed_7a.branch3x3_1", 768, 192, [1, 1], 1, [0, 0])?,
                conv("Mixed_7a.branch3x3_2", 192, 320, [3, 3], 2, [0, 0])?,
            ],
            b7x3: [
                conv("Mixed_7a.branch7x7x3_1", 768, 192, [1, 1], 1, [0, 0])?,
                conv("Mixed_7a.branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3])?,
                conv("Mixed_7a.branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0])?,
                conv("Mixed_7a.branch7x7x3_4", 192, 192, [3, 3], 2, [0, 0])?,
            ],
        };
        let mut block_e = |name: &str, c: i64, max_pool: bool| -> Result<BlockE> {
            let n = |b: &str| format!("{name}.{b}");
            Ok(BlockE {
                b1: conv(&n("branch1x1"), c, 320, [1, 1], 1, [0, 0])?,
                b3: conv(&n("branch3x3_1"), c, 384, [1, 1], 1, [0, 0])?,
                b3_2: [
                    conv(&n("branch3x3_2a"), 384, 384, [1, 3], 1, [0, 1])?,
                    conv(&n("branch3x3_2b"), 384, 384, [3, 1], 1, [1, 0])?,
                ],
                b3dbl: [
                    conv(&n("branch3x3dbl_1"), c, 448, [1, 1], 1, [0, 0])?,
                    conv(&n("branch3x3dbl_2"), 448, 384, [3, 3], 1, [1, 1])?,
                ],
                b3dbl_3: [
                    conv(&n("branch3x3dbl_3a"), 384, 384, [1, 3], 1, [0, 1])?,
                    conv(&n("branch3x3dbl_3b"), 384, 384, [3, 1], 1, [1, 0])?,
                ],
                pool: conv(&n("branch_pool"), c, 192, [1, 1], 1, [0, 0])?,
                max_pool,
            })
        };
        let e = [
            block_e("Mixed_7b", 1280, false)?,
            block_e("Mixed_7c", 2048, true)?,
        ];
        Ok(FidInception {
            stem,
            a,
            b,
            c,
            d,
            e,
            device,
        })
    }

    /// The network with the weights of the safetensors file `path` (the conversion of
    /// pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`), on `device`.
    pub fn load(path: &Path, device: Device) -> Result<FidInception> {
        if !path.is_file() {
            return Err(Error::Config {
                detail: format!(
                    "the FID Inception weights are not at {}: fetch them with `cargo xtask data \
                     inception` (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, 95.6 MB, \
                     verified and converted to safetensors), or pass --inception-weights PATH",
                    path.display()
                ),
            });
        }
        let tensors: BTreeMap<String, Tensor> =
            read_tensor_file(path, "the FID Inception weights")?
                .into_iter()
                .collect();
        FidInception::from_tensors(&tensors, device).map_err(|e| match e {
            Error::Checkpoint { detail } => Error::Checkpoint {
                detail: format!("{}: {detail}", path.display()),
            },
            other => other,
        })
    }

    /// The network with the weights `tensors` (by pytorch-fid's names); every tensor is
    /// used but the 1008-way `fc` and `num_batches_tracked`.
    pub fn from_tensors(
        tensors: &BTreeMap<String, Tensor>,
        device: Device,
    ) -> Result<FidInception> {
        let mut used = std::collections::BTreeSet::new();
        let mut source = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = tensors.get(name).ok_or_else(|| Error::Checkpoint {
                detail: format!(
                    "the FID Inception weight {name} (shape {shape:?}) is missing: expected \
                     pytorch-fid's FID Inception, converted by `cargo xtask data inception`"
                ),
            })?;
            if t.size() != shape || !t.is_floating_point() {
                return Err(Error::Checkpoint {
                    detail: format!(
                        "the FID Inception weight {name} is {:?} of shape {:?}, the network \
                         needs a float tensor of shape {shape:?}",
                        t.kind(),
                        t.size()
                    ),
                });
            }
            used.insert(name.to_string());
            Ok(t.to_kind(Kind::Float).to_device(device))
        };
        let network = FidInception::build(&mut source, device)?;
        let unused: Vec<&String> = tensors
            .keys()
            .filter(|k| !used.contains(*k))
            .filter(|k| !(k.starts_with("fc.") || k.ends_with(".num_batches_tracked")))
            .collect();
        if !unused.is_empty() {
            return Err(Error::Checkpoint {
                detail: format!(
                    "{} tensors are not part of the FID Inception (expected only its \
                     convolutions and BatchNorms, fc.* and num_batches_tracked): {}",
                    unused.len(),
                    crate::error::first_names(unused.iter().copied())
                ),
            });
        }
        Ok(network)
    }

    /// The network with every weight drawn from `value(name, shape)`: for tests.
    pub fn from_fn(
        device: Device,
        mut value: impl FnMut(&str, &[i64]) -> Tensor,
    ) -> Result<FidInception> {
        let mut source = |name: &str, shape: &[i64]| Ok(value(name, shape).to_device(device));
        FidInception::build(&mut source, device)
    }

    /// Every weight's name and shape, in the order the network asks for them.
    pub fn weight_names() -> Vec<(String, Vec<i64>)> {
        let mut names = Vec::new();
        let _ = FidInception::build(
            &mut |name: &str, shape: &[i64]| {
                names.push((name.to_string(), shape.to_vec()));
                Ok(Tensor::zeros([1], (Kind::Float, Device::Cpu)))
            },
            Device::Cpu,
        );
        names
    }

    /// The 299x299 input in `[-1, 1]` of images `x` (N, 1 or 3, H, W) in `[0, 1]`.
    pub fn prepare(x: &Tensor) -> Tensor {
        let x = x.to_kind(Kind::Float);
        let x = if x.size()[1] == 1 {
            x.repeat([1, 3, 1, 1])
        } else {
            x
        };
        x.upsample_bilinear2d([SIDE, SIDE], false, None, None) * 2.0 - 1.0
    }

    /// The pool features (N, 2048) of images `x` (N, 1 or 3, H, W) in `[0, 1]`, computed
    /// in batches of `batch`.
    pub fn features(&self, x: &Tensor, batch: i64) -> Tensor {
        tch::no_grad(|| {
            let n = x.size()[0];
            let parts: Vec<Tensor> = (0..n)
                .step_by(batch.max(1) as usize)
                .map(|start| {
                    let len = batch.min(n - start);
                    let chunk = x.narrow(0, start, len).to_device(self.device);
                    self.forward(&FidInception::prepare(&chunk))
                })
                .collect();
            if parts.is_empty() {
                Tensor::zeros([0, FEATURES], (Kind::Float, self.device))
            } else {
                Tensor::cat(&parts, 0)
            }
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let max3 = |t: &Tensor| t.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        let mut h = x.shallow_clone();
        for (conv, pool) in &self.stem {
            h = conv.forward(&h);
            if *pool {
                h = max3(&h);
            }
        }
        let chain = |convs: &[BasicConv], x: &Tensor| {
            convs.iter().fold(x.shallow_clone(), |t, c| c.forward(&t))
        };
        for a in &self.a {
            h = cat(&[
                a.b1.forward(&h),
                chain(&a.b5, &h),
                chain(&a.b3, &h),
                a.pool.forward(&avg_pool_3x3_excluding_padding(&h)),
            ]);
        }
        h = cat(&[self.b.b3.forward(&h), chain(&self.b.b3dbl, &h), max3(&h)]);
        for c in &self.c {
            h = cat(&[
                c.b1.forward(&h),
                chain(&c.b7, &h),
                chain(&c.b7dbl, &h),
                c.pool.forward(&avg_pool_3x3_excluding_padding(&h)),
            ]);
        }
        h = cat(&[chain(&self.d.b3, &h), chain(&self.d.b7x3, &h), max3(&h)]);
        for e in &self.e {
            let b3 = e.b3.forward(&h);
            let dbl = chain(&e.b3dbl, &h);
            let pooled = if e.max_pool {
                h.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
            } else {
                avg_pool_3x3_excluding_padding(&h)
            };
            h = cat(&[
                e.b1.forward(&h),
                cat(&[e.b3_2[0].forward(&b3), e.b3_2[1].forward(&b3)]),
                cat(&[e.b3dbl_3[0].forward(&dbl), e.b3dbl_3[1].forward(&dbl)]),
                e.pool.forward(&pooled),
            ]);
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_checked_by_name_and_shape() {
        let _generator = crate::testing::generator_lock();
        let names = FidInception::weight_names();
        // 94 convolutions, each with a weight and 4 BatchNorm tensors.
        assert_eq!(names.len(), 94 * 5);
        let small = |name: &str| names.iter().find(|(n, _)| n == name).cloned().unwrap();
        let mut tensors: BTreeMap<String, Tensor> = names
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu)),
                )
            })
            .collect();
        tensors.insert(
            "fc.weight".into(),
            Tensor::zeros([1008, 2048], (Kind::Float, Device::Cpu)),
        );
        tensors.insert(
            "Mixed_5b.branch1x1.bn.num_batches_tracked".into(),
            Tensor::zeros([], (Kind::Int64, Device::Cpu)),
        );
        FidInception::from_tensors(&tensors, Device::Cpu).unwrap();
        let (name, _) = small("Mixed_6b.branch7x7_2.conv.weight");
        let mut wrong = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect::<BTreeMap<_, _>>();
        wrong.insert(
            name.clone(),
            Tensor::zeros([128, 128, 7, 1], (Kind::Float, Device::Cpu)),
        );
        let err = FidInception::from_tensors(&wrong, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&name) && err.contains("[128, 128, 1, 7]"),
            "{err}"
        );
        wrong.remove(&name);
        let err = FidInception::from_tensors(&wrong, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is missing") && err.contains("xtask data inception"),
            "{err}"
        );
        tensors.insert(
            "AuxLogits.conv0.conv.weight".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        );
        let err = FidInception::from_tensors(&tensors, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("AuxLogits.conv0.conv.weight"), "{err}");
        let err = FidInception::load(Path::new("/nonexistent/inception.safetensors"), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo xtask data inception"), "{err}");
    }
}
