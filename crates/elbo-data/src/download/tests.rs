use std::borrow::Cow;
use std::fs;

use super::*;
use crate::checksum::digest_bytes;
use crate::kind::DatasetKind;
use crate::load::{IDX_FILES, load};
use crate::test_server::{Reply, TestServer};
use crate::test_support::{gzip, idx_images, idx_labels};

/// Fast retries for tests: 10 ms, then 20 ms, ...
fn fast(retries: u32) -> DownloadConfig {
    DownloadConfig {
        retries,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(5),
        body_timeout: Some(Duration::from_secs(10)),
        idle_timeout: Duration::from_secs(5),
    }
}

/// A manifest for `files` (name, content) served by `server`, with both digests.
fn manifest_for(server: &TestServer, files: &[(String, Vec<u8>)]) -> Manifest {
    Manifest {
        base_url: Cow::Owned(server.base_url()),
        files: files
            .iter()
            .map(|(name, bytes)| {
                let d = digest_bytes(bytes);
                RemoteFile {
                    name: Cow::Owned(name.clone()),
                    md5: Some(Cow::Owned(d.md5)),
                    sha256: Some(Cow::Owned(d.sha256)),
                    size: None,
                }
            })
            .collect(),
    }
}

/// A tiny MNIST-layout data set: 3 train and 2 test images of 2 x 2, gzip files.
fn mnist_fixture() -> Vec<(String, Vec<u8>)> {
    let contents = [
        idx_images(3, 2, 2, &[9; 12]),
        idx_labels(&[1, 2, 3]),
        idx_images(2, 2, 2, &[8; 8]),
        idx_labels(&[4, 5]),
    ];
    IDX_FILES
        .iter()
        .zip(contents)
        .map(|(stem, raw)| (format!("{stem}.gz"), gzip(&raw)))
        .collect()
}

fn serve_all(server: &TestServer, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        server.script(&format!("/{name}"), vec![Reply::Ok(bytes.clone())]);
    }
}

/// The names in `dir`, sorted (to see that no temporary file is left behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Collects the events' kinds.
fn recorder(log: &mut Vec<String>) -> impl FnMut(DownloadEvent<'_>) + '_ {
    move |event| {
        let kind = match event {
            DownloadEvent::AlreadyPresent { .. } => "present",
            DownloadEvent::Started { .. } => "started",
            DownloadEvent::Progress { .. } => "progress",
            DownloadEvent::Retrying { .. } => "retrying",
            DownloadEvent::Verified { .. } => "verified",
        };
        if log.last().map(String::as_str) != Some(kind) {
            log.push(kind.to_owned());
        }
    }
}

#[test]
fn downloads_verify_and_load_then_are_not_fetched_again() {
    let server = TestServer::start();
    let files = mnist_fixture();
    serve_all(&server, &files);
    let manifest = manifest_for(&server, &files);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("mnist");

    let mut log = Vec::new();
    let fetched = fetch(&manifest, &dir, &fast(0), &mut recorder(&mut log)).unwrap();
    assert_eq!(log[..3], ["started", "progress", "verified"]);
    assert!(
        fetched
            .iter()
            .all(|f| f.outcome == Outcome::Downloaded && f.sha256_pinned)
    );
    let mut names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(listing(&dir), names);
    for (name, bytes) in &files {
        assert_eq!(&fs::read(dir.join(name)).unwrap(), bytes);
    }
    let splits = load(DatasetKind::Mnist, &dir).unwrap();
    assert_eq!(splits.test.labels().to_vec(), vec![4, 5]);

    let again = fetch(&manifest, &dir, &fast(0), &mut |_| {}).unwrap();
    assert!(again.iter().all(|f| f.outcome == Outcome::AlreadyPresent));
    for (name, _) in &files {
        assert_eq!(server.hits(&format!("/{name}")), 1, "{name} fetched twice");
    }
}

#[test]
fn a_damaged_file_in_place_is_replaced() {
    let server = TestServer::start();
    let files = vec![("a.bin".to_owned(), b"the real content".to_vec())];
    serve_all(&server, &files);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.bin"), b"half").unwrap();
    let fetched = fetch(
        &manifest_for(&server, &files),
        dir.path(),
        &fast(0),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(fetched[0].outcome, Outcome::Downloaded);
    assert_eq!(
        fs::read(dir.path().join("a.bin")).unwrap(),
        b"the real content"
    );
}

#[test]
fn not_found_is_final_and_names_url_and_alternatives() {
    let server = TestServer::start();
    let files = vec![("gone.gz".to_owned(), vec![1, 2, 3])];
    server.script("/gone.gz", vec![Reply::Status(404)]);
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(
        &manifest_for(&server, &files),
        dir.path(),
        &fast(3),
        &mut |_| {},
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, DataError::HttpStatus { status: 404, .. }),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}gone.gz", server.base_url())),
        "{text}"
    );
    assert!(
        text.contains("--from") && text.contains("--mirror"),
        "{text}"
    );
    assert_eq!(server.hits("/gone.gz"), 1, "a 404 is not retried");
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn a_truncated_body_leaves_nothing_behind() {
    let server = TestServer::start();
    let body = vec![7u8; 100_000];
    let files = vec![("big.bin".to_owned(), body.clone())];
    server.script("/big.bin", vec![Reply::Truncated { body, sent: 60_000 }]);
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(
        &manifest_for(&server, &files),
        dir.path(),
        &fast(1),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::Download { attempts: 2, .. }),
        "{err}"
    );
    assert_eq!(server.hits("/big.bin"), 2);
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn a_wrong_checksum_deletes_the_file_and_reports_both_digests() {
    let server = TestServer::start();
    let files = vec![("a.bin".to_owned(), b"expected".to_vec())];
    server.script("/a.bin", vec![Reply::Ok(b"tampered".to_vec())]);
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(
        &manifest_for(&server, &files),
        dir.path(),
        &fast(2),
        &mut |_| {},
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            DataError::Checksum {
                algorithm: "md5",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains(&digest_bytes(b"expected").md5), "{text}");
    assert!(text.contains(&digest_bytes(b"tampered").md5), "{text}");
    assert!(text.contains("deleted"), "{text}");
    assert_eq!(
        server.hits("/a.bin"),
        1,
        "a checksum mismatch is not retried"
    );
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn dropped_connections_and_server_errors_are_retried_until_success() {
    let server = TestServer::start();
    let files = vec![("a.bin".to_owned(), b"payload".to_vec())];
    server.script(
        "/a.bin",
        vec![
            Reply::Drop,
            Reply::Status(503),
            Reply::Ok(b"payload".to_vec()),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut retries = Vec::new();
    let fetched = fetch(
        &manifest_for(&server, &files),
        dir.path(),
        &fast(3),
        &mut |e| {
            if let DownloadEvent::Retrying {
                attempt,
                delay,
                error,
                ..
            } = e
            {
                retries.push((attempt, delay, error.to_owned()));
            }
        },
    )
    .unwrap();
    assert_eq!(fetched[0].outcome, Outcome::Downloaded);
    assert_eq!(server.hits("/a.bin"), 3);
    assert_eq!(retries.len(), 2);
    assert_eq!((retries[0].0, retries[0].1), (1, Duration::from_millis(10)));
    assert_eq!((retries[1].0, retries[1].1), (2, Duration::from_millis(20)));
    assert!(retries[1].2.contains("503"), "{}", retries[1].2);
}

#[test]
fn retries_are_bounded() {
    let server = TestServer::start();
    let files = vec![("a.bin".to_owned(), b"x".to_vec())];
    server.script("/a.bin", vec![Reply::Drop]);
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(
        &manifest_for(&server, &files),
        dir.path(),
        &fast(2),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::Download { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(server.hits("/a.bin"), 3);
}

#[test]
fn an_unreachable_host_names_the_url_and_the_alternatives() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let manifest = Manifest {
        base_url: Cow::Owned(format!("http://127.0.0.1:{port}/mnist/")),
        ..crate::manifest::MNIST
    };
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(&manifest, dir.path(), &fast(1), &mut |_| {})
        .unwrap_err()
        .to_string();
    let url = format!("http://127.0.0.1:{port}/mnist/train-images-idx3-ubyte.gz");
    assert!(err.contains(&url), "{err}");
    assert!(
        err.contains("--from PATH") && err.contains("--mirror URL"),
        "{err}"
    );
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn md5_only_manifests_verify_and_report_the_sha256_to_pin() {
    let server = TestServer::start();
    let body = b"unpinned".to_vec();
    server.script("/u.bin", vec![Reply::Ok(body.clone())]);
    let manifest = Manifest {
        base_url: Cow::Owned(server.base_url()),
        files: Cow::Owned(vec![RemoteFile {
            name: Cow::Borrowed("u.bin"),
            md5: Some(Cow::Owned(digest_bytes(&body).md5)),
            sha256: None,
            size: None,
        }]),
    };
    let dir = tempfile::tempdir().unwrap();
    let fetched = fetch(&manifest, dir.path(), &fast(0), &mut |_| {}).unwrap();
    assert!(!fetched[0].sha256_pinned);
    assert_eq!(fetched[0].digests.sha256, digest_bytes(&body).sha256);
}

/// A server that announces more bytes than the manifest's size is refused at once
/// (a stalled server announcing 10^12 bytes no longer hangs the download), and no
/// staged file is left behind.
#[test]
fn a_body_larger_than_the_known_size_is_refused_and_nothing_kept() {
    let server = TestServer::start();
    let body = vec![7u8; 4096];
    // Announces 4096 bytes, sends 10 and stalls until the connection closes.
    server.script(
        "/big.bin",
        vec![Reply::Truncated {
            body: body.clone(),
            sent: 10,
        }],
    );
    let d = digest_bytes(&body[..100]);
    let manifest = Manifest {
        base_url: Cow::Owned(server.base_url()),
        files: Cow::Owned(vec![RemoteFile {
            name: Cow::Borrowed("big.bin"),
            md5: Some(Cow::Owned(d.md5)),
            sha256: None,
            size: Some(100),
        }]),
    };
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(&manifest, dir.path(), &fast(3), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sends more than the 100 bytes big.bin has (it announced or sent 4096)"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A staged file of an interrupted download (its process gone) is removed when the
/// file is downloaded again.
#[test]
fn a_stale_part_file_is_removed_by_the_next_download() {
    let server = TestServer::start();
    let body = b"fresh".to_vec();
    server.script("/f.bin", vec![Reply::Ok(body.clone())]);
    let manifest = manifest_for(&server, &[("f.bin".to_string(), body)]);
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".f.bin.0.abc123.part");
    std::fs::write(&stale, vec![0u8; 1000]).unwrap();
    fetch(&manifest, dir.path(), &fast(0), &mut |_| {}).unwrap();
    assert!(!stale.exists());
    assert!(dir.path().join("f.bin").exists());
}

/// A server that stops sending in the middle of a body is given up on after the idle
/// timeout (here 0.2 s), not when it closes the connection (3 s later), and nothing of the
/// attempt is kept under the file's name.
#[test]
fn a_stalled_body_times_out_after_the_idle_timeout() {
    let server = TestServer::start();
    let body = vec![3u8; 1000];
    server.script(
        "/slow.bin",
        vec![Reply::Stall {
            body: body.clone(),
            sent: 10,
            hold: Duration::from_secs(3),
        }],
    );
    let manifest = manifest_for(&server, &[("slow.bin".to_string(), body)]);
    let dir = tempfile::tempdir().unwrap();
    let config = DownloadConfig {
        idle_timeout: Duration::from_millis(200),
        ..fast(0)
    };
    let started = std::time::Instant::now();
    let err = fetch(&manifest, dir.path(), &config, &mut |_| {})
        .unwrap_err()
        .to_string();
    let waited = started.elapsed();
    assert!(
        err.contains("sent nothing for 0.2 s (after 10 bytes)"),
        "{err}"
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    assert!(!dir.path().join("slow.bin").exists());
}
