//! An RGB raster to draw on: rectangles, lines, dots and text, clipped to the image,
//! and its PNG encoding.

use crate::PlotError;
use crate::font::{self, ADVANCE, GLYPH_HEIGHT, GLYPH_WIDTH};

/// A colour: red, green, blue.
pub type Rgb = [u8; 3];

/// The background of every chart.
pub const WHITE: Rgb = [255, 255, 255];
/// Text and axes.
pub const INK: Rgb = [30, 30, 30];
/// Secondary text and reference lines.
pub const GREY: Rgb = [150, 150, 150];
/// Grid lines behind the data.
pub const GRID: Rgb = [228, 228, 228];

/// The largest width or height of an image, in pixels.
pub const MAX_SIDE: usize = 16_384;

/// An RGB image, 8 bits per channel, rows top to bottom. Drawing outside it is clipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    /// A `width` x `height` canvas filled with `background`; each side must be 1 to
    /// [`MAX_SIDE`] pixels.
    pub fn new(width: usize, height: usize, background: Rgb) -> Result<Canvas, PlotError> {
        for (side, found) in [("width", width), ("height", height)] {
            if found == 0 || found > MAX_SIDE {
                return Err(PlotError::Size { side, found });
            }
        }
        Ok(Canvas {
            width,
            height,
            rgb: background.repeat(width * height),
        })
    }

    /// The width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The colour at (x, y), `None` outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<Rgb> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = 3 * (y * self.width + x);
        Some([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }

    /// The raw pixels: `3 * width * height` bytes, row by row.
    pub fn pixels(&self) -> &[u8] {
        &self.rgb
    }

    /// Fills the `w` x `h` rectangle whose top-left corner is (x, y); the part outside
    /// the image is ignored.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: usize, h: usize, colour: Rgb) {
        let clip = |start: i64, len: usize, limit: usize| {
            let lo = start.clamp(0, limit as i64) as usize;
            let len = i64::try_from(len).unwrap_or(i64::MAX);
            let hi = start.saturating_add(len).clamp(0, limit as i64) as usize;
            lo..hi
        };
        let xs = clip(x, w, self.width);
        for row in clip(y, h, self.height) {
            let start = 3 * (row * self.width + xs.start);
            let end = 3 * (row * self.width + xs.end);
            for px in self.rgb[start..end].chunks_exact_mut(3) {
                px.copy_from_slice(&colour);
            }
        }
    }

    /// A straight line from `from` to `to` (pixel coordinates, fractions allowed),
    /// `thickness` pixels wide. Non-finite coordinates draw nothing.
    pub fn line(&mut self, from: (f64, f64), to: (f64, f64), thickness: usize, colour: Rgb) {
        let pad = thickness as f64 + 1.0;
        let bounds = (
            -pad,
            -pad,
            self.width as f64 + pad,
            self.height as f64 + pad,
        );
        let Some(((x0, y0), (x1, y1))) = clip_segment(from, to, bounds) else {
            return;
        };
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil() as usize + 1;
        let half = thickness as f64 / 2.0;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            self.fill_rect(
                (x - half).round() as i64,
                (y - half).round() as i64,
                thickness,
                thickness,
                colour,
            );
        }
    }

    /// A filled disc of `radius` pixels centred on `centre`. Non-finite coordinates draw
    /// nothing.
    pub fn dot(&mut self, centre: (f64, f64), radius: f64, colour: Rgb) {
        let (cx, cy) = centre;
        let limit = (self.width + self.height) as f64;
        if !(cx.is_finite() && cy.is_finite() && radius.is_finite())
            || cx.abs() > limit
            || cy.abs() > limit
        {
            return;
        }
        let (cx, cy) = (cx.round() as i64, cy.round() as i64);
        let r = radius.max(0.0).ceil() as i64;
        let reach = (radius + 0.5) * (radius + 0.5);
        for dy in -r..=r {
            for dx in -r..=r {
                if ((dx * dx + dy * dy) as f64) <= reach {
                    self.fill_rect(cx + dx, cy + dy, 1, 1, colour);
                }
            }
        }
    }

    /// Draws `text` with the top-left corner of its first glyph at (x, y), each font
    /// pixel a `scale` x `scale` square (see [`font`](crate::font) for the characters).
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, colour: Rgb) {
        let s = scale as i64;
        for (k, c) in text.chars().enumerate() {
            let Some(bitmap) = font::glyph(c) else {
                continue;
            };
            let left = x + (k * ADVANCE) as i64 * s;
            for (r, row) in bitmap.iter().enumerate().take(GLYPH_HEIGHT) {
                for (col, &ink) in row.iter().enumerate().take(GLYPH_WIDTH) {
                    if ink {
                        self.fill_rect(
                            left + col as i64 * s,
                            y + r as i64 * s,
                            scale,
                            scale,
                            colour,
                        );
                    }
                }
            }
        }
    }

    /// The image as PNG bytes (8-bit RGB).
    pub fn to_png(&self) -> Result<Vec<u8>, PlotError> {
        let mut bytes = Vec::new();
        // Both sides are at most MAX_SIDE, so they fit in a u32.
        let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgb)?;
        writer.finish()?;
        Ok(bytes)
    }
}

/// The part of the segment `from`-`to` inside `(x_min, y_min, x_max, y_max)`
/// (Liang-Barsky), `None` when none of it is or a coordinate is not finite. A clipped
/// end is put on the edge it was clipped at, and its other coordinate is computed from
/// that edge, so that the ends stay accurate for segments far longer than the image.
fn clip_segment(
    from: (f64, f64),
    to: (f64, f64),
    (x_min, y_min, x_max, y_max): (f64, f64, f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (x0, y0) = from;
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    if ![x0, y0, dx, dy].iter().all(|v| v.is_finite()) {
        return None;
    }
    // (t, the edge: x or y and its value); the ends themselves have no edge.
    let (mut enter, mut leave) = ((0.0f64, None), (1.0f64, None));
    for (p, q, edge) in [
        (-dx, x0 - x_min, (true, x_min)),
        (dx, x_max - x0, (true, x_max)),
        (-dy, y0 - y_min, (false, y_min)),
        (dy, y_max - y0, (false, y_max)),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else if p < 0.0 {
            if q / p > enter.0 {
                enter = (q / p, Some(edge));
            }
        } else if q / p < leave.0 {
            leave = (q / p, Some(edge));
        }
    }
    if enter.0 > leave.0 {
        return None;
    }
    let point = |(t, edge): (f64, Option<(bool, f64)>)| match edge {
        None => (x0 + t * dx, y0 + t * dy),
        Some((true, x)) => (x, y0 + (x - x0) * (dy / dx)),
        Some((false, y)) => (x0 + (y - y0) * (dx / dy), y),
    };
    Some((point(enter), point(leave)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(canvas: &Canvas, colour: Rgb) -> usize {
        canvas
            .pixels()
            .chunks_exact(3)
            .filter(|p| *p == colour)
            .count()
    }

    #[test]
    fn sizes_outside_one_to_max_side_are_refused_with_what_was_found() {
        let err = Canvas::new(0, 5, WHITE).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("expected an image width of 1 to {MAX_SIDE} pixels, found 0")
        );
        let err = Canvas::new(5, MAX_SIDE + 1, WHITE).unwrap_err();
        assert!(err.to_string().contains("height"), "{err}");
    }

    #[test]
    fn rectangles_are_clipped_to_the_image() {
        let mut canvas = Canvas::new(10, 10, WHITE).unwrap();
        canvas.fill_rect(-3, 8, 5, 5, INK);
        // Columns 0 and 1 of rows 8 and 9.
        assert_eq!(count(&canvas, INK), 4);
        assert_eq!(canvas.pixel(1, 9), Some(INK));
        assert_eq!(canvas.pixel(2, 9), Some(WHITE));
        canvas.fill_rect(i64::MAX - 1, i64::MIN, usize::MAX, 3, INK);
        assert_eq!(count(&canvas, INK), 4);
    }

    #[test]
    fn a_line_covers_its_end_points_and_stays_between_them() {
        let mut canvas = Canvas::new(40, 30, WHITE).unwrap();
        canvas.line((2.0, 3.0), (30.0, 20.0), 1, INK);
        assert_eq!(canvas.pixel(2, 3), Some(INK));
        assert_eq!(canvas.pixel(30, 20), Some(INK));
        for y in 0..30 {
            for x in 0..40 {
                if canvas.pixel(x, y) == Some(INK) {
                    assert!((1..=31).contains(&x) && (2..=21).contains(&y), "({x}, {y})");
                }
            }
        }
        // Far outside, huge or not finite: clipped or ignored, never a panic.
        canvas.line((-1e300, 5.0), (1e300, 5.0), 2, GREY);
        assert_eq!(canvas.pixel(20, 5), Some(GREY));
        canvas.line((f64::NAN, 0.0), (3.0, 3.0), 2, GRID);
        canvas.line((100.0, 100.0), (200.0, 100.0), 2, GRID);
        assert_eq!(count(&canvas, GRID), 0);
    }

    #[test]
    fn a_dot_is_a_disc_around_its_centre() {
        let mut canvas = Canvas::new(20, 20, WHITE).unwrap();
        canvas.dot((10.0, 10.0), 3.0, INK);
        assert_eq!(canvas.pixel(10, 10), Some(INK));
        assert_eq!(canvas.pixel(13, 10), Some(INK));
        assert_eq!(canvas.pixel(13, 13), Some(WHITE));
        let n = count(&canvas, INK);
        assert!((25..=45).contains(&n), "{n} pixels for a radius of 3");
        canvas.dot((f64::INFINITY, 1.0), 3.0, GREY);
        assert_eq!(count(&canvas, GREY), 0);
    }

    #[test]
    fn text_is_drawn_at_its_scale() {
        let mut canvas = Canvas::new(40, 20, WHITE).unwrap();
        canvas.text(1, 1, "-", 2, INK);
        // The minus is the glyph's 4th row, 5 columns: 10 x 2 pixels at scale 2.
        assert_eq!(count(&canvas, INK), 20);
        assert_eq!(canvas.pixel(1, 7), Some(INK));
        assert_eq!(canvas.pixel(10, 8), Some(INK));
        assert_eq!(canvas.pixel(11, 7), Some(WHITE));
    }
}
