use std::borrow::Cow;
use std::fs;

use super::*;
use crate::checksum::digest_bytes;

fn manifest(files: &[(&str, &[u8])]) -> Manifest {
    Manifest {
        base_url: Cow::Borrowed("http://unused.invalid/"),
        files: files
            .iter()
            .map(|(name, bytes)| {
                let d = digest_bytes(bytes);
                RemoteFile {
                    name: Cow::Owned((*name).to_owned()),
                    md5: Some(Cow::Owned(d.md5)),
                    sha256: Some(Cow::Owned(d.sha256)),
                    size: None,
                }
            })
            .collect(),
    }
}

#[test]
fn a_folder_is_imported_verified_and_left_alone() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), b"alpha").unwrap();
    fs::write(src.path().join("b"), b"beta").unwrap();
    let m = manifest(&[("a", b"alpha"), ("b", b"beta")]);
    let got = import(&m, src.path(), dest.path(), &mut |_| {}).unwrap();
    assert!(got.iter().all(|f| f.outcome == Outcome::Imported));
    assert_eq!(fs::read(dest.path().join("b")).unwrap(), b"beta");
    assert_eq!(fs::read(src.path().join("a")).unwrap(), b"alpha");

    // Already there: nothing is needed from the source any more.
    let empty = tempfile::tempdir().unwrap();
    let again = import(&m, empty.path(), dest.path(), &mut |_| {}).unwrap();
    assert!(again.iter().all(|f| f.outcome == Outcome::AlreadyPresent));
}

#[test]
fn a_single_file_is_imported_under_its_manifest_name() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let path = src.path().join("downloaded-by-hand.tgz");
    fs::write(&path, b"archive").unwrap();
    let m = manifest(&[("cifar-10-binary.tar.gz", b"archive")]);
    import(&m, &path, dest.path(), &mut |_| {}).unwrap();
    assert_eq!(
        fs::read(dest.path().join("cifar-10-binary.tar.gz")).unwrap(),
        b"archive"
    );

    let two = manifest(&[("x", b"1"), ("y", b"2")]);
    let err = import(&two, &path, dest.path(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("pass the folder"), "{err}");
}

#[test]
fn a_corrupt_source_is_refused_and_nothing_is_written() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), b"alphA").unwrap();
    let err = import(
        &manifest(&[("a", b"alpha")]),
        src.path(),
        dest.path(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&digest_bytes(b"alpha").md5) && err.contains(&digest_bytes(b"alphA").md5),
        "{err}"
    );
    assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
    assert_eq!(fs::read(src.path().join("a")).unwrap(), b"alphA");
}

#[test]
fn missing_sources_are_named() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let m = manifest(&[("a", b"alpha")]);
    let err = import(&m, src.path(), dest.path(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&src.path().join("a").display().to_string())
    );
    let err = import(&m, &src.path().join("nope"), dest.path(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
}
