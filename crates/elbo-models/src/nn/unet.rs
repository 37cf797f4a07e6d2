//! The noise-prediction UNet of Ho et al. (2020): residual blocks with GroupNorm, SiLU,
//! dropout and a sinusoidal time embedding through an MLP, self-attention at chosen
//! resolutions, stride-2 convolutions down and nearest-neighbour upsampling up, with
//! skip connections from every level of the way down.
//!
//! Variable names (`down.0_0.res.conv1.weight`, `middle.attn.q.bias`, `up.1_up.weight`,
//! ...) are the state-dict names of the PyTorch twin in `benches/reference/ddpm_unet.py`,
//! which loads elbo's checkpoints with `strict=True`.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::conv::Conv;
use crate::nn::norm::GroupNorm;

/// The shape of a UNet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnetConfig {
    /// Image channels (in and out; see `extra_inputs`).
    pub in_channels: i64,
    /// Image side (square images).
    pub image_size: i64,
    /// Channels of the first level; the time embedding has 4 times as many.
    pub base_channels: i64,
    /// Channels of each level as multiples of `base_channels`; each level after the
    /// first halves the side.
    pub channel_mults: Vec<i64>,
    /// Residual blocks per level (the way up has one more).
    pub res_blocks: usize,
    /// Sides at which self-attention follows each residual block.
    pub attention_resolutions: Vec<i64>,
    /// Dropout inside the residual blocks while training.
    pub dropout: f64,
    /// GroupNorm groups.
    pub norm_groups: i64,
    /// Class-conditional: the number of classes, whose learned embeddings (one more for
    /// the null label, index `num_classes`) are added to the time embedding. `None` (and
    /// absent from checkpoints): unconditional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<i64>,
    /// Channels concatenated to the image at the input only (a VDM's Fourier features of
    /// `z_t`); the output has `in_channels`. 0 (and absent from checkpoints) for a DDPM.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub extra_inputs: i64,
    /// GroupNorm's epsilon: 1e-5 (PyTorch's; absent from checkpoints) for elbo's own
    /// networks, 1e-6 for TensorFlow's (Ho et al.'s, and diffusers' ports of them).
    #[serde(
        default = "default_norm_eps",
        skip_serializing_if = "is_default_norm_eps"
    )]
    pub norm_eps: f64,
    /// How the stride-2 convolutions pad: 1 on every side (1, absent from checkpoints),
    /// or 0: one row and one column after the image, TensorFlow's "SAME" (Ho et al.'s
    /// network; diffusers' `downsample_padding: 0`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub downsample_padding: i64,
    /// Added to the timestep before it is embedded: 0 (absent from checkpoints) for
    /// elbo's networks, which see `t` in `1..=T`; -1 for networks trained on `t - 1`
    /// (diffusers, Ho et al.'s code: time counted from 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub time_offset: i64,
    /// Output channels: `None` (absent from checkpoints) for `in_channels`; twice that
    /// for a DDPM that also predicts its reverse variances (improved DDPM's learned
    /// range: the second half of the channels interpolates each step's log-variance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_channels: Option<i64>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn one() -> i64 {
    1
}

fn is_one(n: &i64) -> bool {
    *n == 1
}

/// GroupNorm's default epsilon (PyTorch's).
pub const DEFAULT_NORM_EPS: f64 = crate::nn::norm::EPS;

fn default_norm_eps() -> f64 {
    DEFAULT_NORM_EPS
}

fn is_default_norm_eps(eps: &f64) -> bool {
    *eps == DEFAULT_NORM_EPS
}

impl UnetConfig {
    /// Checks that the network can be built.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::Config { detail });
        if self.in_channels < 1 || self.image_size < 1 || self.base_channels < 2 {
            return bad(format!(
                "UNet needs positive channels and side and at least 2 base channels, found \
                 {} channels, side {}, {} base channels",
                self.in_channels, self.image_size, self.base_channels
            ));
        }
        if self.base_channels % 2 != 0 {
            return bad(format!(
                "the time embedding needs an even number of base channels, found {}",
                self.base_channels
            ));
        }
        if self.channel_mults.is_empty() || self.channel_mults.iter().any(|&m| m < 1) {
            return bad(format!(
                "channel multipliers must be at least 1, one per level, found {:?}",
                self.channel_mults
            ));
        }
        if !(0..=1024).contains(&self.extra_inputs) {
            return bad(format!(
                "the UNet takes 0 to 1024 extra input channels, found {}",
                self.extra_inputs
            ));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return bad(format!(
                "GroupNorm's epsilon must be in (0, 1), found {}",
                self.norm_eps
            ));
        }
        if let Some(out) = self.out_channels
            && !(1..=4096).contains(&out)
        {
            return bad(format!(
                "the UNet's output channels must be 1 to 4096, found {out}"
            ));
        }
        if !matches!(self.downsample_padding, 0 | 1) {
            return bad(format!(
                "downsample_padding is 1 (every side) or 0 (after the image, as TensorFlow), \
                 found {}",
                self.downsample_padding
            ));
        }
        let halvings = self.channel_mults.len().saturating_sub(1) as u32;
        if self.downsample_padding == 0 && self.image_size % (1i64 << halvings.min(62)) != 0 {
            return bad(format!(
                "downsample_padding 0 needs a side divisible by 2^{halvings} (one halving per \
                 level after the first), found {}",
                self.image_size
            ));
        }
        if !matches!(self.time_offset, -1 | 0) {
            return bad(format!(
                "time_offset is 0 (t counted from 1) or -1 (from 0), found {}",
                self.time_offset
            ));
        }
        if self.res_blocks == 0 {
            return bad("the UNet needs at least 1 residual block per level, found 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), found {}", self.dropout));
        }
        if let Some(classes) = self.num_classes
            && !(1..=100_000).contains(&classes)
        {
            return bad(format!(
                "a class-conditional UNet needs between 1 and 100000 classes, found {classes}"
            ));
        }
        for &m in &self.channel_mults {
            let c = self.base_channels * m;
            if self.norm_groups < 1 || c % self.norm_groups != 0 {
                return bad(format!(
                    "GroupNorm with {} groups needs channel counts divisible by it, found {c}",
                    self.norm_groups
                ));
            }
        }
        Ok(())
    }
}

/// The sinusoidal embedding of timesteps `t` (shape (B,), integers): `[sin(t w_k),
/// cos(t w_k)]` with `w_k = exp(-k ln(10000) / (h - 1))` for `k < h = dim / 2`.
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let scale = (10_000f64).ln() / ((half - 1).max(1) as f64);
    let k = Tensor::arange(half, (Kind::Float, t.device()));
    let freqs = (k * -scale).exp();
    let angles = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[angles.sin(), angles.cos()], 1)
}

fn conv3(path: nn::Path<'_>, c_in: i64, c_out: i64, stride: i64, zero: bool) -> Conv {
    conv3_padded(path, c_in, c_out, stride, 1, zero)
}

fn conv3_padded(
    path: nn::Path<'_>,
    c_in: i64,
    c_out: i64,
    stride: i64,
    padding: i64,
    zero: bool,
) -> Conv {
    let mut config = nn::ConvConfig {
        stride,
        padding,
        ..Default::default()
    };
    if zero {
        config.ws_init = nn::Init::Const(0.0);
    }
    Conv::new(nn::conv2d(path, c_in, c_out, 3, config), stride, padding)
}

fn conv1(path: nn::Path<'_>, c_in: i64, c_out: i64, zero: bool) -> Conv {
    let mut config = nn::ConvConfig::default();
    if zero {
        config.ws_init = nn::Init::Const(0.0);
    }
    Conv::pointwise(nn::conv2d(path, c_in, c_out, 1, config))
}

/// A residual block conditioned on the time embedding.
#[derive(Debug)]
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv,
    time: nn::Linear,
    /// Normalises `conv1`'s output plus the time embedding's projection.
    norm2: GroupNorm,
    conv2: Conv,
    skip: Option<Conv>,
    dropout: f64,
}

impl ResBlock {
    fn new(p: nn::Path<'_>, c_in: i64, c_out: i64, temb: i64, config: &UnetConfig) -> ResBlock {
        let g = config.norm_groups;
        ResBlock {
            norm1: GroupNorm::with_eps(&p / "norm1", g, c_in, true, config.norm_eps),
            conv1: conv3(&p / "conv1", c_in, c_out, 1, false),
            time: nn::linear(&p / "time", temb, c_out, Default::default()),
            norm2: GroupNorm::with_eps(&p / "norm2", g, c_out, true, config.norm_eps),
            conv2: conv3(&p / "conv2", c_out, c_out, 1, true),
            skip: (c_in != c_out).then(|| conv1(&p / "skip", c_in, c_out, false)),
            dropout: config.dropout,
        }
    }

    /// `temb_act`: the activated time embedding, SiLU(temb).
    fn forward(&self, x: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x, None));
        let time = self.time.forward(temb_act);
        let h = self
            .norm2
            .forward(&h, Some(&time))
            .dropout(self.dropout, train);
        let h = self.conv2.forward(&h);
        match &self.skip {
            Some(skip) => skip.forward(x) + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over the positions of a feature map, with a residual.
#[derive(Debug)]
struct Attention {
    norm: GroupNorm,
    q: Conv,
    k: Conv,
    v: Conv,
    out: Conv,
}

impl Attention {
    fn new(p: nn::Path<'_>, channels: i64, groups: i64, eps: f64) -> Attention {
        Attention {
            norm: GroupNorm::with_eps(&p / "norm", groups, channels, false, eps),
            q: conv1(&p / "q", channels, channels, false),
            k: conv1(&p / "k", channels, channels, false),
            v: conv1(&p / "v", channels, channels, false),
            out: conv1(&p / "out", channels, channels, true),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap_or((0, 0, 0, 0));
        let n = self.norm.forward(x, None);
        let q = self.q.forward(&n).reshape([b, c, h * w]).transpose(1, 2);
        let k = self.k.forward(&n).reshape([b, c, h * w]);
        let v = self.v.forward(&n).reshape([b, c, h * w]).transpose(1, 2);
        let weights = (q.bmm(&k) * (c as f64).powf(-0.5)).softmax(-1, Kind::Float);
        let attended = weights.bmm(&v).transpose(1, 2).reshape([b, c, h, w]);
        x + self.out.forward(&attended)
    }
}

/// One stage of the way down or up: a residual block, then attention where asked.
#[derive(Debug)]
struct Stage {
    res: ResBlock,
    attn: Option<Attention>,
}

impl Stage {
    fn forward(&self, h: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        let h = self.res.forward(h, temb_act, train);
        match &self.attn {
            Some(attn) => attn.forward(&h),
            None => h,
        }
    }
}

#[derive(Debug)]
enum Layer {
    Stage(Box<Stage>),
    Down(Conv),
    Up(Conv),
}

/// The UNet `eps_theta(x_t, t)` (or whatever the objective predicts): output shaped as
/// the input.
#[derive(Debug)]
pub struct Unet {
    config: UnetConfig,
    time1: nn::Linear,
    time2: nn::Linear,
    /// The class embeddings (num_classes + 1 rows, the last the null label's).
    label: Option<nn::Embedding>,
    input: Conv,
    down: Vec<Layer>,
    middle: (ResBlock, Attention, ResBlock),
    up: Vec<Layer>,
    out_norm: GroupNorm,
    output: Conv,
}

impl Unet {
    /// A UNet under `p` (variables named as in the module docs).
    pub fn new(p: &nn::Path<'_>, config: &UnetConfig) -> Result<Unet> {
        config.validate()?;
        let ch = config.base_channels;
        let temb = 4 * ch;
        let g = config.norm_groups;
        let eps = config.norm_eps;
        let levels = config.channel_mults.len();
        let attn_at = |side: i64| config.attention_resolutions.contains(&side);
        let (pd, pu) = (p / "down", p / "up");
        let mut down = Vec::new();
        let mut skip_channels = vec![ch];
        let (mut c, mut side) = (ch, config.image_size);
        for (level, &mult) in config.channel_mults.iter().enumerate() {
            let c_out = ch * mult;
            for block in 0..config.res_blocks {
                let path = &pd / format!("{level}_{block}");
                let res = ResBlock::new(&path / "res", c, c_out, temb, config);
                c = c_out;
                let attn = attn_at(side).then(|| Attention::new(&path / "attn", c, g, eps));
                down.push(Layer::Stage(Box::new(Stage { res, attn })));
                skip_channels.push(c);
            }
            if level + 1 < levels {
                down.push(Layer::Down(conv3_padded(
                    &pd / format!("{level}_down"),
                    c,
                    c,
                    2,
                    config.downsample_padding,
                    false,
                )));
                skip_channels.push(c);
                side = (side + 1) / 2;
            }
        }
        let pm = p / "middle";
        let middle = (
            ResBlock::new(&pm / "res1", c, c, temb, config),
            Attention::new(&pm / "attn", c, g, eps),
            ResBlock::new(&pm / "res2", c, c, temb, config),
        );
        let mut up = Vec::new();
        for level in (0..levels).rev() {
            let c_out = ch * config.channel_mults[level];
            for block in 0..=config.res_blocks {
                let skip = skip_channels.pop().unwrap_or(0);
                let path = &pu / format!("{level}_{block}");
                let res = ResBlock::new(&path / "res", c + skip, c_out, temb, config);
                c = c_out;
                let attn = attn_at(side).then(|| Attention::new(&path / "attn", c, g, eps));
                up.push(Layer::Stage(Box::new(Stage { res, attn })));
            }
            if level > 0 {
                up.push(Layer::Up(conv3(
                    &pu / format!("{level}_up"),
                    c,
                    c,
                    1,
                    false,
                )));
                side *= 2;
            }
        }
        Ok(Unet {
            config: config.clone(),
            time1: nn::linear(p / "time1", ch, temb, Default::default()),
            time2: nn::linear(p / "time2", temb, temb, Default::default()),
            // torch.nn.Embedding's initialisation: N(0, 1).
            label: config
                .num_classes
                .map(|k| nn::embedding(p / "label", k + 1, temb, Default::default())),
            input: conv3(
                p / "input",
                config.in_channels + config.extra_inputs,
                ch,
                1,
                false,
            ),
            down,
            middle,
            up,
            out_norm: GroupNorm::with_eps(p / "out_norm", g, c, true, eps),
            output: conv3(
                p / "output",
                c,
                config.out_channels.unwrap_or(config.in_channels),
                1,
                true,
            ),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UnetConfig {
        &self.config
    }

    /// The null label of a class-conditional network (`num_classes`), `None` for an
    /// unconditional one.
    pub fn null_label(&self) -> Option<i64> {
        self.config.num_classes
    }

    /// The network at images `x` (B, C, H, W) and integer timesteps `t` (B,); dropout
    /// only when `train`. A class-conditional network sees the null label (the
    /// unconditional model it learned through label dropout).
    pub fn forward(&self, x: &Tensor, t: &Tensor, train: bool) -> Tensor {
        self.forward_labelled(x, t, None, train)
    }

    /// [`Unet::forward`] with class labels `labels` (B,), int64 in `0..=num_classes`
    /// (`num_classes` is the null label); `None` is the null label. An unconditional
    /// network has no label embedding and ignores `labels`: callers check
    /// [`Unet::null_label`] first.
    pub fn forward_labelled(
        &self,
        x: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let emb = if self.config.time_offset == 0 {
            timestep_embedding(t, self.config.base_channels)
        } else {
            timestep_embedding(&(t + self.config.time_offset), self.config.base_channels)
        };
        let temb = self.time2.forward(&self.time1.forward(&emb).silu());
        let temb = match (&self.label, self.config.num_classes) {
            (Some(table), Some(null)) => {
                let labels = match labels {
                    Some(labels) => labels.shallow_clone(),
                    None => Tensor::full([x.size()[0]], null, (Kind::Int64, x.device())),
                };
                temb + table.forward(&labels)
            }
            _ => temb,
        };
        // Every residual block projects SiLU(temb): activated once here.
        let temb_act = temb.silu();
        let mut h = self.input.forward(x);
        // On the CPU the activations run channels-last (NHWC): oneDNN's convolutions
        // take and give that layout without reordering to and from their blocked one
        // at every call, the GroupNorm kernel and the 1x1 products have channels-last
        // paths, and libtorch's other operations keep the layout. Same function.
        if h.device() == tch::Device::Cpu && h.kind() == Kind::Float {
            h = crate::nn::to_channels_last(&h);
        }
        let mut skips = vec![h.shallow_clone()];
        for layer in &self.down {
            h = match layer {
                Layer::Stage(stage) => stage.forward(&h, &temb_act, train),
                Layer::Down(conv) | Layer::Up(conv) if self.config.downsample_padding == 0 => {
                    // TensorFlow's "SAME" for stride 2: one more row and column after.
                    conv.forward(&h.constant_pad_nd([0, 1, 0, 1]))
                }
                Layer::Down(conv) | Layer::Up(conv) => conv.forward(&h),
            };
            skips.push(h.shallow_clone());
        }
        h = self.middle.0.forward(&h, &temb_act, train);
        h = self.middle.1.forward(&h);
        h = self.middle.2.forward(&h, &temb_act, train);
        for layer in &self.up {
            h = match layer {
                Layer::Up(conv) | Layer::Down(conv) => {
                    let size = h.size();
                    let doubled = h.upsample_nearest2d([size[2] * 2, size[3] * 2], None, None);
                    conv.forward(&doubled)
                }
                Layer::Stage(stage) => {
                    let skip = skips.pop().unwrap_or_else(|| h.zeros_like());
                    let (sh, sw) = (skip.size()[2], skip.size()[3]);
                    let cropped = if h.size()[2] != sh || h.size()[3] != sw {
                        h.narrow(2, 0, sh).narrow(3, 0, sw)
                    } else {
                        h
                    };
                    stage.forward(&Tensor::cat(&[cropped, skip], 1), &temb_act, train)
                }
            };
        }
        // The caller's layout (a no-op for one channel).
        self.output
            .forward(&self.out_norm.forward(&h, None))
            .contiguous()
    }
}
