//! Image grids as PNG files (written atomically).

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::train::checkpoint::write_atomically;

/// Writes `images` (N, C, H, W) with values in [0, 1] (C = 1 or 3) as a grid with `columns`
/// columns and a 2-pixel border, to a PNG at `path`.
pub fn save_grid(images: &Tensor, columns: i64, path: &Path) -> Result<()> {
    let size = images.size();
    let &[n, c, h, w] = size.as_slice() else {
        return Err(Error::Config {
            detail: format!("an image grid needs (N, C, H, W) images, found shape {size:?}"),
        });
    };
    if !(c == 1 || c == 3) || n == 0 || columns <= 0 {
        return Err(Error::Config {
            detail: format!(
                "an image grid needs 1 or 3 channels and at least one image, found {size:?}"
            ),
        });
    }
    let pad = 2;
    let rows = (n + columns - 1) / columns;
    let cols = columns.min(n);
    let (gh, gw) = (rows * (h + pad) + pad, cols * (w + pad) + pad);
    let pixels = to_u8_nhwc(images)?;
    let (h, w, c) = (h as usize, w as usize, c as usize);
    let mut grid = vec![0u8; gh as usize * gw as usize * c];
    for index in 0..n as usize {
        let (row, col) = (index / cols as usize, index % cols as usize);
        let top = row * (h + pad as usize) + pad as usize;
        let left = col * (w + pad as usize) + pad as usize;
        for y in 0..h {
            let src = (index * h + y) * w * c;
            let dst = ((top + y) * gw as usize + left) * c;
            grid[dst..dst + w * c].copy_from_slice(&pixels[src..src + w * c]);
        }
    }
    write_png(path, gw as u32, gh as u32, c, &grid)
}

/// Images (N, C, H, W) in `[0, 1]` as 8-bit pixels (rounded), NHWC, on the CPU.
pub fn to_u8_nhwc(images: &Tensor) -> Result<Vec<u8>> {
    let pixels = (images.detach().to_device(tch::Device::Cpu).clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous();
    Ok(Vec::<u8>::try_from(pixels.flatten(0, -1))?)
}

/// Writes 8-bit grey (`c` 1) or RGB (`c` 3) `pixels` (rows of `width`) as the PNG file
/// `path`, whole or not at all; its folder is created if needed.
pub fn write_png(path: &Path, width: u32, height: u32, c: usize, pixels: &[u8]) -> Result<()> {
    let (gw, gh, grid) = (width, height, pixels);
    if path.is_dir() {
        return Err(Error::Config {
            detail: format!(
                "{} is a folder: expected the path of a PNG file",
                path.display()
            ),
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::file("create", parent, e))?;
    }
    write_atomically(path, |temp| {
        let io = |e: std::io::Error| Error::file("write", path, e);
        let file = std::io::BufWriter::new(std::fs::File::create(temp).map_err(io)?);
        let mut encoder = png::Encoder::new(file, gw, gh);
        encoder.set_color(if c == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        encoder.set_depth(png::BitDepth::Eight);
        let encoding = |e: png::EncodingError| Error::Plot {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let mut writer = encoder.write_header().map_err(encoding)?;
        writer.write_image_data(grid).map_err(encoding)?;
        writer.finish().map_err(encoding)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_the_grid_size_with_the_pixels_in_place() {
        let _generator = crate::testing::generator_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        // Three 2x3 grey images: 0, 0.5 and 1.
        let images = Tensor::from_slice(&[0.0f32, 0.5, 1.0])
            .reshape([3, 1, 1, 1])
            .expand([3, 1, 2, 3], false);
        save_grid(&images, 2, &path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        // 2 columns x 2 rows of 3x2 images with 2-pixel borders.
        assert_eq!((info.width, info.height), (2 * 5 + 2, 2 * 4 + 2));
        let at = |x: usize, y: usize| buf[y * info.width as usize + x];
        assert_eq!(at(2, 2), 0);
        assert_eq!(at(7, 2), 128);
        assert_eq!(at(2, 6), 255);
        assert_eq!(at(0, 0), 0, "border");
    }

    #[test]
    fn refuses_shapes_it_cannot_draw() {
        let _generator = crate::testing::generator_lock();
        let dir = tempfile::tempdir().unwrap();
        let err = save_grid(
            &Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)),
            2,
            &dir.path().join("x.png"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("(N, C, H, W)"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
