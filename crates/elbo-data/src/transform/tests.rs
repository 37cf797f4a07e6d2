use ndarray::{Array1, Array4, s};

use super::*;

/// `n` images of `c` x 4 x 5, pixel values from `value(image, channel, row, column)`.
fn images(n: usize, c: usize, value: impl Fn(usize, usize, usize, usize) -> u8) -> Dataset {
    let images = Array4::from_shape_fn((n, c, 4, 5), |(i, k, r, col)| value(i, k, r, col));
    Dataset::new(images, Array1::zeros(n)).unwrap()
}

fn key(epoch: u64) -> EpochSeed {
    EpochSeed { seed: 11, epoch }
}

fn with(pixels: Pixels) -> Transform {
    Transform {
        pixels,
        horizontal_flip: false,
    }
}

#[test]
fn scaling_hits_the_range_ends_exactly() {
    let d = images(1, 1, |_, _, r, c| {
        [0, 255, 51, 128, 1][c] * u8::from(r == 0)
    });
    let unit = with(Pixels::Scaled(Scale::Unit))
        .apply(&d, &[0], key(0))
        .unwrap();
    let sym = with(Pixels::Scaled(Scale::Symmetric))
        .apply(&d, &[0], key(0))
        .unwrap();
    assert_eq!(unit[[0, 0, 0, 0]], 0.0);
    assert_eq!(unit[[0, 0, 0, 1]], 1.0);
    assert_eq!(unit[[0, 0, 0, 2]], 0.2);
    assert_eq!((sym[[0, 0, 0, 0]], sym[[0, 0, 0, 1]]), (-1.0, 1.0));
    assert!((sym[[0, 0, 0, 3]] - 1.0 / 255.0).abs() < 1e-7);
}

#[test]
fn thresholding_is_strictly_above() {
    let d = images(1, 1, |_, _, r, c| (r * 5 + c) as u8 * 10);
    let out = with(Pixels::Thresholded(100))
        .apply(&d, &[0], key(0))
        .unwrap();
    for (o, p) in out.iter().zip(d.images().iter()) {
        assert_eq!(*o, if *p > 100 { 1.0 } else { 0.0 });
    }
}

#[test]
fn dynamic_binarisation_has_mean_p_over_255() {
    // 40 images of 20 pixels (800 draws) per epoch, 100 epochs: 80,000 Bernoulli draws
    // per pixel value. The sample mean has sd sqrt(q (1 - q) / 80000) <= 0.00177; the
    // tolerance is 5 sd at q = 1/2, 0.0089.
    for p in [0u8, 1, 51, 128, 200, 255] {
        let d = images(40, 1, |_, _, _, _| p);
        let t = with(Pixels::DynamicBinarised);
        let indices: Vec<usize> = (0..40).collect();
        let mut ones = 0.0f64;
        for epoch in 0..100 {
            let out = t.apply(&d, &indices, key(epoch)).unwrap();
            assert!(out.iter().all(|&x| x == 0.0 || x == 1.0));
            ones += out.iter().map(|&x| f64::from(x)).sum::<f64>();
        }
        let mean = ones / 80_000.0;
        let q = f64::from(p) / 255.0;
        assert!(
            (mean - q).abs() < 0.0089,
            "p = {p}: mean {mean}, expected {q}"
        );
        if p == 0 || p == 255 {
            assert_eq!(mean, q);
        }
    }
}

#[test]
fn randomness_depends_on_seed_epoch_and_image_only() {
    let d = images(6, 3, |i, k, r, c| (i * 40 + k * 13 + r * 5 + c) as u8);
    let t = Transform {
        pixels: Pixels::DynamicBinarised,
        horizontal_flip: true,
    };
    let all = t.apply(&d, &[0, 1, 2, 3, 4, 5], key(3)).unwrap();
    let again = t.apply(&d, &[0, 1, 2, 3, 4, 5], key(3)).unwrap();
    assert_eq!(all, again);
    // The same image gives the same result alone, in another batch, in another place.
    let alone = t.apply(&d, &[4, 1], key(3)).unwrap();
    assert_eq!(alone.index_axis(Axis(0), 0), all.index_axis(Axis(0), 4));
    assert_eq!(alone.index_axis(Axis(0), 1), all.index_axis(Axis(0), 1));
    assert_ne!(all, t.apply(&d, &[0, 1, 2, 3, 4, 5], key(4)).unwrap());
}

#[test]
fn dequantisation_stays_within_the_pixel_bin() {
    let d = images(3, 2, |i, k, r, c| (i * 90 + k * 40 + r * 5 + c) as u8);
    let idx = [0, 1, 2];
    let unit = with(Pixels::Dequantised(Scale::Unit))
        .apply(&d, &idx, key(0))
        .unwrap();
    let sym = with(Pixels::Dequantised(Scale::Symmetric))
        .apply(&d, &idx, key(0))
        .unwrap();
    for ((u, s), &p) in unit.iter().zip(sym.iter()).zip(d.images().iter()) {
        assert_eq!((u * 256.0).floor(), f32::from(p), "u = {u}, p = {p}");
        assert!((s - (2.0 * u - 1.0)).abs() < 1e-6);
        assert!((-1.0..1.0).contains(s));
    }
    let next = with(Pixels::Dequantised(Scale::Unit))
        .apply(&d, &idx, key(1))
        .unwrap();
    assert_ne!(unit, next);
}

#[test]
fn flips_mirror_columns_about_half_the_time() {
    // 1,000 images: the number flipped is Binomial(1000, 1/2), sd 15.8; 5 sd = 79.
    let n = 1000;
    let d = images(n, 3, |i, k, r, c| (i + k * 7 + r * 5 + c) as u8);
    let t = Transform {
        pixels: Pixels::Scaled(Scale::Unit),
        horizontal_flip: true,
    };
    let indices: Vec<usize> = (0..n).collect();
    let out = t.apply(&d, &indices, key(0)).unwrap();
    let plain = with(Pixels::Scaled(Scale::Unit))
        .apply(&d, &indices, key(0))
        .unwrap();
    let mut flipped = 0usize;
    for i in 0..n {
        let got = out.index_axis(Axis(0), i);
        let orig = plain.index_axis(Axis(0), i);
        if got == orig {
            continue;
        }
        assert_eq!(got, orig.slice(s![.., .., ..;-1]));
        flipped += 1;
    }
    assert!(flipped.abs_diff(n / 2) < 79, "{flipped} flipped");
}

#[test]
fn indices_out_of_range_are_errors() {
    let d = images(2, 1, |_, _, _, _| 0);
    let err = Transform::default().apply(&d, &[0, 2], key(0)).unwrap_err();
    assert!(matches!(
        err,
        DataError::IndexOutOfRange { index: 2, len: 2 }
    ));
}
