//! The framing against known values, every kind of event read back, and damage.

use super::*;

/// CRC32C's check value (of "123456789") is 0xE3069283 (RFC 3720, B.4); the mask
/// rotates it right by 15 and adds 0xA282EAD8.
#[test]
fn the_crc_is_castagnolis_and_masked_as_tensorboard_masks_it() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    let expected = 0xE306_9283u32.rotate_right(15).wrapping_add(0xA282_EAD8);
    assert_eq!(masked_crc(b"123456789"), expected);
    let framed = record(b"abc");
    assert_eq!(framed.len(), 8 + 4 + 3 + 4);
    assert_eq!(&framed[..8], &3u64.to_le_bytes());
    assert_eq!(&framed[12..15], b"abc");
}

fn png(width: u32, height: u32, colour: u8) -> Vec<u8> {
    let mut out = vec![
        0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13,
    ];
    out.extend_from_slice(b"IHDR");
    out.extend_from_slice(&width.to_be_bytes());
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&[8, colour, 0, 0, 0, 0, 0, 0, 0]);
    out
}

#[test]
fn scalars_images_text_and_a_session_start_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.scalars(3, &[("train/a".into(), 1.5), ("train/b".into(), -2.0)])
        .unwrap();
    w.png(4, "samples", &png(20, 10, 0)).unwrap();
    w.text(0, "config", "# run\n`json`").unwrap();
    w.start_session(7).unwrap();
    let err = w.png(4, "x", b"GIF89a").unwrap_err().to_string();
    assert!(err.contains("not a PNG file"), "{err}");
    let events = read_events(w.path()).unwrap();
    assert_eq!(events.len(), 5);
    let summary = |i: usize| match &events[i].what {
        Some(What::Summary(s)) => s.value.clone(),
        other => panic!("event {i}: {other:?}"),
    };
    let values = summary(1);
    assert_eq!(events[1].step, 3);
    assert_eq!(
        values
            .iter()
            .map(|v| (v.tag.as_str(), v.kind.clone()))
            .collect::<Vec<_>>(),
        [
            ("train/a", Some(Kind::SimpleValue(1.5))),
            ("train/b", Some(Kind::SimpleValue(-2.0)))
        ]
    );
    match &summary(2)[0].kind {
        Some(Kind::Image(i)) => {
            assert_eq!((i.width, i.height, i.colorspace), (20, 10, 1));
            assert_eq!(i.encoded_image_string, png(20, 10, 0));
        }
        other => panic!("{other:?}"),
    }
    let text = &summary(3)[0];
    assert_eq!(
        text.metadata
            .as_ref()
            .unwrap()
            .plugin_data
            .as_ref()
            .unwrap()
            .plugin_name,
        "text"
    );
    match &text.kind {
        Some(Kind::Tensor(t)) => assert_eq!(t.string_val, [b"# run\n`json`".to_vec()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (events[4].step, &events[4].what),
        (
            7,
            &Some(What::SessionLog(SessionLog {
                status: proto::SESSION_START
            }))
        )
    );
    assert_eq!(event_files(dir.path()), [w.path().to_path_buf()]);
}

#[test]
fn a_cut_last_record_ends_the_file_and_a_damaged_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.scalars(1, &[("a".into(), 1.0)]).unwrap();
    let whole = std::fs::read(w.path()).unwrap();
    // Cut inside the last record: the events before it.
    let cut = dir.path().join("cut.tfevents");
    std::fs::write(&cut, &whole[..whole.len() - 3]).unwrap();
    assert_eq!(read_events(&cut).unwrap().len(), 1);
    // A flipped byte in the last record's data.
    let mut damaged = whole.clone();
    let at = damaged.len() - 6;
    damaged[at] ^= 0xff;
    let bad = dir.path().join("bad.tfevents");
    std::fs::write(&bad, &damaged).unwrap();
    let err = read_events(&bad).unwrap_err().to_string();
    assert!(err.contains("the data's CRC does not match"), "{err}");
}
