//! Two checkpoints compared tensor by tensor: the GPU check's proof that a run broken
//! and resumed ends where the unbroken run does (weights, Adam's moments, the EMA).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors};

/// The largest difference between two checkpoints, per group of tensors (the part of a
/// name before its first dot: `model`, `adam`, `ema`, `step`).
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Tensors compared.
    pub tensors: usize,
    /// Per group: the largest absolute difference of any element, and the tensor where
    /// it is.
    pub largest: BTreeMap<String, (f64, String)>,
}

impl Comparison {
    /// Whether every element of every tensor is the same.
    pub fn identical(&self) -> bool {
        self.largest.values().all(|(d, _)| *d == 0.0)
    }

    /// One line per group, for the report.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("{} tensors compared", self.tensors)];
        for (group, (difference, name)) in &self.largest {
            out.push(format!(
                "{group}: largest |difference| {difference:e}{}",
                if *difference > 0.0 {
                    format!(" (in {name})")
                } else {
                    String::new()
                }
            ));
        }
        out
    }
}

/// The elements of a tensor as f64 (floating point and integer types elbo writes).
fn values(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f64>> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match dtype {
        Dtype::F32 => chunks(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
        Dtype::F64 => chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::BF16 => chunks(2)
            .map(|c| {
                f64::from(f32::from_bits(
                    u32::from(u16::from_le_bytes([c[0], c[1]])) << 16,
                ))
            })
            .collect(),
        Dtype::I64 => chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
            .collect(),
        Dtype::I32 => chunks(4)
            .map(|c| f64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
        other => bail!("{name}: a {other:?} tensor, which the comparison does not read"),
    })
}

/// The safetensors file `path` whose bytes are `bytes`.
fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a safetensors file: {e}", path.display()))
}

/// Compares the safetensors files `a` and `b`: the same names, dtypes and shapes, and
/// per group the largest difference of any element (a NaN where the other has a number
/// counts as an infinite difference; NaN against NaN as none).
pub fn compare(a: &Path, b: &Path) -> Result<Comparison> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (bytes_a, bytes_b) = (read(a)?, read(b)?);
    let (ta, tb) = (parse(&bytes_a, a)?, parse(&bytes_b, b)?);
    let mut names_a: Vec<String> = ta.names().into_iter().map(str::to_string).collect();
    let mut names_b: Vec<String> = tb.names().into_iter().map(str::to_string).collect();
    names_a.sort();
    names_b.sort();
    if names_a != names_b {
        let only = |x: &[String], y: &[String]| -> Vec<String> {
            x.iter().filter(|n| !y.contains(n)).cloned().collect()
        };
        bail!(
            "the checkpoints hold different tensors: only in {}: {:?}; only in {}: {:?}",
            a.display(),
            only(&names_a, &names_b),
            b.display(),
            only(&names_b, &names_a)
        );
    }
    let mut largest: BTreeMap<String, (f64, String)> = BTreeMap::new();
    for name in &names_a {
        let (x, y) = (ta.tensor(name)?, tb.tensor(name)?);
        if x.dtype() != y.dtype() || x.shape() != y.shape() {
            bail!(
                "{name}: {:?} {:?} in one checkpoint, {:?} {:?} in the other",
                x.dtype(),
                x.shape(),
                y.dtype(),
                y.shape()
            );
        }
        let (vx, vy) = (
            values(name, x.dtype(), x.data())?,
            values(name, y.dtype(), y.data())?,
        );
        let difference = vx
            .iter()
            .zip(&vy)
            .map(|(p, q)| match (p.is_nan(), q.is_nan()) {
                (true, true) => 0.0,
                (false, false) if p == q => 0.0,
                (false, false) => (p - q).abs(),
                _ => f64::INFINITY,
            })
            .fold(0.0, f64::max);
        let group = name.split('.').next().unwrap_or(name).to_string();
        let entry = largest.entry(group).or_insert((0.0, name.clone()));
        if difference > entry.0 {
            *entry = (difference, name.clone());
        }
    }
    Ok(Comparison {
        tensors: names_a.len(),
        largest,
    })
}
