//! The configurations: a `UNet2DModel`'s `config.json` as elbo's [`UnetConfig`] and
//! back, and a scheduler's `scheduler_config.json` as the rest of elbo's [`DdpmConfig`]
//! and back, refusing what elbo's UNet and DDPM cannot express, naming the field.

use std::path::Path;

use serde_json::{Value, json};

use super::{DIFFUSERS_VERSION, refuse};
use crate::error::Result;
use crate::models::ddpm::{
    DdpmConfig, LossKind, Objective, ScheduleKind, TimestepSampling, VarianceKind,
};
use crate::nn::unet::UnetConfig;

/// Reads a `UNet2DModel` configuration as elbo's UNet, refusing what it cannot express.
pub fn unet_from_config(json: &Value, file: &Path) -> Result<UnetConfig> {
    let obj = json.as_object().ok_or_else(|| {
        refuse(
            file,
            "expected a JSON object (a UNet2DModel's config)".into(),
        )
    })?;
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let int = |name: &str| -> Result<i64> {
        field(name).and_then(Value::as_i64).ok_or_else(|| {
            refuse(
                file,
                format!("{name}: expected a whole number, found {:?}", obj.get(name)),
            )
        })
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
                        allowed
                            .iter()
                            .map(Value::to_string)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )
                },
            )),
            _ => Ok(()),
        }
    };
    if let Some(class) = field("_class_name").and_then(Value::as_str)
        && class != "UNet2DModel"
    {
        return Err(refuse(
            file,
            format!("_class_name is {class}, expected UNet2DModel"),
        ));
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
        "_class_name",
        "_diffusers_version",
        "_name_or_path",
        "sample_size",
        "in_channels",
        "out_channels",
        "center_input_sample",
        "time_embedding_type",
        "freq_shift",
        "flip_sin_to_cos",
        "down_block_types",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "mid_block_scale_factor",
        "downsample_padding",
        "downsample_type",
        "upsample_type",
        "dropout",
        "act_fn",
        "attention_head_dim",
        "norm_num_groups",
        "attn_norm_num_groups",
        "norm_eps",
        "resnet_time_scale_shift",
        "add_attention",
        "class_embed_type",
        "num_class_embeds",
        "num_train_timesteps",
        "mid_block_type",
        "time_embedding_dim",
        "time_embedding_act_fn",
    ];
    if let Some(unknown) = obj
        .keys()
        .find(|k| !known.contains(&k.as_str()) && !obj[*k].is_null())
    {
        return Err(refuse(
            file,
            format!(
                "{unknown} is set to {}, a field elbo's UNet has no counterpart for",
                obj[unknown]
            ),
        ));
    }
    let image_size = match field("sample_size") {
        Some(Value::Array(sides)) if sides.len() == 2 && sides[0] == sides[1] => sides[0].as_i64(),
        Some(v) => v.as_i64(),
        None => None,
    }
    .ok_or_else(|| {
        refuse(
            file,
            format!(
                "sample_size: expected one side (square images), found {:?}",
                obj.get("sample_size")
            ),
        )
    })?;
    let in_channels = int("in_channels")?;
    let out_channels = field("out_channels")
        .and_then(Value::as_i64)
        .unwrap_or(in_channels);
    if out_channels != in_channels && out_channels != 2 * in_channels {
        return Err(refuse(
            file,
            format!(
                "out_channels is {out_channels} and in_channels {in_channels}: elbo's UNet \
                 predicts as many channels as it reads, or twice as many with learned \
                 variances (variance_type learned_range)"
            ),
        ));
    }
    let channels: Vec<i64> = field("block_out_channels")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let base = *channels.first().ok_or_else(|| {
        refuse(
            file,
            "block_out_channels: expected a list of channel counts".into(),
        )
    })?;
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
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
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
            format!(
                "attention_head_dim is {dim}: the middle block would have several heads, elbo's has one"
            ),
        ));
    }
    let groups = field("norm_num_groups")
        .and_then(Value::as_i64)
        .unwrap_or(32);
    if let Some(g) = field("attn_norm_num_groups").and_then(Value::as_i64)
        && g != groups
    {
        return Err(refuse(
            file,
            format!(
                "attn_norm_num_groups is {g}, and elbo's attention normalises with norm_num_groups ({groups})"
            ),
        ));
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
        downsample_padding: field("downsample_padding")
            .and_then(Value::as_i64)
            .unwrap_or(1),
        time_offset: -1,
        out_channels: (out_channels != in_channels).then_some(out_channels),
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
        .map(|l| {
            if attn(l) {
                "AttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = (0..levels)
        .rev()
        .map(|l| {
            if attn(l) {
                "AttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
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
        "out_channels": u.out_channels.unwrap_or(u.in_channels),
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
    [
        ScheduleKind::Linear,
        ScheduleKind::Cosine,
        ScheduleKind::Sigmoid,
    ]
    .into_iter()
    .find(|kind| {
        kind.build(betas.len()).is_ok_and(|s| {
            s.betas()
                .iter()
                .zip(betas)
                .all(|(a, b)| (a - b).abs() <= 1e-9 * a.abs().max(1e-12))
        })
    })
}

/// Reads a diffusers scheduler configuration as elbo's DDPM around `unet`.
pub fn ddpm_from_scheduler(json: &Value, file: &Path, unet: UnetConfig) -> Result<DdpmConfig> {
    let obj = json
        .as_object()
        .ok_or_else(|| refuse(file, "expected a JSON object (a scheduler's config)".into()))?;
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let timesteps = field("num_train_timesteps")
        .and_then(Value::as_u64)
        .unwrap_or(1000) as usize;
    if !(1..=100_000).contains(&timesteps) {
        return Err(refuse(
            file,
            format!("num_train_timesteps is {timesteps}, elbo's DDPM takes 1 to 100000"),
        ));
    }
    let schedule = if let Some(betas) = field("trained_betas").and_then(Value::as_array) {
        let betas: Vec<f64> = betas.iter().filter_map(Value::as_f64).collect();
        if betas.len() != timesteps {
            return Err(refuse(
                file,
                format!(
                    "trained_betas has {} values for {timesteps} steps",
                    betas.len()
                ),
            ));
        }
        schedule_of_betas(&betas).ok_or_else(|| {
            refuse(
                file,
                "trained_betas are none of elbo's schedules (linear, cosine, sigmoid)".into(),
            )
        })?
    } else {
        let name = field("beta_schedule")
            .and_then(Value::as_str)
            .unwrap_or("linear");
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
                    format!(
                        "beta_schedule is {other}, and elbo has linear and squaredcos_cap_v2 (cosine)"
                    ),
                ));
            }
        }
    };
    let objective = match field("prediction_type")
        .and_then(Value::as_str)
        .unwrap_or("epsilon")
    {
        "epsilon" => Objective::Eps,
        "sample" => Objective::X0,
        "v_prediction" => Objective::V,
        other => {
            return Err(refuse(
                file,
                format!("prediction_type is {other}, expected epsilon, sample or v_prediction"),
            ));
        }
    };
    let variance = match field("variance_type")
        .and_then(Value::as_str)
        .unwrap_or("fixed_small")
    {
        "fixed_large" | "fixed_large_log" => VarianceKind::FixedLarge,
        "fixed_small" | "fixed_small_log" => VarianceKind::FixedSmall,
        "learned_range" => VarianceKind::LearnedRange,
        other => {
            return Err(refuse(
                file,
                format!(
                    "variance_type is {other}: elbo's DDPM has fixed_large, fixed_small and \
                     learned_range (improved DDPM's interpolation)"
                ),
            ));
        }
    };
    let learned = variance == VarianceKind::LearnedRange;
    if learned != unet.out_channels.is_some() {
        return Err(refuse(
            file,
            format!(
                "variance_type is {} with a UNet of {} output channels for {} input channels: \
                 learned_range needs twice as many outputs (the variances' half), a fixed \
                 variance as many",
                if learned { "learned_range" } else { "fixed" },
                unet.out_channels.unwrap_or(unet.in_channels),
                unet.in_channels
            ),
        ));
    }
    let config = DdpmConfig {
        unet,
        schedule,
        timesteps,
        objective,
        // A learned variance is trained by the bound: fine-tuning uses improved DDPM's
        // hybrid loss.
        loss: if learned {
            LossKind::Hybrid
        } else {
            LossKind::Simple
        },
        variance,
        cond_drop: 0.0,
        timestep_sampling: TimestepSampling::Uniform,
        hybrid_weight: None,
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
            VarianceKind::LearnedRange => "learned_range",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ddpm::{DdpmConfig, DdpmPreset};

    /// Every DDPM preset, unconditional and conditional, and every schedule and
    /// objective, writes a configuration that reads back as itself (but for the time
    /// convention: an exported network is read as one counting from 0, its weights
    /// folded by the export).
    #[test]
    fn configurations_round_trip() {
        let file = Path::new("config.json");
        for preset in [DdpmPreset::Mnist, DdpmPreset::Cifar10, DdpmPreset::Ddpm64] {
            let image = match preset {
                DdpmPreset::Mnist => [1, 28, 28],
                DdpmPreset::Cifar10 => [3, 32, 32],
                DdpmPreset::Ddpm64 => [3, 64, 64],
            };
            let mut config = DdpmConfig::preset(preset, image).unwrap();
            config.unet.dropout = 0.0;
            for (classes, schedule, objective) in [
                (None, ScheduleKind::Linear, Objective::Eps),
                (Some(10), ScheduleKind::Cosine, Objective::V),
                (None, ScheduleKind::Sigmoid, Objective::X0),
            ] {
                config.unet.num_classes = classes;
                config.schedule = schedule;
                config.objective = objective;
                let unet = unet_from_config(&config_from_unet(&config.unet), file).unwrap();
                let back = ddpm_from_scheduler(&scheduler_from_ddpm(&config).unwrap(), file, unet)
                    .unwrap();
                let mut expected = config.clone();
                expected.unet.time_offset = -1;
                assert_eq!(back, expected, "{preset:?} {classes:?} {schedule:?}");
            }
        }
        // Learned variances: twice the output channels and variance_type learned_range,
        // read back with the hybrid loss (what fine-tuning trains them with).
        let mut learned = DdpmConfig::preset(DdpmPreset::Mnist, [1, 28, 28])
            .unwrap()
            .with_variance(VarianceKind::LearnedRange);
        learned.loss = LossKind::Hybrid;
        let unet_json = config_from_unet(&learned.unet);
        assert_eq!(unet_json["out_channels"], 2);
        let scheduler = scheduler_from_ddpm(&learned).unwrap();
        assert_eq!(scheduler["variance_type"], "learned_range");
        let unet = unet_from_config(&unet_json, file).unwrap();
        let back = ddpm_from_scheduler(&scheduler, file, unet).unwrap();
        let mut expected = learned.clone();
        expected.unet.time_offset = -1;
        assert_eq!(back, expected);
        // A learned range with as many outputs as inputs (or the reverse) is refused.
        let fixed_unet =
            unet_from_config(&config_from_unet(&config_of_mnist().unet), file).unwrap();
        let err = ddpm_from_scheduler(&scheduler, file, fixed_unet)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("learned_range needs twice as many outputs"),
            "{err}"
        );
    }

    fn config_of_mnist() -> DdpmConfig {
        DdpmConfig::preset(DdpmPreset::Mnist, [1, 28, 28]).unwrap()
    }
}
