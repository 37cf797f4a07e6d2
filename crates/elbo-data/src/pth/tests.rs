//! The reader against frozen `torch.save` files.

use super::*;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth")
        .join(name)
}

fn f32s(t: &PthTensor) -> Vec<f32> {
    t.to_f32().unwrap()
}

/// The fixtures are written by `benches/reference/pth_fixtures.py` (torch 2.13.0):
/// one state dict in both formats, with a view, a shared tensor, a scalar and three
/// float types.
fn check(named: &[(String, PthTensor)]) {
    let get = |name: &str| {
        &named
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .1
    };
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "a.weight",
            "b.bias",
            "c.running_var",
            "d.num_batches_tracked",
            "e.view",
            "f.half",
            "g.shared"
        ]
    );
    assert_eq!(get("a.weight").shape, [2, 3]);
    assert_eq!(f32s(get("a.weight")), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
    assert_eq!(f32s(get("b.bias")), [1.5, -2.25, 3.0, 0.125]);
    assert_eq!(get("c.running_var").dtype, Dtype::F64);
    assert_eq!(f32s(get("c.running_var")), [0.5, 2.0]);
    let n = get("d.num_batches_tracked");
    assert_eq!((n.dtype, n.shape.len()), (Dtype::I64, 0));
    assert_eq!(n.data, 7i64.to_le_bytes());
    // arange(12).reshape(3, 4).t()[1:]: rows 1..4 of the transpose, gathered.
    let view = get("e.view");
    assert_eq!(view.shape, [3, 3]);
    assert_eq!(f32s(view), [1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]);
    assert_eq!(get("f.half").dtype, Dtype::F16);
    assert_eq!(f32s(get("f.half")), [1.0, 0.5]);
    assert_eq!(get("g.shared"), get("a.weight"));
}

#[test]
fn both_torch_save_formats_give_the_same_state_dict() {
    check(&read_state_dict(&fixture("state-zip.pth")).unwrap());
    check(&read_state_dict(&fixture("state-legacy.pth")).unwrap());
    // A checkpoint with the state dict inside.
    check(&read_state_dict(&fixture("model-zip.pth")).unwrap());
}

#[test]
fn damaged_files_are_refused_naming_the_file() {
    let bytes = std::fs::read(fixture("state-legacy.pth")).unwrap();
    let err = state_dict_from_bytes("cut.pth", &bytes[..bytes.len() - 5])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cut.pth") && err.contains("bytes"), "{err}");
    let err = state_dict_from_bytes("text.pth", b"hello")
        .unwrap_err()
        .to_string();
    assert!(err.contains("text.pth"), "{err}");
    // A byte of a storage's data changed: its CRC-32 says so, naming the member.
    let zip = std::fs::read(fixture("state-zip.pth")).unwrap();
    let archive = crate::zip::ZipArchive::new("z", &zip).unwrap();
    let member = archive
        .members()
        .iter()
        .find(|m| m.name.ends_with("data/0"))
        .unwrap()
        .clone();
    let at = member.header_offset as usize;
    let name_len = u16::from_le_bytes([zip[at + 26], zip[at + 27]]) as usize;
    let extra_len = u16::from_le_bytes([zip[at + 28], zip[at + 29]]) as usize;
    let mut damaged = zip.clone();
    damaged[at + 30 + name_len + extra_len] ^= 0x55;
    let err = state_dict_from_bytes("damaged.pth", &damaged)
        .unwrap_err()
        .to_string();
    assert!(err.contains("data/0") && err.contains("CRC-32"), "{err}");
}

#[test]
fn half_floats_widen_exactly() {
    assert_eq!(half_to_f32(0x3C00), 1.0);
    assert_eq!(half_to_f32(0xC000), -2.0);
    assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(half_to_f32(0x7BFF), 65504.0);
    assert!(half_to_f32(0x7C00).is_infinite());
}
