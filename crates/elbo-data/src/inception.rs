//! The FID Inception network's weights: pytorch-fid's port of the 2015-12-05 TensorFlow
//! Inception graph, fetched verified from their usual public address and converted once
//! to safetensors, which elbo-models loads.
//!
//! The file's name carries the first 8 hex digits of its sha256 (torch.hub's convention);
//! the whole digest and the size are pinned here. The conversion keeps every tensor of
//! the file, under its own name (what the network does not use, its 1008-way `fc` and
//! BatchNorm's `num_batches_tracked`, is left out by the loader, by name).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::manifest::{Manifest, RemoteFile};
use crate::progress::{DownloadEvent, FetchedFile};
use crate::pth::{self, Dtype, PthTensor};
use crate::{DownloadConfig, fetch, import};

/// The weights file as pytorch-fid publishes it (the GitHub release `fid_weights`).
pub const FID_INCEPTION: Manifest = Manifest {
    base_url: Cow::Borrowed(
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/",
    ),
    files: Cow::Borrowed(&[RemoteFile {
        name: Cow::Borrowed("pt_inception-2015-12-05-6726825d.pth"),
        md5: None,
        sha256: Some(Cow::Borrowed(
            "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        )),
        size: Some(95_628_359),
    }]),
};

/// The folder of the data folder that holds the weights.
pub const INCEPTION_FOLDER: &str = "inception";

/// The converted weights' file name, in [`INCEPTION_FOLDER`].
pub const INCEPTION_SAFETENSORS: &str = "pt_inception-2015-12-05-6726825d.safetensors";

/// Where the converted weights live under the data folder `data_dir`.
pub fn inception_weights_path(data_dir: &Path) -> PathBuf {
    data_dir.join(INCEPTION_FOLDER).join(INCEPTION_SAFETENSORS)
}

/// Downloads (or, with `from`, imports) the weights of `manifest` (normally
/// [`FID_INCEPTION`]) into `<data_dir>/inception/`, verified, and converts them to
/// safetensors beside them (atomically; skipped when the conversion is already there and
/// newer). Returns the downloaded files and the converted file's path.
pub fn fetch_inception(
    manifest: &Manifest,
    data_dir: &Path,
    from: Option<&Path>,
    config: &DownloadConfig,
    observer: &mut dyn FnMut(DownloadEvent<'_>),
) -> Result<(Vec<FetchedFile>, PathBuf)> {
    let folder = data_dir.join(INCEPTION_FOLDER);
    let fetched = match from {
        Some(from) => import(manifest, from, &folder, observer)?,
        None => fetch(manifest, &folder, config, observer)?,
    };
    let source = fetched
        .first()
        .map(|f| f.path.clone())
        .ok_or_else(|| DataError::Missing {
            path: folder.clone(),
            hint: "the manifest names no weights file".into(),
        })?;
    let out = folder.join(INCEPTION_SAFETENSORS);
    convert_to_safetensors(&source, &out)?;
    Ok((fetched, out))
}

impl safetensors::View for &PthTensor {
    fn dtype(&self) -> safetensors::Dtype {
        match self.dtype {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F64 => safetensors::Dtype::F64,
            Dtype::F16 => safetensors::Dtype::F16,
            Dtype::BF16 => safetensors::Dtype::BF16,
            Dtype::I64 => safetensors::Dtype::I64,
            Dtype::I32 => safetensors::Dtype::I32,
            Dtype::I16 => safetensors::Dtype::I16,
            Dtype::I8 => safetensors::Dtype::I8,
            Dtype::U8 => safetensors::Dtype::U8,
            Dtype::Bool => safetensors::Dtype::BOOL,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Converts the state dict in the `torch.save` file `pth` to the safetensors file `out`,
/// every tensor under its own name, written to a temporary name and renamed into place.
/// Returns the number of tensors.
pub fn convert_to_safetensors(pth: &Path, out: &Path) -> Result<usize> {
    let tensors = pth::read_state_dict(pth)?;
    let mut metadata = HashMap::new();
    metadata.insert(
        "source".to_string(),
        pth.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let views: Vec<(&str, &PthTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| DataError::Malformed {
            file: pth.display().to_string(),
            offset: crate::Offset::File(0),
            expected: "tensors safetensors can hold".into(),
            found: e.to_string(),
        })?;
    crate::staging::write_whole(out, &bytes)?;
    Ok(tensors.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::digest_bytes;
    use crate::test_server::{Reply, TestServer};
    use std::time::Duration;

    fn fast() -> DownloadConfig {
        DownloadConfig {
            retries: 0,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            body_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(5),
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pth")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_real_manifest_pins_the_published_file() {
        let file = &FID_INCEPTION.files[0];
        let sha = file.sha256.as_deref().unwrap();
        // torch.hub's convention: the name carries the digest's first 8 hex digits.
        assert!(file.name.contains(&sha[..8]));
        assert_eq!(sha.len(), 64);
        assert_eq!(file.size, Some(95_628_359));
        assert_eq!(
            FID_INCEPTION.url(file),
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/\
             pt_inception-2015-12-05-6726825d.pth"
        );
    }

    #[test]
    fn weights_fetched_from_a_server_are_verified_and_converted() {
        let body = fixture("state-legacy.pth");
        let server = TestServer::start();
        server.script("/w.pth", vec![Reply::Ok(body.clone())]);
        let d = digest_bytes(&body);
        let manifest = Manifest {
            base_url: Cow::Owned(server.base_url()),
            files: Cow::Owned(vec![RemoteFile {
                name: Cow::Borrowed("w.pth"),
                md5: None,
                sha256: Some(Cow::Owned(d.sha256)),
                size: Some(body.len() as u64),
            }]),
        };
        let dir = tempfile::tempdir().unwrap();
        let (fetched, out) =
            fetch_inception(&manifest, dir.path(), None, &fast(), &mut |_| {}).unwrap();
        assert_eq!(fetched.len(), 1);
        assert_eq!(out, inception_weights_path(dir.path()));
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let a = st.tensor("a.weight").unwrap();
        assert_eq!(a.shape(), [2, 3]);
        let values: Vec<f32> = a
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
        // No temporary file is left beside it.
        let names: Vec<String> = std::fs::read_dir(dir.path().join(INCEPTION_FOLDER))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".part")), "{names:?}");
    }

    #[test]
    fn a_file_that_is_not_the_published_one_is_refused_and_not_kept() {
        let body = fixture("state-zip.pth");
        let server = TestServer::start();
        let real = &FID_INCEPTION.files[0];
        server.script(&format!("/{}", real.name), vec![Reply::Ok(body.clone())]);
        let manifest = FID_INCEPTION.with_base_url(server.base_url());
        // Its size differs from the real file's: the size check or the digest refuses it.
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_inception(&manifest, dir.path(), None, &fast(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("95628359") || err.contains(real.sha256.as_deref().unwrap()),
            "{err}"
        );
        assert!(
            !dir.path()
                .join(INCEPTION_FOLDER)
                .join(real.name.as_ref())
                .exists()
        );
        assert!(!inception_weights_path(dir.path()).exists());
        // The same without a size: the sha256 says so.
        let mut unsized_manifest = manifest.clone();
        unsized_manifest.files.to_mut()[0].size = None;
        server.script(&format!("/{}", real.name), vec![Reply::Ok(body)]);
        let err = fetch_inception(&unsized_manifest, dir.path(), None, &fast(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sha256 checksum mismatch: expected 6726825d0af5f729"),
            "{err}"
        );
    }
}
