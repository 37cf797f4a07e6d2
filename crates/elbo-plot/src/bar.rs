//! A horizontal bar chart: one bar per label, green when it reaches its target (or has
//! none) and orange when it falls short, a red tick at the target and an optional
//! reference line (for a ratio, parity at 1).

use std::path::Path;

use crate::axis::Axis;
use crate::canvas::{Canvas, GREY, INK, Rgb, WHITE};
use crate::font::{ADVANCE, text_height, text_width};
use crate::{PlotError, write_atomic};

/// A bar that reached its target, or has none.
pub const MET: Rgb = [46, 139, 87];
/// A bar short of its target.
pub const MISSED: Rgb = [230, 140, 40];
/// The tick at a bar's target.
pub const TARGET: Rgb = [200, 30, 30];

/// One bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// The label on the left (drawn in capitals, cut at 39 characters).
    pub label: String,
    /// The bar's length; a value below 0 draws no bar, a non-finite one `N/A`.
    pub value: f64,
    /// The value the bar should reach, if any.
    pub target: Option<f64>,
}

/// A horizontal bar chart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarChart {
    /// The line above the bars.
    pub title: String,
    /// What the values are, written under the labels next to the scale.
    pub axis_label: String,
    /// Appended to every value and tick label (for example `x` for a ratio).
    pub unit: String,
    /// A value marked by a dark line across all bars (for a ratio, 1); the scale then
    /// reaches at least twice it.
    pub reference: Option<f64>,
    /// The bars, top to bottom.
    pub bars: Vec<Bar>,
}

/// Pixels per font pixel.
const SCALE: usize = 2;
/// One character cell, in image pixels.
const CELL: usize = ADVANCE * SCALE;
/// Height of a bar's row.
const ROW: usize = 34;
/// Length of the scale, in pixels.
const BAR_AREA: usize = 560;
const MARGIN: usize = 16;
/// Label column width, in characters (at least / at most).
const LABEL_CHARS: (usize, usize) = (8, 40);
/// Room right of the scale for a value's text, in characters.
const VALUE_CHARS: usize = 8;

/// Draws `chart` onto a canvas.
pub fn draw_bars(chart: &BarChart) -> Result<Canvas, PlotError> {
    let label_chars = chart
        .bars
        .iter()
        .map(|b| &b.label)
        .chain([&chart.axis_label])
        .map(|label| label.chars().count() + 1)
        .max()
        .unwrap_or(0)
        .clamp(LABEL_CHARS.0, LABEL_CHARS.1);
    let label_width = label_chars * CELL;
    let line = text_height(SCALE);
    let width = MARGIN * 2 + label_width + BAR_AREA + VALUE_CHARS * CELL;
    let height = MARGIN * 3 + line + ROW * (chart.bars.len() + 1) + line;
    let mut canvas = Canvas::new(width, height, WHITE)?;
    canvas.text(MARGIN as i64, MARGIN as i64, &chart.title, SCALE, INK);
    // The scale runs from 0 to round number above the values, targets and twice the
    // reference.
    let top = chart
        .bars
        .iter()
        .flat_map(|b| [b.value, b.target.unwrap_or(0.0)])
        .chain(chart.reference.map(|r| 2.0 * r))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // Beyond 1e300 a bar just reaches the end of the scale; below 1e-300 the scale's
    // steps would not be representable.
    let top = if top > 0.0 {
        top.clamp(1e-300, 1e300)
    } else {
        1.0
    };
    let Some(axis) = Axis::new(0.0, top, 5) else {
        unreachable!("0 to {top} is a range that f64 ticks represent")
    };
    let x0 = MARGIN + label_width;
    let to_px = |v: f64| (v.clamp(0.0, axis.max) / axis.max * BAR_AREA as f64).round() as usize;
    let y_bars = MARGIN * 2 + line;
    for (i, bar) in chart.bars.iter().enumerate() {
        let y = y_bars + i * ROW;
        let label: String = bar.label.chars().take(label_chars - 1).collect();
        canvas.text(MARGIN as i64, (y + 8) as i64, &label, SCALE, INK);
        let met = bar.target.is_none_or(|t| bar.value >= t);
        let length = if bar.value.is_finite() {
            to_px(bar.value)
        } else {
            0
        };
        let colour = if met { MET } else { MISSED };
        canvas.fill_rect(x0 as i64, (y + 4) as i64, length.max(1), ROW - 10, colour);
        if let Some(target) = bar.target.filter(|t| t.is_finite()) {
            canvas.fill_rect((x0 + to_px(target)) as i64, y as i64, 3, ROW - 2, TARGET);
        }
        let value = if bar.value.is_finite() {
            format!("{:.2}{}", bar.value, chart.unit)
        } else {
            "N/A".to_string()
        };
        let tick = bar.target.filter(|t| t.is_finite()).map_or(0, to_px);
        let x = x0 + length.max(tick) + 3 * SCALE + 4;
        canvas.text(x as i64, (y + 8) as i64, &value, SCALE, INK);
    }
    // The zero line, the reference line and the scale's labels.
    let axis_y = y_bars + chart.bars.len() * ROW + 4;
    let tall = axis_y - y_bars + 4;
    canvas.fill_rect(x0 as i64, (y_bars - 4) as i64, 1, tall, GREY);
    if let Some(reference) = chart.reference.filter(|r| r.is_finite()) {
        canvas.fill_rect(
            (x0 + to_px(reference)) as i64,
            (y_bars - 4) as i64,
            2,
            tall,
            INK,
        );
    }
    for &tick in &axis.ticks {
        let text = format!("{}{}", axis.label(tick), chart.unit);
        // Centred on the tick, except the first, which starts at the zero line.
        let shift = if tick == 0.0 {
            0
        } else {
            text_width(&text, SCALE) / 2
        };
        let x = (x0 + to_px(tick)) as i64 - shift as i64;
        canvas.text(x, (axis_y + 4) as i64, &text, SCALE, GREY);
    }
    let axis_label: String = chart.axis_label.chars().take(label_chars - 1).collect();
    canvas.text(MARGIN as i64, (axis_y + 4) as i64, &axis_label, SCALE, GREY);
    Ok(canvas)
}

/// The PNG bytes of `chart`.
pub fn render_bars(chart: &BarChart) -> Result<Vec<u8>, PlotError> {
    draw_bars(chart)?.to_png()
}

/// Writes `chart` as a PNG at `path`, whole or not at all (see [`write_atomic`]).
pub fn write_bars(path: impl AsRef<Path>, chart: &BarChart) -> Result<(), PlotError> {
    write_atomic(path.as_ref(), &render_bars(chart)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speedups() -> BarChart {
        BarChart {
            title: "elbo vs pytorch".into(),
            axis_label: "speed-up over pytorch".into(),
            unit: "x".into(),
            reference: Some(1.0),
            bars: vec![
                Bar {
                    label: "vae-mlp train 1T".into(),
                    value: 1.5,
                    target: Some(1.25),
                },
                Bar {
                    label: "ddpm-mnist sample 2T".into(),
                    value: 0.75,
                    target: Some(1.05),
                },
                Bar {
                    label: "broken".into(),
                    value: f64::NAN,
                    target: None,
                },
            ],
        }
    }

    /// How far right of `x0` the last pixel of `colour` on row `y` is, plus one.
    fn extent(canvas: &Canvas, x0: usize, y: usize, colour: Rgb) -> Option<usize> {
        (x0..canvas.width())
            .rev()
            .find(|&x| canvas.pixel(x, y) == Some(colour))
            .map(|x| x - x0 + 1)
    }

    #[test]
    fn bars_are_as_long_as_their_values_and_coloured_by_their_targets() {
        let chart = speedups();
        let canvas = draw_bars(&chart).unwrap();
        // The longest label is the axis label's.
        let label_width = (chart.axis_label.len() + 1) * CELL;
        assert_eq!(
            canvas.width(),
            MARGIN * 2 + label_width + BAR_AREA + VALUE_CHARS * CELL
        );
        let x0 = MARGIN + label_width;
        let row_y = |i: usize| MARGIN * 2 + text_height(SCALE) + i * ROW + ROW / 2;
        // The scale reaches 2 (twice the reference): 1.5 is 3/4 of it, 0.75 3/8.
        assert_eq!(extent(&canvas, x0, row_y(0), MET), Some(BAR_AREA * 3 / 4));
        assert_eq!(
            extent(&canvas, x0, row_y(1), MISSED),
            Some(BAR_AREA * 3 / 8)
        );
        // The reference line at 1, across the bars.
        assert_eq!(canvas.pixel(x0 + BAR_AREA / 2, row_y(0)), Some(INK));
        assert_eq!(canvas.pixel(x0 + BAR_AREA / 2, row_y(1)), Some(INK));
        // The first bar's target tick sits at 1.25 / 2 of the scale, in the bar.
        assert_eq!(canvas.pixel(x0 + BAR_AREA * 5 / 8, row_y(0)), Some(TARGET));
        // A non-finite value draws no bar (its one pixel is under the zero line).
        assert_eq!(extent(&canvas, x0, row_y(2), MET), None);
    }

    #[test]
    fn the_chart_is_a_png_of_its_canvas_size() {
        let chart = speedups();
        let bytes = render_bars(&chart).unwrap();
        let canvas = draw_bars(&chart).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(
            (info.width as usize, info.height as usize),
            (canvas.width(), canvas.height())
        );
        assert_eq!(&buf[..info.buffer_size()], canvas.pixels());
        let pixels: Vec<&[u8]> = buf.chunks(3).collect();
        for colour in [MET, MISSED, TARGET] {
            assert!(pixels.contains(&&colour[..]), "{colour:?}");
        }
    }

    #[test]
    fn an_empty_or_non_positive_chart_still_draws() {
        let empty = BarChart::default();
        assert!(render_bars(&empty).is_ok());
        let negative = BarChart {
            bars: vec![Bar {
                label: "down".into(),
                value: -3.0,
                target: None,
            }],
            ..BarChart::default()
        };
        let canvas = draw_bars(&negative).unwrap();
        assert!(canvas.height() > draw_bars(&empty).unwrap().height());
    }
}
