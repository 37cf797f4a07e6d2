//! Where each data set's files are downloaded from, and the digests they must have.
//!
//! The md5 digests of the real files are the ones torchvision and the CIFAR page
//! publish. Their sha256 digests are not known yet (the hosts were unreachable when
//! this manifest was written), so [`RemoteFile::sha256`] is optional: verification
//! always requires the md5 and, when a sha256 is given, the sha256 too. The sha256 of
//! a real file is to be pinned here on its first successful download (the download
//! reports it; see [`crate::FetchedFile`]).

use std::borrow::Cow;

/// One file of a data set, with its digests (lowercase hexadecimal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The file name, both on the server (appended to the base URL) and on disk.
    pub name: Cow<'static, str>,
    /// The md5 digest the file must have, when it is known (at least one of md5 and
    /// sha256 is).
    pub md5: Option<Cow<'static, str>>,
    /// The sha256 digest the file must have, when it is known.
    pub sha256: Option<Cow<'static, str>>,
    /// Its size in bytes, when known: a download that announces or sends more is cut
    /// off and refused (before the digest could say so, and before it fills a disk).
    pub size: Option<u64>,
}

/// The files of one data set and the base URL they are downloaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The URL the file names are appended to.
    pub base_url: Cow<'static, str>,
    /// The files.
    pub files: Cow<'static, [RemoteFile]>,
}

impl Manifest {
    /// The same files from another base URL (a mirror or a proxy).
    pub fn with_base_url(self, base_url: impl Into<String>) -> Self {
        Manifest {
            base_url: Cow::Owned(base_url.into()),
            ..self
        }
    }

    /// The URL of `file`: the base URL and the file name, joined by one `/`.
    pub fn url(&self, file: &RemoteFile) -> String {
        format!("{}/{}", self.base_url.trim_end_matches('/'), file.name)
    }
}

/// A [`RemoteFile`] with a known md5 and size, and a sha256 still to be pinned.
const fn md5_only(name: &'static str, md5: &'static str, size: u64) -> RemoteFile {
    RemoteFile {
        name: Cow::Borrowed(name),
        md5: Some(Cow::Borrowed(md5)),
        sha256: None,
        size: Some(size),
    }
}

/// The MNIST files (the original yann.lecun.com server refuses downloads now; this is
/// the mirror torchvision uses).
pub const MNIST: Manifest = Manifest {
    base_url: Cow::Borrowed("https://ossci-datasets.s3.amazonaws.com/mnist/"),
    files: Cow::Borrowed(&[
        md5_only(
            "train-images-idx3-ubyte.gz",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            9912422,
        ),
        md5_only(
            "train-labels-idx1-ubyte.gz",
            "d53e105ee54ea40749a09fcbcd1e9432",
            28881,
        ),
        md5_only(
            "t10k-images-idx3-ubyte.gz",
            "9fb629c4189551a2d022fa330f9573f3",
            1648877,
        ),
        md5_only(
            "t10k-labels-idx1-ubyte.gz",
            "ec29112dd5afa0611ce80d1b7f02629c",
            4542,
        ),
    ]),
};

/// The Fashion-MNIST files (served over plain HTTP by their authors; the digests are
/// what makes them trustworthy).
pub const FASHION_MNIST: Manifest = Manifest {
    base_url: Cow::Borrowed("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    files: Cow::Borrowed(&[
        md5_only(
            "train-images-idx3-ubyte.gz",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            26421880,
        ),
        md5_only(
            "train-labels-idx1-ubyte.gz",
            "25c81989df183df01b3e8a0aad5dffbe",
            29515,
        ),
        md5_only(
            "t10k-images-idx3-ubyte.gz",
            "bef4ecab320f06d8554ea6380940ec79",
            4422102,
        ),
        md5_only(
            "t10k-labels-idx1-ubyte.gz",
            "bb300cfdad3c16e7a12a480ee83cd310",
            5148,
        ),
    ]),
};

/// The CIFAR-10 binary version: one archive holding the six batch files.
pub const CIFAR10: Manifest = Manifest {
    base_url: Cow::Borrowed("https://www.cs.toronto.edu/~kriz/"),
    files: Cow::Borrowed(&[md5_only(
        "cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
        170052171,
    )]),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_one_slash() {
        let cifar = &CIFAR10.files[0];
        assert_eq!(
            CIFAR10.url(cifar),
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
        );
        let mirrored = MNIST.with_base_url("http://127.0.0.1:8000/mnist");
        assert_eq!(
            mirrored.url(&mirrored.files[1]),
            "http://127.0.0.1:8000/mnist/train-labels-idx1-ubyte.gz"
        );
    }

    #[test]
    fn real_digests_are_well_formed() {
        for manifest in [MNIST, FASHION_MNIST, CIFAR10] {
            for file in manifest.files.iter() {
                let md5 = file.md5.as_deref().unwrap_or_default();
                assert_eq!(md5.len(), 32, "{}", file.name);
                assert!(
                    md5.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                );
            }
        }
    }
}
