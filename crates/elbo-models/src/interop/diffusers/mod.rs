//! diffusers' `UNet2DModel` and its scheduler's configuration, to and from elbo's DDPM.
//!
//! A diffusers model folder holds `config.json` (the `UNet2DModel`), the weights
//! (`diffusion_pytorch_model.safetensors`, or `.bin` as `torch.save` writes it),
//! `scheduler_config.json` (beta schedule, T, what the network predicts, the reverse
//! variance) and, for `DDPMPipeline.from_pretrained`, `model_index.json`; the components
//! may also sit in `unet/` and `scheduler/` subfolders (a pipeline's layout). Ho et al.'s
//! own CIFAR-10 network is on the Hub in this form as `google/ddpm-cifar10-32`.
//!
//! The two UNets are the same network: elbo's ([`crate::nn::unet`]) is Ho et al.'s, and
//! so is diffusers' with `flip_sin_to_cos: false` and `freq_shift: 1`. Tensors map by
//! name ([`diffusers_name`]), shape by shape; the attention projections are 1x1
//! convolutions in elbo and linear layers in diffusers (the same numbers, reshaped).
//! Two conventions differ and are carried over exactly:
//! - diffusers counts time from 0, elbo from 1: an imported network embeds `t - 1`
//!   (`time_offset: -1`); an elbo-trained one is exported with the shift folded into its
//!   first time-embedding layer (a rotation of each sine-cosine pair: exact in real
//!   arithmetic, float32 rounding in the weights).
//! - Ho et al.'s TensorFlow network pads its stride-2 convolutions after the image
//!   (`downsample_padding: 0`) and uses GroupNorm's epsilon 1e-6: both are options of
//!   elbo's UNet.
//!
//! What elbo's UNet cannot express is refused naming the field: other block types,
//! attention with several heads or without the middle block's, a scale-shift time
//! conditioning, Fourier time features, a learned variance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::ddpm::DdpmConfig;

mod config;

use crate::train::checkpoint::{
    read_tensor_file, sha256_of, write_json_atomically, write_tensor_file,
};
pub use config::{config_from_unet, ddpm_from_scheduler, scheduler_from_ddpm, unet_from_config};

/// The weights' file names diffusers writes (safetensors) and wrote (torch.save).
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const WEIGHTS_BIN: &str = "diffusion_pytorch_model.bin";
/// The `UNet2DModel`'s configuration file (diffusers', not a run folder's).
const CONFIG: &str = "config.json";
/// The diffusers version written into exported configurations (the one the parity
/// checks ran with).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

fn refuse(file: &Path, detail: String) -> Error {
    Error::Config {
        detail: format!("{}: {detail}", file.display()),
    }
}

/// The files of a diffusers folder: flat (`google/ddpm-cifar10-32`) or a pipeline's
/// `unet/` and `scheduler/`.
struct Layout {
    unet: PathBuf,
    scheduler: PathBuf,
}

fn layout(folder: &Path) -> Result<Layout> {
    if !folder.is_dir() {
        return Err(Error::file(
            "read the diffusers model folder",
            folder,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "expected a folder with config.json, diffusion_pytorch_model.safetensors (or \
                 .bin) and scheduler_config.json",
            ),
        ));
    }
    let unet = if folder.join("unet/config.json").is_file() {
        folder.join("unet")
    } else {
        folder.to_path_buf()
    };
    let scheduler = if folder.join("scheduler/scheduler_config.json").is_file() {
        folder.join("scheduler")
    } else {
        folder.to_path_buf()
    };
    Ok(Layout { unet, scheduler })
}

fn read_json(path: &Path, what: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::file(
            "read",
            path,
            std::io::Error::new(e.kind(), format!("{e}: expected {what}")),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        refuse(
            path,
            format!("expected {what} as JSON, found text that does not parse ({e})"),
        )
    })
}

/// The diffusers name of elbo's UNet variable `name` (relative to the UNet, e.g.
/// `down.0_1.res.conv1.weight`) in a UNet of `levels` levels, and whether it is an
/// attention projection (a 1x1 convolution in elbo, a linear layer in diffusers).
pub fn diffusers_name(name: &str, levels: usize) -> Option<(String, bool)> {
    let (head, leaf) = name.rsplit_once('.')?;
    let (module, rest) = head.split_once('.').unwrap_or((head, ""));
    let res = |part: &str| -> Option<&str> {
        Some(match part {
            "norm1" => "norm1",
            "conv1" => "conv1",
            "time" => "time_emb_proj",
            "norm2" => "norm2",
            "conv2" => "conv2",
            "skip" => "conv_shortcut",
            _ => return None,
        })
    };
    let attn = |part: &str| -> Option<(&str, bool)> {
        Some(match part {
            "norm" => ("group_norm", false),
            "q" => ("to_q", true),
            "k" => ("to_k", true),
            "v" => ("to_v", true),
            "out" => ("to_out.0", true),
            _ => return None,
        })
    };
    // "<level>_<block>.res.<part>" or "<level>_<block>.attn.<part>" or "<level>_down"/"_up".
    let stage = |prefix: String, path: &str| -> Option<(String, bool)> {
        let (kind, part) = path.split_once('.')?;
        match kind {
            "res" => Some((
                format!("{prefix}.resnets.{{}}.{}.{leaf}", res(part)?),
                false,
            )),
            "attn" => {
                let (p, linear) = attn(part)?;
                Some((format!("{prefix}.attentions.{{}}.{p}.{leaf}"), linear))
            }
            _ => None,
        }
    };
    let out = match module {
        "time1" => ("time_embedding.linear_1".to_string() + "." + leaf, false),
        "time2" => ("time_embedding.linear_2".to_string() + "." + leaf, false),
        "label" => (format!("class_embedding.{leaf}"), false),
        "input" => (format!("conv_in.{leaf}"), false),
        "out_norm" => (format!("conv_norm_out.{leaf}"), false),
        "output" => (format!("conv_out.{leaf}"), false),
        "middle" => {
            let (block, part) = rest.split_once('.')?;
            match block {
                "res1" => (format!("mid_block.resnets.0.{}.{leaf}", res(part)?), false),
                "res2" => (format!("mid_block.resnets.1.{}.{leaf}", res(part)?), false),
                "attn" => {
                    let (p, linear) = attn(part)?;
                    (format!("mid_block.attentions.0.{p}.{leaf}"), linear)
                }
                _ => return None,
            }
        }
        "down" | "up" => {
            let (place, path) = rest.split_once('.').unwrap_or((rest, ""));
            let (level, block) = place.split_once('_')?;
            let level: usize = level.parse().ok()?;
            let index = if module == "down" {
                level
            } else {
                levels.checked_sub(level + 1)?
            };
            let blocks = if module == "down" {
                "down_blocks"
            } else {
                "up_blocks"
            };
            match block {
                "down" | "up" => {
                    let sampler = if block == "down" {
                        "downsamplers"
                    } else {
                        "upsamplers"
                    };
                    (format!("{blocks}.{index}.{sampler}.0.conv.{leaf}"), false)
                }
                j => {
                    let j: usize = j.parse().ok()?;
                    let (pattern, linear) = stage(format!("{blocks}.{index}"), path)?;
                    (pattern.replacen("{}", &j.to_string(), 1), linear)
                }
            }
        }
        _ => return None,
    };
    Some(out)
}

/// The name older diffusers versions (and the Hub's first uploads) gave an attention
/// tensor.
fn legacy_attention_name(name: &str) -> Option<String> {
    [
        ("to_q.", "query."),
        ("to_k.", "key."),
        ("to_v.", "value."),
        ("to_out.0.", "proj_attn."),
    ]
    .into_iter()
    .find(|(new, _)| name.contains(&format!(".{new}")))
    .map(|(new, old)| name.replacen(new, old, 1))
}

/// A diffusers model read for elbo: the DDPM's configuration and the UNet's tensors by
/// elbo's variable names (relative to the UNet).
pub struct DiffusersModel {
    /// The DDPM.
    pub config: DdpmConfig,
    /// The UNet's weights by elbo's names (`down.0_0.res.conv1.weight`, ...).
    pub weights: BTreeMap<String, Tensor>,
    /// The weights file read, and its sha256.
    pub weights_file: (PathBuf, String),
}

/// The variables of elbo's UNet of `config`: names (relative to the UNet) and shapes.
pub fn unet_variables(config: &DdpmConfig) -> Result<Vec<(String, Vec<i64>)>> {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _ = crate::nn::unet::Unet::new(&vs.root(), &config.unet)?;
    let mut out: Vec<(String, Vec<i64>)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    out.sort();
    Ok(out)
}

/// Reads the diffusers model folder `folder`; with `sha256`, the weights file must have
/// that digest.
pub fn read_diffusers(folder: &Path, sha256: Option<&str>) -> Result<DiffusersModel> {
    let layout = layout(folder)?;
    let config_file = layout.unet.join(CONFIG);
    let unet = unet_from_config(
        &read_json(&config_file, "a UNet2DModel configuration")?,
        &config_file,
    )?;
    let scheduler_file = layout.scheduler.join("scheduler_config.json");
    let config = ddpm_from_scheduler(
        &read_json(
            &scheduler_file,
            "the DDPM scheduler's configuration (beta schedule and T)",
        )?,
        &scheduler_file,
        unet,
    )?;
    let (weights_path, bin) = match layout.unet.join(WEIGHTS) {
        p if p.is_file() => (p, false),
        _ if layout.unet.join(WEIGHTS_BIN).is_file() => (layout.unet.join(WEIGHTS_BIN), true),
        p => {
            return Err(Error::file(
                "read",
                &p,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("expected the UNet's weights, {WEIGHTS} (or {WEIGHTS_BIN})"),
                ),
            ));
        }
    };
    let digest = sha256_of(&weights_path)?;
    if let Some(expected) = sha256
        && !digest.eq_ignore_ascii_case(expected)
    {
        return Err(Error::Checkpoint {
            detail: format!(
                "{}: sha256 checksum mismatch: expected {expected}, found {digest}",
                weights_path.display()
            ),
        });
    }
    let tensors: BTreeMap<String, Tensor> = if bin {
        elbo_data::pth::read_state_dict(&weights_path)
            .map_err(|e| Error::Data {
                detail: e.to_string(),
            })?
            .into_iter()
            .map(|(name, t)| {
                let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
                let values = t.to_f32().unwrap_or_default();
                (name, Tensor::from_slice(&values).reshape(shape.as_slice()))
            })
            .collect()
    } else {
        read_tensor_file(&weights_path, "a UNet2DModel's weights")?
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(Kind::Float)))
            .collect()
    };
    let weights = map_in(&config, &tensors, &weights_path)?;
    Ok(DiffusersModel {
        config,
        weights,
        weights_file: (weights_path, digest),
    })
}

/// diffusers tensors to elbo's variables, checked tensor by tensor; nothing left over.
fn map_in(
    config: &DdpmConfig,
    tensors: &BTreeMap<String, Tensor>,
    file: &Path,
) -> Result<BTreeMap<String, Tensor>> {
    let levels = config.unet.channel_mults.len();
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (name, shape) in unet_variables(config)? {
        let (theirs, linear) = diffusers_name(&name, levels).ok_or_else(|| Error::Config {
            detail: format!("elbo's UNet variable {name} has no diffusers counterpart"),
        })?;
        let (found_name, t) = match tensors.get(&theirs) {
            Some(t) => (theirs.clone(), t),
            None => match legacy_attention_name(&theirs)
                .and_then(|old| Some((old.clone(), tensors.get(&old)?)))
            {
                Some(found) => found,
                None => {
                    return Err(Error::Checkpoint {
                        detail: format!(
                            "{}: {theirs} (shape {shape:?}) is missing: the configuration \
                             describes a UNet with it",
                            file.display()
                        ),
                    });
                }
            },
        };
        let expected: Vec<i64> = if linear && shape.len() == 4 {
            shape[..2].to_vec()
        } else {
            shape.clone()
        };
        if t.size() != expected && t.size() != shape {
            return Err(Error::Checkpoint {
                detail: format!(
                    "{}: {found_name} has shape {:?}, the configuration needs {expected:?}",
                    file.display(),
                    t.size()
                ),
            });
        }
        used.insert(found_name);
        out.insert(name, t.reshape(shape.as_slice()));
    }
    let unused: Vec<&String> = tensors.keys().filter(|k| !used.contains(*k)).collect();
    if !unused.is_empty() {
        return Err(Error::Checkpoint {
            detail: format!(
                "{}: {} tensors have no place in the UNet the configuration describes: {}",
                file.display(),
                unused.len(),
                crate::error::first_names(unused.iter().copied())
            ),
        });
    }
    Ok(out)
}

/// `time1`'s weight (4C, C) for inputs embedded at `t + 1` where the network expects
/// `t`: each sine-cosine pair of the embedding rotated by one step, `e(t + 1) = R e(t)`,
/// so `W' = W R` (in float64).
fn shift_time_weight(w: &Tensor) -> Tensor {
    let c = w.size()[1];
    let half = c / 2;
    let scale = (10_000f64).ln() / ((half - 1).max(1) as f64);
    let w64 = w.to_kind(Kind::Double);
    let k = Tensor::arange(half, (Kind::Double, Device::Cpu));
    let freq = (k * -scale).exp();
    let (cos, sin) = (freq.cos().unsqueeze(0), freq.sin().unsqueeze(0));
    let (ws, wc) = (w64.narrow(1, 0, half), w64.narrow(1, half, half));
    let new_sin = &ws * &cos - &wc * &sin;
    let new_cos = &ws * &sin + &wc * &cos;
    Tensor::cat(&[new_sin, new_cos], 1).to_kind(w.kind())
}

/// Writes elbo's DDPM `config` with UNet weights `weights` (by elbo's names relative to
/// the UNet) as a diffusers model folder at `out` (flat, as `google/ddpm-cifar10-32`:
/// `model_index.json`, `config.json`, the weights, `scheduler_config.json`), each file
/// whole or not at all. Returns the files written.
pub fn write_diffusers(
    config: &DdpmConfig,
    weights: &BTreeMap<String, Tensor>,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let levels = config.unet.channel_mults.len();
    let mut named = Vec::with_capacity(weights.len());
    for (name, shape) in unet_variables(config)? {
        let t = weights.get(&name).ok_or_else(|| Error::Checkpoint {
            detail: format!("weight {name} is missing: the checkpoint is not of this UNet"),
        })?;
        if t.size() != shape {
            return Err(Error::Checkpoint {
                detail: format!(
                    "weight {name} has shape {:?}, the UNet needs {shape:?}",
                    t.size()
                ),
            });
        }
        let (theirs, linear) = diffusers_name(&name, levels).ok_or_else(|| Error::Config {
            detail: format!("elbo's UNet variable {name} has no diffusers counterpart"),
        })?;
        let mut t = t.to_kind(Kind::Float).to_device(Device::Cpu);
        if name == "time1.weight" && config.unet.time_offset == 0 {
            t = shift_time_weight(&t);
        }
        if linear && shape.len() == 4 {
            t = t.reshape(&shape[..2]);
        }
        named.push((theirs, t.contiguous()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::file("create", out, e))?;
    let files = [
        out.join(CONFIG),
        out.join("scheduler_config.json"),
        out.join("model_index.json"),
        out.join(WEIGHTS),
    ];
    write_tensor_file(&files[3], &named)?;
    write_json_atomically(&files[0], &config_from_unet(&config.unet))?;
    write_json_atomically(&files[1], &scheduler_from_ddpm(config)?)?;
    write_json_atomically(
        &files[2],
        &json!({
            "_class_name": "DDPMPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        }),
    )?;
    Ok(files.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_of_the_unet() {
        let cases = [
            ("time1.weight", "time_embedding.linear_1.weight", false),
            ("input.bias", "conv_in.bias", false),
            (
                "down.0_1.res.time.weight",
                "down_blocks.0.resnets.1.time_emb_proj.weight",
                false,
            ),
            (
                "down.1_0.res.skip.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
                false,
            ),
            (
                "down.1_0.attn.q.weight",
                "down_blocks.1.attentions.0.to_q.weight",
                true,
            ),
            (
                "down.0_down.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
                false,
            ),
            (
                "middle.attn.out.bias",
                "mid_block.attentions.0.to_out.0.bias",
                true,
            ),
            (
                "middle.res2.norm1.weight",
                "mid_block.resnets.1.norm1.weight",
                false,
            ),
            (
                "up.3_2.res.conv2.weight",
                "up_blocks.0.resnets.2.conv2.weight",
                false,
            ),
            (
                "up.1_0.attn.norm.weight",
                "up_blocks.2.attentions.0.group_norm.weight",
                false,
            ),
            ("up.1_up.bias", "up_blocks.2.upsamplers.0.conv.bias", false),
            ("out_norm.weight", "conv_norm_out.weight", false),
            ("label.weight", "class_embedding.weight", false),
        ];
        for (ours, theirs, linear) in cases {
            assert_eq!(
                diffusers_name(ours, 4),
                Some((theirs.to_string(), linear)),
                "{ours}"
            );
        }
        assert_eq!(diffusers_name("nothing.weight", 4), None);
        assert_eq!(
            legacy_attention_name("mid_block.attentions.0.to_out.0.weight").as_deref(),
            Some("mid_block.attentions.0.proj_attn.weight")
        );
    }

    #[test]
    fn the_folded_time_shift_embeds_t_plus_one() {
        let _generator = crate::testing::generator_lock();
        tch::manual_seed(3);
        let w = Tensor::randn([8, 16], (Kind::Double, Device::Cpu));
        let shifted = shift_time_weight(&w);
        let t = Tensor::from_slice(&[0i64, 5, 999]);
        let e = |t: &Tensor| crate::nn::unet::timestep_embedding(t, 16).to_kind(Kind::Double);
        let theirs = e(&t).matmul(&shifted.tr());
        let ours = e(&(&t + 1)).matmul(&w.tr());
        // The embedding is float32 (rounding ~1e-4 at t ~ 1000 in the angle); the fold
        // itself is exact in float64.
        let gap = (theirs - ours).abs().max().double_value(&[]);
        assert!(gap < 1e-3, "{gap}");
    }
}
