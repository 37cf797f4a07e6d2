//! Training curves as small multiples: a [`Figure`] of [`Panel`]s in a grid, each with
//! its own axes, round tick values, a legend and its [`Series`].

use std::path::Path;

use crate::axis::Axis;
use crate::canvas::{Canvas, GREY, GRID, INK, Rgb, WHITE};
use crate::font::{fit, text_height, text_width};
use crate::{PlotError, write_atomic};

/// The colours of a panel's series, in order (the 7th series takes the 1st colour
/// again). Every one differs from the ink, grid and background colours.
pub const PALETTE: [Rgb; 6] = [
    [33, 102, 172],
    [200, 50, 40],
    [40, 140, 60],
    [230, 130, 20],
    [120, 80, 170],
    [20, 140, 140],
];

/// How a series is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Style {
    /// A solid line through the points in their order (a training curve). A point
    /// with no finite neighbour is drawn as a dot.
    #[default]
    Line,
    /// The line and a dot on every point (an evaluation every few epochs).
    LineAndDots,
    /// Dots only.
    Dots,
}

/// One curve of a panel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// The name in the legend.
    pub name: String,
    /// (x, y) points, joined in this order. A point with a non-finite coordinate is
    /// skipped (the line breaks there) and counted in the legend.
    pub points: Vec<(f64, f64)>,
    /// Line, dots or both.
    pub style: Style,
}

/// One chart of the grid.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Panel {
    /// The line above the chart.
    pub title: String,
    /// What x is (for example `epoch`), under the x axis.
    pub x_label: String,
    /// The curves; series `i` has colour `PALETTE[i % 6]`.
    pub series: Vec<Series>,
}

/// Panels side by side, two or three to a row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figure {
    /// The line above the panels (none when empty).
    pub title: String,
    /// The panels, row by row.
    pub panels: Vec<Panel>,
}

/// Pixels per font pixel.
const SCALE: usize = 2;
const PANEL_W: usize = 480;
/// A panel's height without its legend.
const PANEL_H: usize = 330;
const MARGIN: usize = 16;
const GAP: usize = 16;
const PAD: usize = 8;
const TICK: usize = 5;
const LEGEND_ROW: usize = 20;
/// Legend: the sample line's length, and the space after an entry.
const SAMPLE: usize = 24;
const ENTRY_GAP: usize = 16;
const LINE_WIDTH: usize = 2;
const DOT_RADIUS: f64 = 3.0;

/// Panels per row of the grid.
fn columns(panels: usize) -> usize {
    match panels {
        0 | 1 => 1,
        2 | 4 => 2,
        _ => 3,
    }
}

/// A series' legend text: its name and how many points were skipped.
fn legend_label(series: &Series) -> String {
    let skipped = series
        .points
        .iter()
        .filter(|(x, y)| !(x.is_finite() && y.is_finite()))
        .count();
    match skipped {
        0 => series.name.clone(),
        n => format!("{} ({n} non-finite skipped)", series.name),
    }
}

/// The legend in rows that fit the panel: (series index, text, x offset) per entry.
fn legend_rows(panel: &Panel) -> Vec<Vec<(usize, String, usize)>> {
    let room = PANEL_W - 2 * PAD;
    let mut rows: Vec<Vec<(usize, String, usize)>> = Vec::new();
    let mut x = room; // forces a first row
    for (i, series) in panel.series.iter().enumerate() {
        let text = fit(&legend_label(series), room - SAMPLE - PAD, SCALE);
        let width = SAMPLE + PAD + text_width(&text, SCALE);
        if x + width > room {
            rows.push(Vec::new());
            x = 0;
        }
        if let Some(row) = rows.last_mut() {
            row.push((i, text, x));
        }
        x += width + ENTRY_GAP;
    }
    rows
}

/// Where a panel's data is drawn, and its axes (`None`: nothing to plot).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlotArea {
    pub(crate) left: f64,
    pub(crate) top: f64,
    pub(crate) right: f64,
    pub(crate) bottom: f64,
    pub(crate) axes: Option<(Axis, Axis)>,
}

impl PlotArea {
    /// The pixel of the point (x, y).
    pub(crate) fn map(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let (ax, ay) = self.axes.as_ref()?;
        Some((
            self.left + ax.fraction(x) * (self.right - self.left),
            self.bottom - ay.fraction(y) * (self.bottom - self.top),
        ))
    }
}

/// The figure's size, each panel's plot area and the legends' height.
pub(crate) struct Layout {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) panel_h: usize,
    pub(crate) origins: Vec<(usize, usize)>,
    pub(crate) areas: Vec<PlotArea>,
}

/// The smallest and largest x (`pick`: `|p| p.0`) or y of a panel's finite points,
/// `None` when it has none.
fn range(panel: &Panel, pick: fn(&(f64, f64)) -> f64) -> Option<(f64, f64)> {
    panel
        .series
        .iter()
        .flat_map(|s| &s.points)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(pick)
        .fold(None, |acc, v| {
            Some(acc.map_or((v, v), |(lo, hi): (f64, f64)| (lo.min(v), hi.max(v))))
        })
}

/// The x axis of a panel with as many ticks (6 at most) as leave room between their
/// labels in `width` pixels, less half the widest label (kept free on the right).
fn x_axis(panel: &Panel, width: f64) -> Option<Axis> {
    let (lo, hi) = range(panel, |p| p.0)?;
    let mut x = None;
    for target in (2..=6).rev() {
        let axis = Axis::new(lo, hi, target)?;
        let widest = axis
            .ticks
            .iter()
            .map(|&t| text_width(&axis.label(t), SCALE))
            .max()
            .unwrap_or(0) as f64;
        let spacing = (width - widest / 2.0) / (axis.ticks.len() - 1) as f64;
        let fits = spacing >= widest + 12.0;
        x = Some(axis);
        if fits {
            break;
        }
    }
    x
}

/// Lays out `figure`: a grid of equal panels, legends of equal height.
pub(crate) fn layout(figure: &Figure) -> Layout {
    let n = figure.panels.len().max(1);
    let cols = columns(n);
    let grid_rows = n.div_ceil(cols);
    let legend_h = figure
        .panels
        .iter()
        .map(|p| legend_rows(p).len())
        .max()
        .unwrap_or(0)
        * LEGEND_ROW;
    let panel_h = PANEL_H + legend_h;
    let line = text_height(SCALE);
    let title_band = if figure.title.is_empty() {
        0
    } else {
        line + MARGIN
    };
    let width = 2 * MARGIN + cols * PANEL_W + (cols - 1) * GAP;
    let height = 2 * MARGIN + title_band + grid_rows * panel_h + (grid_rows - 1) * GAP;
    let mut origins = Vec::new();
    let mut areas = Vec::new();
    for i in 0..n {
        let ox = MARGIN + (i % cols) * (PANEL_W + GAP);
        let oy = MARGIN + title_band + (i / cols) * (panel_h + GAP);
        origins.push((ox, oy));
        let top = (oy + PAD + line + PAD + legend_h + PAD) as f64;
        // Under the plot: tick marks, tick labels, the x label.
        let bottom = (oy + panel_h - PAD - line - 6 - line - 4 - TICK) as f64;
        let panel = figure.panels.get(i);
        let y_axis = panel.and_then(|p| {
            let (lo, hi) = range(p, |q| q.1)?;
            Axis::new(lo, hi, 5)
        });
        let Some(y) = y_axis else {
            let left = (ox + PAD + 40) as f64;
            let right = (ox + PANEL_W - PAD - 16) as f64;
            areas.push(PlotArea {
                left,
                top,
                right,
                bottom,
                axes: None,
            });
            continue;
        };
        let y_labels = y
            .ticks
            .iter()
            .map(|&t| text_width(&y.label(t), SCALE))
            .max()
            .unwrap_or(0);
        let left = ox + PAD + y_labels + 4 + TICK;
        let room = (ox + PANEL_W - PAD).saturating_sub(left) as f64;
        let x = panel.and_then(|p| x_axis(p, room));
        let right_margin = x
            .as_ref()
            .map_or(0, |x| text_width(&x.label(x.max), SCALE) / 2);
        areas.push(PlotArea {
            left: left as f64,
            top,
            right: (ox + PANEL_W - PAD)
                .saturating_sub(right_margin)
                .max(left + 1) as f64,
            bottom,
            axes: x.map(|x| (x, y)),
        });
    }
    Layout {
        width,
        height,
        panel_h,
        origins,
        areas,
    }
}

/// Draws one series into its plot area.
fn draw_series(canvas: &mut Canvas, area: &PlotArea, series: &Series, colour: Rgb) {
    let mapped: Vec<Option<(f64, f64)>> = series
        .points
        .iter()
        .map(|&(x, y)| {
            (x.is_finite() && y.is_finite())
                .then(|| area.map(x, y))
                .flatten()
        })
        .collect();
    let lines = series.style != Style::Dots;
    let dots = series.style != Style::Line;
    for (i, point) in mapped.iter().enumerate() {
        let Some(p) = *point else {
            continue;
        };
        let previous = i.checked_sub(1).and_then(|j| mapped[j]);
        let next = mapped.get(i + 1).copied().flatten();
        if lines && let Some(q) = previous {
            canvas.line(q, p, LINE_WIDTH, colour);
        }
        if dots || (previous.is_none() && next.is_none()) {
            canvas.dot(p, DOT_RADIUS, colour);
        }
    }
}

/// Draws a panel's frame, grid, ticks, series, legend and titles; a panel with nothing
/// to plot says why in the middle of its frame.
fn draw_panel(
    canvas: &mut Canvas,
    panel: &Panel,
    (ox, oy): (usize, usize),
    panel_h: usize,
    area: &PlotArea,
) {
    let line = text_height(SCALE) as i64;
    let (left, top, right, bottom) = (area.left, area.top, area.right, area.bottom);
    let (l, t, r, b) = (left as i64, top as i64, right as i64, bottom as i64);
    let (w, h) = ((r - l) as usize, (b - t) as usize);
    let title = fit(&panel.title, PANEL_W - 2 * PAD, SCALE);
    canvas.text((ox + PAD) as i64, (oy + PAD) as i64, &title, SCALE, INK);
    let x_label = fit(&panel.x_label, PANEL_W - 2 * PAD, SCALE);
    let centre = (left + right) / 2.0 - text_width(&x_label, SCALE) as f64 / 2.0;
    let label_y = (oy + panel_h - PAD) as i64 - line;
    canvas.text(centre.round() as i64, label_y, &x_label, SCALE, GREY);
    if let Some((x_axis, y_axis)) = &area.axes {
        for &tick in &y_axis.ticks {
            let y = (bottom - y_axis.fraction(tick) * (bottom - top)).round() as i64;
            canvas.fill_rect(l, y, w, 1, GRID);
            canvas.fill_rect(l - TICK as i64, y, TICK, 1, INK);
            let text = y_axis.label(tick);
            let x = l - TICK as i64 - 4 - text_width(&text, SCALE) as i64;
            canvas.text(x, y - line / 2, &text, SCALE, INK);
        }
        for &tick in &x_axis.ticks {
            let x = (left + x_axis.fraction(tick) * (right - left)).round() as i64;
            canvas.fill_rect(x, t, 1, h, GRID);
            canvas.fill_rect(x, b, 1, TICK, INK);
            let text = x_axis.label(tick);
            let half = text_width(&text, SCALE) as i64 / 2;
            canvas.text(x - half, b + TICK as i64 + 4, &text, SCALE, INK);
        }
        for (i, series) in panel.series.iter().enumerate() {
            draw_series(canvas, area, series, PALETTE[i % PALETTE.len()]);
        }
    } else {
        let points: usize = panel.series.iter().map(|s| s.points.len()).sum();
        let message = if points == 0 {
            "no points"
        } else {
            "no finite points"
        };
        let x = (left + right) / 2.0 - text_width(message, SCALE) as f64 / 2.0;
        let y = (top + bottom) / 2.0 - line as f64 / 2.0;
        canvas.text(x.round() as i64, y.round() as i64, message, SCALE, GREY);
    }
    // The frame: axes in ink on the left and at the bottom.
    canvas.fill_rect(l, t, w, 1, GRID);
    canvas.fill_rect(r, t, 1, h + 1, GRID);
    canvas.fill_rect(l, t, 1, h + 1, INK);
    canvas.fill_rect(l, b, w + 1, 1, INK);
    // The legend, under the title.
    let legend_top = oy + PAD + line as usize + PAD;
    for (row, entries) in legend_rows(panel).iter().enumerate() {
        let y = legend_top + row * LEGEND_ROW;
        for (i, text, x) in entries {
            let colour = PALETTE[i % PALETTE.len()];
            let x = (ox + PAD + x) as f64;
            let mid = (y + LEGEND_ROW / 2 - 2) as f64;
            let style = panel.series[*i].style;
            if style != Style::Dots {
                canvas.line((x, mid), (x + SAMPLE as f64, mid), LINE_WIDTH, colour);
            }
            if style != Style::Line {
                canvas.dot((x + SAMPLE as f64 / 2.0, mid), DOT_RADIUS, colour);
            }
            let text_x = (x as usize + SAMPLE + PAD) as i64;
            canvas.text(text_x, (y + 1) as i64, text, SCALE, INK);
        }
    }
}

/// Draws `figure` onto a canvas (what [`render`] encodes).
pub fn draw(figure: &Figure) -> Result<Canvas, PlotError> {
    let layout = layout(figure);
    let mut canvas = Canvas::new(layout.width, layout.height, WHITE)?;
    if !figure.title.is_empty() {
        let title = fit(&figure.title, layout.width - 2 * MARGIN, SCALE);
        canvas.text(MARGIN as i64, MARGIN as i64, &title, SCALE, INK);
    }
    if figure.panels.is_empty() {
        let area = &layout.areas[0];
        let message = "no panels";
        let x = (area.left + area.right) / 2.0 - text_width(message, SCALE) as f64 / 2.0;
        let y = (area.top + area.bottom) / 2.0 - text_height(SCALE) as f64 / 2.0;
        canvas.text(x.round() as i64, y.round() as i64, message, SCALE, GREY);
    }
    for ((panel, &origin), area) in figure.panels.iter().zip(&layout.origins).zip(&layout.areas) {
        draw_panel(&mut canvas, panel, origin, layout.panel_h, area);
    }
    Ok(canvas)
}

/// The PNG bytes of `figure`.
pub fn render(figure: &Figure) -> Result<Vec<u8>, PlotError> {
    draw(figure)?.to_png()
}

/// Writes `figure` as a PNG at `path`, whole or not at all (see [`write_atomic`]).
pub fn write(path: impl AsRef<Path>, figure: &Figure) -> Result<(), PlotError> {
    write_atomic(path.as_ref(), &render(figure)?)
}

#[cfg(test)]
mod tests;
