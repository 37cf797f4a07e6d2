//! md5 and sha256 digests: computing them while data streams by, checking them
//! against a manifest, and reading `SHA256SUMS` lists.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use md5::{Digest, Md5};
use sha2::Sha256;

use crate::error::{DataError, Offset, Result};
use crate::manifest::RemoteFile;

/// A file's md5 and sha256 digests, in lowercase hexadecimal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// The md5 digest.
    pub md5: String,
    /// The sha256 digest.
    pub sha256: String,
}

/// Both digests, computed incrementally.
#[derive(Default)]
pub(crate) struct Hasher {
    md5: Md5,
    sha256: Sha256,
}

impl Hasher {
    /// Feeds more bytes.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha256.update(bytes);
    }

    /// The digests of everything fed.
    pub(crate) fn finish(self) -> Digests {
        Digests {
            md5: hex(&self.md5.finalize()),
            sha256: hex(&self.sha256.finalize()),
        }
    }
}

/// The digests of `bytes`.
pub fn digest_bytes(bytes: &[u8]) -> Digests {
    let mut hasher = Hasher::default();
    hasher.update(bytes);
    hasher.finish()
}

/// The digests of the file at `path`, read in chunks.
pub fn digest_file(path: &Path) -> Result<Digests> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, "opening", e))?;
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DataError::io(path, "reading", e)),
        }
    }
}

/// Checks `digests` against `expected`: each digest it pins (at least one).
/// `consequence` says in the error what happened to the file.
pub(crate) fn verify(
    file: &str,
    expected: &RemoteFile,
    digests: &Digests,
    consequence: &'static str,
) -> Result<()> {
    let mismatch = |algorithm, expected: &str, actual: &str| DataError::Checksum {
        file: file.to_owned(),
        algorithm,
        expected: expected.to_owned(),
        actual: actual.to_owned(),
        consequence,
    };
    if expected.md5.is_none() && expected.sha256.is_none() {
        return Err(DataError::Unpinned {
            file: file.to_owned(),
        });
    }
    if let Some(md5) = &expected.md5
        && !digests.md5.eq_ignore_ascii_case(md5)
    {
        return Err(mismatch("md5", md5, &digests.md5));
    }
    match &expected.sha256 {
        Some(sha) if !digests.sha256.eq_ignore_ascii_case(sha) => {
            Err(mismatch("sha256", sha, &digests.sha256))
        }
        _ => Ok(()),
    }
}

/// Reads a `SHA256SUMS` list (`<64 hex digits>  <file name>` per line, as written by
/// `sha256sum`; a `*` before the name marks binary mode) into (name, digest) pairs.
/// `name` is the list's own name, for error messages.
pub fn parse_sha256sums(name: &str, text: &str) -> Result<Vec<(String, String)>> {
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len() as u64;
        let content = line.trim_end();
        if content.is_empty() {
            continue;
        }
        let parsed = content
            .split_once(char::is_whitespace)
            .and_then(|(digest, rest)| {
                let file = rest.trim_start().trim_start_matches('*');
                let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
                (valid && !file.is_empty()).then(|| (file.to_owned(), digest.to_ascii_lowercase()))
            });
        match parsed {
            Some(entry) => entries.push(entry),
            None => {
                return Err(DataError::malformed(
                    name,
                    Offset::File(start),
                    "a line `<64 hex digits>  <file name>`",
                    format!("{content:?}"),
                ));
            }
        }
    }
    Ok(entries)
}

/// `bytes` in lowercase hexadecimal (how digests are written everywhere in elbo).
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn known_digests_of_abc() {
        let d = digest_bytes(b"abc");
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn each_pinned_digest_is_checked_and_one_is_required() {
        let d = digest_bytes(b"abc");
        let mut expected = RemoteFile {
            name: Cow::Borrowed("abc"),
            md5: Some(Cow::Owned(d.md5.clone())),
            sha256: None,
            size: None,
        };
        verify("abc", &expected, &d, "kept").unwrap();
        expected.sha256 = Some(Cow::Borrowed("00"));
        let err = verify("abc", &expected, &d, "deleted")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256") && err.contains(&d.sha256) && err.contains("expected 00"));
        expected.md5 = Some(Cow::Borrowed("11"));
        let err = verify("abc", &expected, &d, "deleted")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("md5 checksum mismatch: expected 11, found 9001"),
            "{err}"
        );
        // A sha256 alone verifies; no digest at all is refused, never waved through.
        expected.md5 = None;
        expected.sha256 = Some(Cow::Owned(d.sha256.clone()));
        verify("abc", &expected, &d, "kept").unwrap();
        expected.sha256 = None;
        let err = verify("abc", &expected, &d, "kept")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pins neither an md5 nor a sha256"), "{err}");
    }

    #[test]
    fn sha256sums_lists_parse_and_bad_lines_are_located() {
        let digest = "a".repeat(64);
        let text = format!("{digest}  one.gz\n\n{digest} *two.gz\n");
        let entries = parse_sha256sums("SUMS", &text).unwrap();
        assert_eq!(
            entries,
            vec![
                ("one.gz".into(), digest.clone()),
                ("two.gz".into(), digest.clone())
            ]
        );
        let err = parse_sha256sums("SUMS", &format!("{digest}  ok\nxyz  bad\n")).unwrap_err();
        assert!(err.to_string().starts_with("SUMS: at byte 69:"), "{err}");
    }

    #[test]
    fn files_are_digested_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(digest_file(&path).unwrap(), digest_bytes(&bytes));
        assert!(digest_file(&dir.path().join("absent")).is_err());
    }
}
