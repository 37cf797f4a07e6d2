//! Image folders: class folders and flat ones, formats, sizes, channels, splits, bad
//! files, links, names; and the resize against PIL's (a frozen fixture).

use std::path::Path;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

use super::*;

/// `pil_resize.py`'s source image: a gradient with a sharp checkerboard corner.
fn source(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let b = if x < w / 2 && y < h / 2 && ((x / 4) + (y / 4)) % 2 == 0 {
            255
        } else {
            ((x + y) * 3 % 256) as u8
        };
        Rgb([(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, b])
    })
}

fn save(image: &DynamicImage, path: &Path, format: ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save_with_format(path, format).unwrap();
}

fn colour(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(source(w, h))
}

fn grey(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([luma(source(w, h).get_pixel(x, y).0)])
    }))
}

/// torchvision's Resize(S) + CenterCrop(S) as PIL computes it (BILINEAR, antialiased),
/// frozen by `benches/reference/pil_resize.py`, against elbo's on the same images:
/// downscaling by 2.9 and 2.3, a square, and upscaling. PIL works in fixed point and
/// the `image` crate in f32, with the same triangle filter and support: every pixel
/// within 2 of 255 levels, and on average within 0.5.
#[test]
fn the_resize_is_torchvisions_to_a_level_or_two() {
    let fixture = include_str!("pil-resize.txt");
    let dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for line in fixture.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let (w, h): (u32, u32) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
        let is_grey = parts[2].ends_with('L');
        let s: u32 = parts[2].trim_end_matches('L').parse().unwrap();
        let expected: Vec<u8> = (0..parts[3].len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&parts[3][i..i + 2], 16).unwrap())
            .collect();
        let folder = dir.path().join(format!("{w}-{h}-{}", parts[2]));
        let image = if is_grey { grey(w, h) } else { colour(w, h) };
        // Two copies: one is held out for testing.
        for name in ["a.png", "b.png"] {
            save(&image, &folder.join(name), ImageFormat::Png);
        }
        let options = FolderOptions {
            image_size: Some(s),
            test_fraction: 0.5,
            ..FolderOptions::default()
        };
        let data = load_folder(&folder, &options).unwrap();
        let ours = data.splits.train.images();
        assert_eq!(
            ours.shape()[1..],
            [if is_grey { 1 } else { 3 }, s as usize, s as usize]
        );
        // PIL's bytes are interleaved (HWC); ours are planar (CHW).
        let c = ours.shape()[1];
        let mut worst = 0i32;
        let mut total = 0i64;
        for (i, &e) in expected.iter().enumerate() {
            let (pixel, channel) = (i / c, i % c);
            let (y, x) = (pixel / s as usize, pixel % s as usize);
            let d = (i32::from(ours[[0, channel, y, x]]) - i32::from(e)).abs();
            worst = worst.max(d);
            total += i64::from(d);
        }
        let mean = total as f64 / expected.len() as f64;
        assert!(
            worst <= 2 && mean <= 0.5,
            "{line:.20}: worst {worst}, mean {mean}"
        );
        cases += 1;
    }
    assert_eq!(cases, 8);
}

#[test]
fn class_folders_give_sorted_labels_and_a_test_folder_its_split() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Mixed formats and sizes, all colour; classes named out of order.
    for (class, n) in [("zebra", 3), ("ant", 2)] {
        for i in 0..n {
            let format = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Bmp][i % 3];
            let ext = format.extensions_str()[0];
            save(
                &colour(20 + i as u32, 16),
                &root.join(format!("train/{class}/{i}.{ext}")),
                format,
            );
        }
        save(
            &colour(16, 16),
            &root.join(format!("test/{class}/t.webp")),
            ImageFormat::WebP,
        );
    }
    std::fs::write(root.join("train/ant/notes.txt"), b"not an image").unwrap();
    let options = FolderOptions {
        image_size: Some(8),
        ..FolderOptions::default()
    };
    let data = load_folder(root, &options).unwrap();
    assert_eq!(data.classes, ["ant", "zebra"]);
    assert_eq!(data.splits.train.labels().to_vec(), [0, 0, 1, 1, 1]);
    assert_eq!(data.splits.test.labels().to_vec(), [0, 1]);
    assert_eq!(data.splits.train.image_shape(), [3, 8, 8]);
    // Without --image-size, sizes that differ are refused with two of them.
    let err = load_folder(root, &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("images of one size") && err.contains("20x16"),
        "{err}"
    );
    // A test class the training split does not have.
    save(
        &colour(16, 16),
        &root.join("test/moth/m.png"),
        ImageFormat::Png,
    );
    let err = load_folder(root, &options).unwrap_err().to_string();
    assert!(err.contains("moth") && err.contains("ant, zebra"), "{err}");
}

#[test]
fn a_flat_folder_is_unlabelled_split_by_seed_and_grey_when_all_are() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..50u32 {
        let image = image::GrayImage::from_fn(6, 6, |x, y| image::Luma([(i * 5 + x + y) as u8]));
        save(
            &DynamicImage::ImageLuma8(image),
            &dir.path().join(format!("{i:02}.png")),
            ImageFormat::Png,
        );
    }
    // A GIF's first frame, of grey pixels stored as colour (GIF has no grey type).
    save(
        &DynamicImage::ImageRgb8(grey(6, 6).to_rgb8()),
        &dir.path().join("g.gif"),
        ImageFormat::Gif,
    );
    let options = FolderOptions {
        test_fraction: 0.1,
        seed: 7,
        ..FolderOptions::default()
    };
    let a = load_folder(dir.path(), &options).unwrap();
    assert!(a.classes.is_empty());
    assert_eq!((a.splits.train.len(), a.splits.test.len()), (45, 6));
    assert_eq!(a.splits.train.image_shape(), [1, 6, 6]);
    assert!(a.splits.train.labels().iter().all(|&l| l == 0));
    // The same seed, the same split; another seed, another one.
    let again = load_folder(dir.path(), &options).unwrap();
    assert_eq!(a.splits.test, again.splits.test);
    let other = load_folder(
        dir.path(),
        &FolderOptions {
            seed: 8,
            ..options.clone()
        },
    )
    .unwrap();
    assert_ne!(a.splits.test, other.splits.test);
    // Asked for colour: three equal planes.
    let rgb = load_folder(
        dir.path(),
        &FolderOptions {
            channels: Some(3),
            ..options
        },
    )
    .unwrap();
    let images = rgb.splits.train.images();
    assert_eq!(images.shape()[1], 3);
    assert_eq!(
        images.index_axis(ndarray::Axis(1), 0),
        images.index_axis(ndarray::Axis(1), 2)
    );
}

#[test]
fn bad_files_are_named_or_skipped_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        save(
            &colour(8, 8),
            &dir.path().join(format!("{i}.png")),
            ImageFormat::Png,
        );
    }
    let whole = std::fs::read(dir.path().join("0.png")).unwrap();
    std::fs::write(dir.path().join("cut.png"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(dir.path().join("noise.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
    let err = load_folder(dir.path(), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&dir.path().join("cut.png").display().to_string())
            && err.contains("--skip-bad"),
        "{err}"
    );
    let data = load_folder(
        dir.path(),
        &FolderOptions {
            skip_bad: true,
            ..FolderOptions::default()
        },
    )
    .unwrap();
    assert_eq!(data.splits.train.len() + data.splits.test.len(), 4);
    let skipped: Vec<String> = data
        .skipped
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(skipped, ["cut.png", "noise.jpg"]);
}

#[test]
fn empty_folders_links_loops_and_odd_names() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let err = load_folder(dir.path(), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("none"), "{err}");
    let err = load_folder(&dir.path().join("absent"), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not found") && err.contains("expected a folder of images"),
        "{err}"
    );
    // A class folder with a link back to its parent, and a file name that is not UTF-8.
    let class = dir.path().join("c");
    save(&colour(4, 4), &class.join("a.png"), ImageFormat::Png);
    let odd = class.join(std::ffi::OsStr::from_bytes(b"\xff\xfe.png"));
    save(&colour(4, 4), &odd, ImageFormat::Png);
    std::os::unix::fs::symlink(dir.path(), class.join("loop")).unwrap();
    let data = load_folder(dir.path(), &FolderOptions::default()).unwrap();
    assert_eq!(data.classes, ["c"]);
    assert_eq!(data.splits.train.len() + data.splits.test.len(), 2);
    // Images beside class folders: which is meant is not clear.
    save(
        &colour(4, 4),
        &dir.path().join("stray.png"),
        ImageFormat::Png,
    );
    let err = load_folder(dir.path(), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("either one sub-folder per class or images only"),
        "{err}"
    );
}

#[test]
fn lumas_are_pils() {
    // PIL: L = (299 R + 587 G + 114 B) / 1000, rounded: these from Image.convert("L").
    assert_eq!(luma([255, 255, 255]), 255);
    assert_eq!(luma([255, 0, 0]), 76);
    assert_eq!(luma([0, 255, 0]), 150);
    assert_eq!(luma([0, 0, 255]), 29);
    assert_eq!(luma([10, 200, 30]), 124);
}

/// The first read packs, later ones map the same pack (equal data, no decoding), a
/// changed source or other options re-pack, and a damaged pack is refused naming its
/// file; two readers at once wait for one packer.
#[test]
fn a_pack_is_made_once_mapped_after_redone_on_change_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (root, packs) = (dir.path().join("photos"), dir.path().join("packs"));
    for (class, n) in [("a", 5u32), ("b", 4)] {
        for i in 0..n {
            save(
                &colour(12 + i, 10),
                &root.join(class).join(format!("{i}.png")),
                ImageFormat::Png,
            );
        }
    }
    let options = FolderOptions {
        image_size: Some(8),
        test_fraction: 0.25,
        ..FolderOptions::default()
    };
    let decoded = load_folder(&root, &options).unwrap();
    let mut calls = 0;
    let (first, info) =
        load_folder_packed(&root, &options, &packs, &mut |_, _| calls += 1).unwrap();
    assert!(
        info.packed_now && calls == 9,
        "{info:?}, {calls} progress calls"
    );
    assert!(first.splits.train.is_mapped() && first.splits.test.is_mapped());
    assert_eq!(first.splits, decoded.splits);
    assert_eq!(first.classes, ["a", "b"]);
    let (again, info) = load_folder_packed(&root, &options, &packs, &mut |_, _| panic!()).unwrap();
    assert!(!info.packed_now);
    assert_eq!(again.splits, decoded.splits);
    // Other options: a pack of their own, beside the first, which stays.
    let grey = FolderOptions {
        channels: Some(1),
        ..options.clone()
    };
    let (_, other) = load_folder_packed(&root, &grey, &packs, &mut |_, _| {}).unwrap();
    assert!(other.packed_now && other.dir != info.dir);
    let (_, info) = load_folder_packed(&root, &options, &packs, &mut |_, _| {}).unwrap();
    assert!(!info.packed_now);
    // A file added: packed again.
    save(&colour(9, 9), &root.join("b/new.png"), ImageFormat::Png);
    let (more, info) = load_folder_packed(&root, &options, &packs, &mut |_, _| {}).unwrap();
    assert!(info.packed_now);
    assert_eq!(more.splits.train.len() + more.splits.test.len(), 10);
    // A flipped byte in the pack: refused, naming the file.
    let images = info.dir.join("images.u8");
    let mut bytes = std::fs::read(&images).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&images, bytes).unwrap();
    let err = load_folder_packed(&root, &options, &packs, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&images.display().to_string()) && err.contains("sha256"),
        "{err}"
    );
    // Two readers at once (a fresh pack folder): one packs, the other waits and maps.
    let packs2 = dir.path().join("packs2");
    let both: Vec<bool> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    load_folder_packed(&root, &options, &packs2, &mut |_, _| {})
                        .unwrap()
                        .1
                        .packed_now
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(both.iter().filter(|&&p| p).count(), 1, "{both:?}");
}

#[cfg(feature = "parquet")]
mod parquet_files {
    //! Parquet shards the tests write with the parquet crate's own writer (snappy, the
    //! schema `datasets` writes: an `image` struct of `bytes` and `path`, an int64
    //! `label`, the `huggingface` metadata with the class names).

    use std::sync::Arc;

    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    use super::*;
    use crate::folder::{ParquetColumns, load_parquet, load_parquet_packed};

    fn png_bytes(image: &DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A shard of `images` with `labels` (none: no label column); `image` names the
    /// image column.
    fn shard(path: &Path, image: &str, images: &[Vec<u8>], labels: Option<&[i64]>, names: &[&str]) {
        let label_field = if labels.is_some() {
            "optional int64 label;"
        } else {
            ""
        };
        let schema = format!(
            "message schema {{ optional group {image} {{ optional binary bytes; optional binary \
             path (STRING); }} {label_field} }}"
        );
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(
            file,
            Arc::new(parse_message_type(&schema).unwrap()),
            Arc::new(props),
        )
        .unwrap();
        let features = format!(
            r#"{{"info": {{"features": {{"{image}": {{"_type": "Image"}}, "label": {{"names": {names:?}, "_type": "ClassLabel"}}}}}}}}"#
        );
        writer.append_key_value_metadata(KeyValue::new("huggingface".to_string(), features));
        let mut group = writer.next_row_group().unwrap();
        // image.bytes: present (definition level 2).
        let mut column = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = images.iter().map(|b| ByteArray::from(b.clone())).collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&vec![2; images.len()]), None)
            .unwrap();
        column.close().unwrap();
        // image.path: null inside a present struct (definition level 1).
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(&[], Some(&vec![1; images.len()]), None)
            .unwrap();
        column.close().unwrap();
        if let Some(labels) = labels {
            let mut column = group.next_column().unwrap().unwrap();
            column
                .typed::<Int64Type>()
                .write_batch(labels, Some(&vec![1; labels.len()]), None)
                .unwrap();
            column.close().unwrap();
        }
        group.close().unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn hub_shards_read_with_splits_labels_and_class_names() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let image = |i: u32| png_bytes(&colour(10 + i, 8));
        let train: Vec<Vec<u8>> = (0..6).map(image).collect();
        shard(
            &data.join("train-00000-of-00002.parquet"),
            "img",
            &train[..3],
            Some(&[0, 1, 2]),
            &["cat", "dog", "emu"],
        );
        shard(
            &data.join("train-00001-of-00002.parquet"),
            "img",
            &train[3..],
            Some(&[2, 1, 0]),
            &["cat", "dog", "emu"],
        );
        shard(
            &data.join("test-00000-of-00001.parquet"),
            "img",
            &train[..2],
            Some(&[1, 1]),
            &["cat", "dog", "emu"],
        );
        shard(
            &data.join("validation-00000-of-00001.parquet"),
            "img",
            &train[..1],
            Some(&[0]),
            &["cat", "dog", "emu"],
        );
        let options = FolderOptions {
            image_size: Some(8),
            ..FolderOptions::default()
        };
        let read = load_parquet(dir.path(), &ParquetColumns::default(), &options).unwrap();
        assert_eq!(read.classes, ["cat", "dog", "emu"]);
        assert_eq!(read.splits.train.labels().to_vec(), [0, 1, 2, 2, 1, 0]);
        assert_eq!(read.splits.test.labels().to_vec(), [1, 1]);
        assert_eq!(read.splits.train.image_shape(), [3, 8, 8]);
        // The pixels are the images' (their second copies in the test shard).
        assert_eq!(
            read.splits.test.images().index_axis(ndarray::Axis(0), 0),
            read.splits.train.images().index_axis(ndarray::Axis(0), 0)
        );
        // Packed once, mapped after, equal.
        let packs = dir.path().join("packs");
        let (packed, info) = load_parquet_packed(
            dir.path(),
            &ParquetColumns::default(),
            &options,
            &packs,
            &mut |_, _| {},
        )
        .unwrap();
        assert!(info.packed_now && packed.splits.train.is_mapped());
        assert_eq!(packed.splits, read.splits);
        let (_, info) = load_parquet_packed(
            dir.path(),
            &ParquetColumns::default(),
            &options,
            &packs,
            &mut |_, _| {},
        )
        .unwrap();
        assert!(!info.packed_now);
    }

    /// A shard written by `datasets` itself (`benches/reference/hf_parquet.py`: its
    /// `Image` and `ClassLabel` features, pyarrow's writer): every image, label and
    /// class name read back.
    #[test]
    fn a_shard_written_by_datasets_reads_back() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/folder/hf-tiny-train.parquet");
        let options = FolderOptions {
            test_fraction: 0.5,
            ..FolderOptions::default()
        };
        let read = load_parquet(&file, &ParquetColumns::default(), &options).unwrap();
        assert_eq!(read.classes, ["even", "odd"]);
        let mut seen: Vec<([u8; 3], u8)> = Vec::new();
        for split in [&read.splits.train, &read.splits.test] {
            let images = split.images();
            for (n, &label) in split.labels().iter().enumerate() {
                let pixel = [0, 1, 2].map(|c| images[[n, c, 0, 7]]);
                seen.push((pixel, label));
            }
        }
        seen.sort();
        let expected: Vec<([u8; 3], u8)> = (0..6u8)
            .map(|i| ([40 * i, 255 - 40 * i, 7 * i], i % 2))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_file_without_labels_and_named_columns() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pokemon.parquet");
        let images: Vec<Vec<u8>> = (0..10).map(|i| png_bytes(&grey(6 + i, 6))).collect();
        shard(&file, "picture", &images, None, &[]);
        let options = FolderOptions {
            image_size: Some(6),
            test_fraction: 0.2,
            ..FolderOptions::default()
        };
        let read = load_parquet(&file, &ParquetColumns::default(), &options).unwrap();
        assert!(read.classes.is_empty());
        assert_eq!((read.splits.train.len(), read.splits.test.len()), (8, 2));
        assert_eq!(read.splits.train.image_shape(), [1, 6, 6]);
        // A column asked for that is not there is named with the columns there are.
        let asked = ParquetColumns {
            image: Some("image".into()),
            label: None,
        };
        let err = load_parquet(&file, &asked, &options)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"image\"") && err.contains("picture"),
            "{err}"
        );
        let asked = ParquetColumns {
            image: None,
            label: Some("fine_label".into()),
        };
        let err = load_parquet(&file, &asked, &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fine_label"), "{err}");
        // Not parquet at all.
        let bad = dir.path().join("bad.parquet");
        std::fs::write(&bad, b"PAR1 nothing").unwrap();
        let err = load_parquet(&bad, &ParquetColumns::default(), &options)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.parquet") && err.contains("parquet"),
            "{err}"
        );
    }
}
