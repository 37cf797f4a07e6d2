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
use crate::models::ddpm::{
    DdpmConfig, LossKind, Objective, ScheduleKind, TimestepSampling, VarianceKind,
};
use crate::nn::unet::UnetConfig;
use crate::train::checkpoint::{read_tensor_file, sha256_of, write_json_atomically, write_tensor_file};

/// The weights' file names diffusers writes (safetensors) and wrote (torch.save).
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const WEIGHTS_BIN: &str = "diffusion_pytorch_model.bin";
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
    serde_json::from_str(&text)
        .map_err(|e| refuse(path, format!("expected {what} as JSON, found text that does not parse ({e})")))
}

/// Reads a `UNet2DModel` configuration as elbo's UNet, refusing what it cannot express.
pub fn unet_from_config(json: &Value, file: &Path) -> Result<UnetConfig> {
    let obj = json
        .as_object()
        .ok_or_else(|| refuse(file, "expected a JSON object (a UNet2DModel's config)".into()))?;
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let int = |name: &str| -> Result<i64> {
        field(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| refuse(file, format!("{name}: expected a whole number, found {:?}", obj.get(name))))
    };
    // Fields whose value must be one elbo's UNet has (absent: diffusers' default, which is it).
    let must = |name: &str, allowed: &[Value]| -> Result<()> {
        match field(name) {
            Some(v) if !allowed.contains(v) => Err(refuse(
                file,
                if allowed.is_empty() {
                    format!("{name} is {v}, and elbo's UNet has no such option (expected null)")
                } else {
                    format!(
                        "{name} is {v}, and elbo's UNet has only {}",
                        allowed.iter().map(Value::to_string).collect::<Vec<_>>().join(" or ")
                    )
                },
            )),
            _ => Ok(()),
        }
    };
    if let Some(class) = field("_class_name").and_then(Value::as_str)
        && class != "UNet2DModel"
    {
        return Err(refuse(file, format!("_class_name is {class}, expected UNet2DModel")));
    }
    must("center_input_sample", &[json!(false)])?;
    must("time_embedding_type", &[json!("positional")])?;
    must("flip_sin_to_cos", &[json!(false)])?;
    must("freq_shift", &[json!(1)])?;
    must("act_fn", &[json!("silu")])?;
    must("resnet_time_scale_shift", &[json!("default")])?;
    must("add_attention", &[json!(true)])?;
    must("mid_block_type", &[json!("UNetMidBlock2D")])?;
    must("mid_block_scale_factor", &[json!(1), json!(1.0)])?;
    must("downsample_type", &[json!("conv")])?;
    must("upsample_type", &[json!("conv")])?;
    must("class_embed_type", &[])?;
    must("time_embedding_dim", &[])?;
    must("time_embedding_act_fn", &[])?;
    must("num_train_timesteps", &[])?;
    let known = [
        "_class_name", "_diffusers_version", "_name_or_path", "sample_size", "in_channels",
        "out_channels", "center_input_sample", "time_embedding_type", "freq_shift",
        "flip_sin_to_cos", "down_block_types", "up_block_types", "block_out_channels",
        "layers_per_block", "mid_block_scale_factor", "downsample_padding", "downsample_type",
        "upsample_type", "dropout", "act_fn", "attention_head_dim", "norm_num_groups",
        "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift", "add_attention",
        "class_embed_type", "num_class_embeds", "num_train_timesteps", "mid_block_type",
        "time_embedding_dim", "time_embedding_act_fn",
    ];
    if let Some(unknown) = obj.keys().find(|k| !known.contains(&k.as_str()) && !obj[*k].is_null()) {
        return Err(refuse(
            file,
            format!("{unknown} is set to {}, a field elbo's UNet has no counterpart for", obj[unknown]),
        ));
    }
    let image_size = match field("sample_size") {
        Some(Value::Array(sides)) if sides.len() == 2 && sides[0] == sides[1] => sides[0].as_i64(),
        Some(v) => v.as_i64(),
        None => None,
    }
    .ok_or_else(|| refuse(file, format!("sample_size: expected one side (square images), found {:?}", obj.get("sample_size"))))?;
    let in_channels = int("in_channels")?;
    let out_channels = field("out_channels").and_then(Value::as_i64).unwrap_or(in_channels);
    if out_channels != in_channels {
        return Err(refuse(
            file,
            format!(
                "out_channels is {out_channels} and in_channels {in_channels}: elbo's UNet \
                 predicts as many channels as it reads (a learned variance doubles them)"
            ),
        ));
    }
    let channels: Vec<i64> = field("block_out_channels")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let base = *channels.first().ok_or_else(|| refuse(file, "block_out_channels: expected a list of channel counts".into()))?;
    if base <= 0 || channels.iter().any(|c| c % base != 0 || *c <= 0) {
        return Err(refuse(
            file,
            format!("block_out_channels {channels:?}: elbo's UNet needs multiples of the first"),
        ));
    }
    let levels = channels.len();
    let types = |name: &str| -> Vec<String> {
        field(name)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let (down, up) = (types("down_block_types"), types("up_block_types"));
    if down.len() != levels || up.len() != levels {
        return Err(refuse(
            file,
            format!(
                "down_block_types and up_block_types: expected {levels} each (one per \
                 block_out_channels), found {} and {}",
                down.len(),
                up.len()
            ),
        ));
    }
    let mut attention = Vec::new();
    for level in 0..levels {
        let d = down[level].as_str();
        let u = up[levels - 1 - level].as_str();
        let attn = match (d, u) {
            ("DownBlock2D", "UpBlock2D") => false,
            ("AttnDownBlock2D", "AttnUpBlock2D") => true,
            _ => {
                return Err(refuse(
                    file,
                    format!(
                        "down_block_types[{level}] is {d} and up_block_types[{}] {u}: elbo's \
                         UNet has DownBlock2D/UpBlock2D or AttnDownBlock2D/AttnUpBlock2D \
                         pairs, attention on both ways of a level or on neither",
                        levels - 1 - level
                    ),
                ));
            }
        };
        if attn {
            attention.push(image_size >> level);
            // One head: attention_head_dim null, or the channels themselves.
            if let Some(dim) = field("attention_head_dim").and_then(Value::as_i64)
                && dim != channels[level]
            {
                return Err(refuse(
                    file,
                    format!(
                        "attention_head_dim is {dim}: {} heads at level {level}, and elbo's \
                         attention has one head (attention_head_dim null)",
                        channels[level] / dim.max(1)
                    ),
                ));
            }
        }
    }
    if let Some(dim) = field("attention_head_dim").and_then(Value::as_i64)
        && dim != channels[levels - 1]
    {
        return Err(refuse(
            file,
            format!("attention_head_dim is {dim}: the middle block would have several heads, elbo's has one"),
        ));
    }
    let groups = field("norm_num_groups").and_then(Value::as_i64).unwrap_or(32);
    if let Some(g) = field("attn_norm_num_groups").and_then(Value::as_i64)
        && g != groups
    {
        return Err(refuse(file, format!("attn_norm_num_groups is {g}, and elbo's attention normalises with norm_num_groups ({groups})")));
    }
    let num_classes = match field("num_class_embeds").and_then(Value::as_i64) {
        None => None,
        Some(n) if n >= 2 => Some(n - 1),
        Some(n) => {
            return Err(refuse(
                file,
                format!(
                    "num_class_embeds is {n}: elbo's conditional UNet keeps its last \
                     embedding for the null label, so it needs at least 2"
                ),
            ));
        }
    };
    let config = UnetConfig {
        in_channels,
        image_size,
        base_channels: base,
        channel_mults: channels.iter().map(|c| c / base).collect(),
        res_blocks: int("layers_per_block")?.max(0) as usize,
        attention_resolutions: attention,
        dropout: field("dropout").and_then(Value::as_f64).unwrap_or(0.0),
        norm_groups: groups,
        num_classes,
        extra_inputs: 0,
        norm_eps: field("norm_eps").and_then(Value::as_f64).unwrap_or(1e-5),
        downsample_padding: field("downsample_padding").and_then(Value::as_i64).unwrap_or(1),
        time_offset: -1,
    };
    config
        .validate()
        .map_err(|e| refuse(file, format!("the UNet it describes cannot be built: {e}")))?;
    Ok(config)
}

/// The `UNet2DModel` configuration of elbo's UNet `u`.
pub fn config_from_unet(u: &UnetConfig) -> Value {
    let levels = u.channel_mults.len();
    let attn = |level: usize| u.attention_resolutions.contains(&(u.image_size >> level));
    let down: Vec<&str> = (0..levels)
        .map(|l| if attn(l) { "AttnDownBlock2D" } else { "DownBlock2D" })
        .collect();
    let up: Vec<&str> = (0..levels)
        .rev()
        .map(|l| if attn(l) { "AttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    json!({
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "add_attention": true,
        "attention_head_dim": null,
        "attn_norm_num_groups": null,
        "block_out_channels": u.channel_mults.iter().map(|m| m * u.base_channels).collect::<Vec<_>>(),
        "center_input_sample": false,
        "class_embed_type": null,
        "down_block_types": down,
        "downsample_padding": u.downsample_padding,
        "downsample_type": "conv",
        "dropout": u.dropout,
        "flip_sin_to_cos": false,
        "freq_shift": 1,
        "in_channels": u.in_channels,
        "layers_per_block": u.res_blocks,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2D",
        "norm_eps": u.norm_eps,
        "norm_num_groups": u.norm_groups,
        "num_class_embeds": u.num_classes.map(|k| k + 1),
        "num_train_timesteps": null,
        "out_channels": u.in_channels,
        "resnet_time_scale_shift": "default",
        "sample_size": u.image_size,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "up_block_types": up,
        "upsample_type": "conv",
    })
}

/// elbo's schedule kinds, by the betas they give at `t` steps.
fn schedule_of_betas(betas: &[f64]) -> Option<ScheduleKind> {
    [ScheduleKind::Linear, ScheduleKind::Cosine, ScheduleKind::Sigmoid]
        .into_iter()
        .find(|kind| {
            kind.build(betas.len()).is_ok_and(|s| {
                s.betas().iter().zip(betas).all(|(a, b)| (a - b).abs() <= 1e-9 * a.abs().max(1e-12))
            })
        })
}

/// Reads a diffusers scheduler configuration as elbo's DDPM around `unet`.
pub fn ddpm_from_scheduler(json: &Value, file: &Path, unet: UnetConfig) -> Result<DdpmConfig> {
    let obj = json
        .as_object()
        .ok_or_else(|| refuse(file, "expected a JSON object (a scheduler's config)".into()))?;
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let timesteps = field("num_train_timesteps").and_then(Value::as_u64).unwrap_or(1000) as usize;
    if !(1..=100_000).contains(&timesteps) {
        return Err(refuse(file, format!("num_train_timesteps is {timesteps}, elbo's DDPM takes 1 to 100000")));
    }
    let schedule = if let Some(betas) = field("trained_betas").and_then(Value::as_array) {
        let betas: Vec<f64> = betas.iter().filter_map(Value::as_f64).collect();
        if betas.len() != timesteps {
            return Err(refuse(file, format!("trained_betas has {} values for {timesteps} steps", betas.len())));
        }
        schedule_of_betas(&betas).ok_or_else(|| {
            refuse(file, "trained_betas are none of elbo's schedules (linear, cosine, sigmoid)".into())
        })?
    } else {
        let name = field("beta_schedule").and_then(Value::as_str).unwrap_or("linear");
        match name {
            "linear" => {
                let kind = ScheduleKind::Linear;
                let ours = kind.build(timesteps)?;
                let (first, last) = (ours.betas()[0], ours.betas()[timesteps - 1]);
                let start = field("beta_start").and_then(Value::as_f64).unwrap_or(1e-4);
                let end = field("beta_end").and_then(Value::as_f64).unwrap_or(0.02);
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
                if !close(start, first) || !close(end, last) {
                    return Err(refuse(
                        file,
                        format!(
                            "beta_start {start} and beta_end {end}: elbo's linear schedule of \
                             {timesteps} steps runs from {first} to {last} (Ho et al.'s, scaled \
                             by 1000 / T)"
                        ),
                    ));
                }
                kind
            }
            "squaredcos_cap_v2" => ScheduleKind::Cosine,
            other => {
                return Err(refuse(
                    file,
                    format!("beta_schedule is {other}, and elbo has linear and squaredcos_cap_v2 (cosine)"),
                ));
            }
        }
    };
    let objective = match field("prediction_type").and_then(Value::as_str).unwrap_or("epsilon") {
        "epsilon" => Objective::Eps,
        "sample" => Objective::X0,
        "v_prediction" => Objective::V,
        other => return Err(refuse(file, format!("prediction_type is {other}, expected epsilon, sample or v_prediction"))),
    };
    let variance = match field("variance_type").and_then(Value::as_str).unwrap_or("fixed_small") {
        "fixed_large" | "fixed_large_log" => VarianceKind::FixedLarge,
        "fixed_small" | "fixed_small_log" => VarianceKind::FixedSmall,
        other => {
            return Err(refuse(
                file,
                format!("variance_type is {other}: elbo's DDPM has fixed variances (fixed_large, fixed_small), not learned ones"),
            ));
        }
    };
    let config = DdpmConfig {
        unet,
        schedule,
        timesteps,
        objective,
        loss: LossKind::Simple,
        variance,
        cond_drop: 0.0,
        timestep_sampling: TimestepSampling::Uniform,
    };
    config.validate()?;
    Ok(config)
}

/// The `DDPMScheduler` configuration of `config`.
pub fn scheduler_from_ddpm(config: &DdpmConfig) -> Result<Value> {
    let mut out = json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": config.timesteps,
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "prediction_type": match config.objective {
            Objective::Eps => "epsilon",
            Objective::X0 => "sample",
            Objective::V => "v_prediction",
        },
        "variance_type": match config.variance {
            VarianceKind::FixedLarge => "fixed_large",
            VarianceKind::FixedSmall => "fixed_small",
        },
        "trained_betas": null,
    });
    match config.schedule {
        ScheduleKind::Linear => {
            let s = config.schedule.build(config.timesteps)?;
            out["beta_schedule"] = json!("linear");
            out["beta_start"] = json!(s.betas()[0]);
            out["beta_end"] = json!(s.betas()[config.timesteps - 1]);
        }
        ScheduleKind::Cosine => out["beta_schedule"] = json!("squaredcos_cap_v2"),
        ScheduleKind::Sigmoid => {
            let s = config.schedule.build(config.timesteps)?;
            out["beta_schedule"] = json!("linear");
            out["trained_betas"] = json!(s.betas());
        }
    }
    Ok(out)
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
            "res" => Some((format!("{prefix}.resnets.{{}}.{}.{leaf}", res(part)?), false)),
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
            let index = if module == "down" { level } else { levels.checked_sub(level + 1)? };
            let blocks = if module == "down" { "down_blocks" } else { "up_blocks" };
            match block {
                "down" | "up" => {
                    let sampler = if block == "down" { "downsamplers" } else { "upsamplers" };
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
    [("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")]
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
    let mut out: Vec<(String, Vec<i64>)> =
        vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    out.sort();
    Ok(out)
}

/// Reads the diffusers model folder `folder`; with `sha256`, the weights file must have
/// that digest.
pub fn read_diffusers(folder: &Path, sha256: Option<&str>) -> Result<DiffusersModel> {
    let layout = layout(folder)?;
    let config_file = layout.unet.join("config.json");
    let unet = unet_from_config(&read_json(&config_file, "a UNet2DModel configuration")?, &config_file)?;
    let scheduler_file = layout.scheduler.join("scheduler_config.json");
    let config = ddpm_from_scheduler(
        &read_json(&scheduler_file, "the DDPM scheduler's configuration (beta schedule and T)")?,
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
            .map_err(|e| Error::Data { detail: e.to_string() })?
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
            None => match legacy_attention_name(&theirs).and_then(|old| Some((old.clone(), tensors.get(&old)?))) {
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
        let expected: Vec<i64> = if linear && shape.len() == 4 { shape[..2].to_vec() } else { shape.clone() };
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
                unused.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
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
pub fn write_diffusers(config: &DdpmConfig, weights: &BTreeMap<String, Tensor>, out: &Path) -> Result<Vec<PathBuf>> {
    let levels = config.unet.channel_mults.len();
    let mut named = Vec::with_capacity(weights.len());
    for (name, shape) in unet_variables(config)? {
        let t = weights.get(&name).ok_or_else(|| Error::Checkpoint {
            detail: format!("weight {name} is missing: the checkpoint is not of this UNet"),
        })?;
        if t.size() != shape {
            return Err(Error::Checkpoint {
                detail: format!("weight {name} has shape {:?}, the UNet needs {shape:?}", t.size()),
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
        out.join("config.json"),
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
            ("down.0_1.res.time.weight", "down_blocks.0.resnets.1.time_emb_proj.weight", false),
            ("down.1_0.res.skip.weight", "down_blocks.1.resnets.0.conv_shortcut.weight", false),
            ("down.1_0.attn.q.weight", "down_blocks.1.attentions.0.to_q.weight", true),
            ("down.0_down.weight", "down_blocks.0.downsamplers.0.conv.weight", false),
            ("middle.attn.out.bias", "mid_block.attentions.0.to_out.0.bias", true),
            ("middle.res2.norm1.weight", "mid_block.resnets.1.norm1.weight", false),
            ("up.3_2.res.conv2.weight", "up_blocks.0.resnets.2.conv2.weight", false),
            ("up.1_0.attn.norm.weight", "up_blocks.2.attentions.0.group_norm.weight", false),
            ("up.1_up.bias", "up_blocks.2.upsamplers.0.conv.bias", false),
            ("out_norm.weight", "conv_norm_out.weight", false),
            ("label.weight", "class_embedding.weight", false),
        ];
        for (ours, theirs, linear) in cases {
            assert_eq!(diffusers_name(ours, 4), Some((theirs.to_string(), linear)), "{ours}");
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
