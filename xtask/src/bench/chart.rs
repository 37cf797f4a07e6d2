//! The comparison chart as a PNG: one horizontal bar per case, its length the speed-up
//! of elbo over PyTorch, a line at parity and a tick at the case's target. The text is
//! drawn with a 5x7 bitmap font defined here (no font files, no system fonts).

use std::path::Path;

use anyhow::{Context, Result};

/// One bar of the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// The label on the left (drawn in capitals).
    pub label: String,
    /// The speed-up (PyTorch time over elbo time; above 1 means elbo is faster).
    pub ratio: f64,
    /// The target speed-up, if the case has one.
    pub target: Option<f64>,
}

/// 5x7 glyphs, rows top to bottom, columns left to right.
const GLYPHS: &[(char, &str)] = &[
    ('0', "01110 10001 10011 10101 11001 10001 01110"),
    ('1', "00100 01100 00100 00100 00100 00100 01110"),
    ('2', "01110 10001 00001 00010 00100 01000 11111"),
    ('3', "11111 00010 00100 00010 00001 10001 01110"),
    ('4', "00010 00110 01010 10010 11111 00010 00010"),
    ('5', "11111 10000 11110 00001 00001 10001 01110"),
    ('6', "00110 01000 10000 11110 10001 10001 01110"),
    ('7', "11111 00001 00010 00100 01000 01000 01000"),
    ('8', "01110 10001 10001 01110 10001 10001 01110"),
    ('9', "01110 10001 10001 01111 00001 00010 01100"),
    ('A', "01110 10001 10001 11111 10001 10001 10001"),
    ('B', "11110 10001 10001 11110 10001 10001 11110"),
    ('C', "01110 10001 10000 10000 10000 10001 01110"),
    ('D', "11100 10010 10001 10001 10001 10010 11100"),
    ('E', "11111 10000 10000 11110 10000 10000 11111"),
    ('F', "11111 10000 10000 11110 10000 10000 10000"),
    ('G', "01110 10001 10000 10111 10001 10001 01111"),
    ('H', "10001 10001 10001 11111 10001 10001 10001"),
    ('I', "01110 00100 00100 00100 00100 00100 01110"),
    ('J', "00111 00010 00010 00010 00010 10010 01100"),
    ('K', "10001 10010 10100 11000 10100 10010 10001"),
    ('L', "10000 10000 10000 10000 10000 10000 11111"),
    ('M', "10001 11011 10101 10101 10001 10001 10001"),
    ('N', "10001 10001 11001 10101 10011 10001 10001"),
    ('O', "01110 10001 10001 10001 10001 10001 01110"),
    ('P', "11110 10001 10001 11110 10000 10000 10000"),
    ('Q', "01110 10001 10001 10001 10101 10010 01101"),
    ('R', "11110 10001 10001 11110 10100 10010 10001"),
    ('S', "01111 10000 10000 01110 00001 00001 11110"),
    ('T', "11111 00100 00100 00100 00100 00100 00100"),
    ('U', "10001 10001 10001 10001 10001 10001 01110"),
    ('V', "10001 10001 10001 10001 10001 01010 00100"),
    ('W', "10001 10001 10001 10101 10101 10101 01010"),
    ('X', "10001 10001 01010 00100 01010 10001 10001"),
    ('Y', "10001 10001 01010 00100 00100 00100 00100"),
    ('Z', "11111 00001 00010 00100 01000 10000 11111"),
    ('.', "00000 00000 00000 00000 00000 01100 01100"),
    (',', "00000 00000 00000 00000 01100 00100 01000"),
    ('-', "00000 00000 00000 11111 00000 00000 00000"),
    (':', "00000 01100 01100 00000 01100 01100 00000"),
    ('/', "00001 00001 00010 00100 01000 10000 10000"),
    ('(', "00010 00100 01000 01000 01000 00100 00010"),
    (')', "01000 00100 00010 00010 00010 00100 01000"),
    ('=', "00000 00000 11111 00000 11111 00000 00000"),
    ('>', "01000 00100 00010 00001 00010 00100 01000"),
    ('%', "11000 11001 00010 00100 01000 10011 00011"),
    (' ', "00000 00000 00000 00000 00000 00000 00000"),
];

/// Pixels per font pixel.
const SCALE: usize = 2;
/// Width of one character cell (5 columns and a space), in image pixels.
const CELL: usize = 6 * SCALE;
const ROW: usize = 34;
const LABEL_CHARS: usize = 28;
const BAR_AREA: usize = 560;
const MARGIN: usize = 16;

const WHITE: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [30, 30, 30];
const GREY: [u8; 3] = [150, 150, 150];
const MET: [u8; 3] = [46, 139, 87];
const MISSED: [u8; 3] = [230, 140, 40];
const TARGET: [u8; 3] = [200, 30, 30];

struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            rgb: WHITE.repeat(width * height),
        }
    }

    fn fill(&mut self, x0: usize, y0: usize, w: usize, h: usize, colour: [u8; 3]) {
        for y in y0..(y0 + h).min(self.height) {
            for x in x0..(x0 + w).min(self.width) {
                let i = 3 * (y * self.width + x);
                self.rgb[i..i + 3].copy_from_slice(&colour);
            }
        }
    }

    /// Draws `text` in capitals with its top-left corner at (x, y); unknown characters
    /// are drawn as spaces.
    fn text(&mut self, x: usize, y: usize, text: &str, colour: [u8; 3]) {
        for (k, c) in text.chars().enumerate() {
            let c = c.to_ascii_uppercase();
            let Some((_, rows)) = GLYPHS.iter().find(|(g, _)| *g == c) else {
                continue;
            };
            for (r, bits) in rows.split(' ').enumerate() {
                for (col, bit) in bits.chars().enumerate() {
                    if bit == '1' {
                        let px = x + k * CELL + col * SCALE;
                        self.fill(px, y + r * SCALE, SCALE, SCALE, colour);
                    }
                }
            }
        }
    }
}

/// Draws the chart of `bars` under `title` into a PNG at `path` (written whole or not
/// at all: a temporary file renamed into place).
pub fn write(path: &Path, title: &str, bars: &[Bar]) -> Result<()> {
    let png = render(title, bars)?;
    let tmp = path.with_extension("png.tmp");
    std::fs::write(&tmp, &png).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// The PNG bytes of the chart.
pub fn render(title: &str, bars: &[Bar]) -> Result<Vec<u8>> {
    let label_width = LABEL_CHARS * CELL;
    let width = MARGIN * 2 + label_width + BAR_AREA + 8 * CELL;
    let height = MARGIN * 3 + 14 + ROW * (bars.len() + 1) + 14;
    let mut canvas = Canvas::new(width, height);
    canvas.text(MARGIN, MARGIN, title, INK);
    // The scale runs from 0 to the largest of 2x, the ratios and the targets.
    let top = bars
        .iter()
        .flat_map(|b| [b.ratio, b.target.unwrap_or(0.0)])
        .filter(|r| r.is_finite())
        .fold(2.0f64, f64::max)
        .ceil();
    let x0 = MARGIN + label_width;
    let to_px = |ratio: f64| (ratio.clamp(0.0, top) / top * BAR_AREA as f64).round() as usize;
    let y_bars = MARGIN * 2 + 14;
    for (i, bar) in bars.iter().enumerate() {
        let y = y_bars + i * ROW;
        let label: String = bar.label.chars().take(LABEL_CHARS - 1).collect();
        canvas.text(MARGIN, y + 8, &label, INK);
        let met = bar.target.is_none_or(|t| bar.ratio >= t);
        let length = if bar.ratio.is_finite() {
            to_px(bar.ratio)
        } else {
            0
        };
        canvas.fill(
            x0,
            y + 4,
            length.max(1),
            ROW - 10,
            if met { MET } else { MISSED },
        );
        if let Some(target) = bar.target {
            canvas.fill(x0 + to_px(target), y, 3, ROW - 2, TARGET);
        }
        let value = if bar.ratio.is_finite() {
            format!("{:.2}X", bar.ratio)
        } else {
            "N/A".to_string()
        };
        let tick = bar.target.map_or(0, to_px);
        canvas.text(x0 + length.max(tick) + 3 * SCALE + 4, y + 8, &value, INK);
    }
    // Parity line, and the axis labels 0, 1, ..., top.
    let axis_y = y_bars + bars.len() * ROW + 4;
    canvas.fill(x0, y_bars - 4, 1, axis_y - y_bars + 4, GREY);
    canvas.fill(x0 + to_px(1.0), y_bars - 4, 2, axis_y - y_bars + 4, INK);
    for tick in 0..=(top as usize) {
        canvas.text(
            x0 + to_px(tick as f64),
            axis_y + 4,
            &format!("{tick}X"),
            GREY,
        );
    }
    canvas.text(MARGIN, axis_y + 4, "SPEED-UP OVER PYTORCH", GREY);
    encode(&canvas)
}

fn encode(canvas: &Canvas) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, canvas.width as u32, canvas.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("PNG header")?;
    writer.write_image_data(&canvas.rgb).context("PNG data")?;
    writer.finish().context("PNG end")?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_five_by_seven_and_distinct() {
        for (c, rows) in GLYPHS {
            let rows: Vec<&str> = rows.split(' ').collect();
            assert_eq!(rows.len(), 7, "{c:?}");
            assert!(
                rows.iter()
                    .all(|r| r.len() == 5 && r.chars().all(|b| b == '0' || b == '1')),
                "{c:?}"
            );
        }
        for (i, (a, ra)) in GLYPHS.iter().enumerate() {
            for (b, rb) in &GLYPHS[i + 1..] {
                assert_ne!(a, b);
                assert!(
                    ra != rb || *a == ' ' || *b == ' ',
                    "{a:?} and {b:?} look alike"
                );
            }
        }
    }

    #[test]
    fn the_chart_is_a_png_of_the_expected_size_with_coloured_bars() {
        let bars = [
            Bar {
                label: "vae-mlp step, 1 thread".into(),
                ratio: 1.3,
                target: Some(1.25),
            },
            Bar {
                label: "ddim-50".into(),
                ratio: 0.9,
                target: Some(1.05),
            },
        ];
        let bytes = render("elbo vs pytorch", &bars).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let (w, h) = (info.width as usize, info.height as usize);
        assert_eq!(w, MARGIN * 2 + LABEL_CHARS * CELL + BAR_AREA + 8 * CELL);
        let pixels: Vec<[u8; 3]> = buf[..w * h * 3]
            .chunks(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        // The first bar met its target (green), the second missed it (orange).
        assert!(pixels.contains(&MET));
        assert!(pixels.contains(&MISSED));
        assert!(pixels.contains(&TARGET));
    }
}
