//! Downloading a data set's files over HTTP(S), verified, with retries.
//!
//! For each file of the manifest: if the destination folder already holds it with
//! the right digests, nothing is downloaded. Otherwise it is streamed into a staged
//! file (see the `staging` module) while being hashed, then checked (md5, and sha256
//! when the manifest has one) and renamed into place. Connection failures, dropped
//! connections, bodies cut short and server errors (5xx, 408, 429) are retried a
//! bounded number of times with a doubling delay; other HTTP errors (404, ...) and
//! checksum mismatches are not. Proxies are taken from the usual environment
//! variables (`HTTPS_PROXY`, `ALL_PROXY`, ...) by the HTTP client.

use std::path::Path;
use std::time::Duration;

use crate::checksum::{digest_file, verify};
use crate::error::{DataError, Result};
use crate::manifest::{Manifest, RemoteFile};
use crate::progress::{DownloadEvent, FetchedFile, Outcome};
use crate::staging::{CopyError, Staged};

/// Retries and time limits of [`fetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadConfig {
    /// Attempts after the first one, for failures worth retrying.
    pub retries: u32,
    /// The wait before the first retry; it doubles at each further retry.
    pub backoff: Duration,
    /// The limit for connecting, and for the response headers to arrive.
    pub timeout: Duration,
    /// The limit for the whole body of one file, if any.
    pub body_timeout: Option<Duration>,
    /// The longest wait for the next bytes of a body: a server that sends nothing for
    /// this long is given up on (and the attempt retried), however long the body.
    pub idle_timeout: Duration,
}

impl Default for DownloadConfig {
    /// 3 retries from 1 s, 30 s to connect and get headers, no limit on a whole body, 30
    /// s without data.
    fn default() -> Self {
        DownloadConfig {
            retries: 3,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
            body_timeout: None,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Downloads the files of `manifest` into `dir` (created if needed), skipping those
/// already there and verified. Reports progress to `observer`.
pub fn fetch(
    manifest: &Manifest,
    dir: &Path,
    config: &DownloadConfig,
    observer: &mut dyn FnMut(DownloadEvent<'_>),
) -> Result<Vec<FetchedFile>> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, "creating", e))?;
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(config.timeout))
        .timeout_recv_response(Some(config.timeout))
        .timeout_recv_body(config.body_timeout)
        .build()
        .new_agent();
    let mut fetched = Vec::with_capacity(manifest.files.len());
    for file in manifest.files.iter() {
        let dest = dir.join(file.name.as_ref());
        let outcome = match already_present(file, &dest)? {
            Some(digests) => {
                observer(DownloadEvent::AlreadyPresent {
                    file: &file.name,
                    path: &dest,
                });
                (digests, Outcome::AlreadyPresent)
            }
            None => {
                crate::staging::remove_stale(dir, &file.name);
                let url = manifest.url(file);
                let staged = download_with_retries(&agent, &url, dir, file, config, observer)?;
                let digests = staged.commit(file, &dest, "the downloaded file was deleted")?;
                observer(DownloadEvent::Verified {
                    file: &file.name,
                    path: &dest,
                    digests: &digests,
                });
                (digests, Outcome::Downloaded)
            }
        };
        fetched.push(FetchedFile {
            name: file.name.to_string(),
            path: dest,
            digests: outcome.0,
            sha256_pinned: file.sha256.is_some(),
            outcome: outcome.1,
        });
    }
    Ok(fetched)
}

/// The digests of `dest` if it exists and matches `file`; `None` if it must be fetched
/// (absent, or with other digests: it will be replaced).
pub(crate) fn already_present(file: &RemoteFile, dest: &Path) -> Result<Option<crate::Digests>> {
    if !dest.is_file() {
        return Ok(None);
    }
    let digests = digest_file(dest)?;
    Ok(verify(&file.name, file, &digests, "")
        .ok()
        .map(|()| digests))
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt.
    Retry(String),
    /// Final.
    Fatal(DataError),
}

fn download_with_retries(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    file: &RemoteFile,
    config: &DownloadConfig,
    observer: &mut dyn FnMut(DownloadEvent<'_>),
) -> Result<Staged> {
    let attempts = config.retries.saturating_add(1);
    let mut delay = config.backoff;
    let mut attempt = 1;
    loop {
        match download_once(agent, url, dir, file, config.idle_timeout, observer) {
            Ok(staged) => return Ok(staged),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(error)) if attempt >= attempts => {
                return Err(DataError::Download {
                    url: url.to_owned(),
                    attempts,
                    error,
                });
            }
            Err(Failure::Retry(error)) => {
                observer(DownloadEvent::Retrying {
                    file: &file.name,
                    attempt,
                    delay,
                    error: &error,
                });
                std::thread::sleep(delay);
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
        }
    }
}

/// What the thread that reads a body tells the one that waits for it.
enum Transfer {
    /// Bytes received so far.
    Received(u64),
    /// The body ended (or failed), after so many bytes read from the server.
    Done(Box<std::result::Result<(Staged, u64), CopyError>>, u64),
}

fn download_once(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    file: &RemoteFile,
    idle_timeout: Duration,
    observer: &mut dyn FnMut(DownloadEvent<'_>),
) -> std::result::Result<Staged, Failure> {
    // `identity`: the digests are of the file as stored, not of a re-encoding.
    let response = agent
        .get(url)
        .header("Accept-Encoding", "identity")
        .call()
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(if matches!(status, 408 | 425 | 429 | 500..=599) {
            Failure::Retry(format!("the server answered HTTP {status}"))
        } else {
            Failure::Fatal(DataError::HttpStatus {
                url: url.to_owned(),
                status,
            })
        });
    }
    let total = response.body().content_length();
    let too_large = |found: u64| {
        Failure::Fatal(DataError::TooLarge {
            url: url.to_owned(),
            name: file.name.to_string(),
            expected: file.size.unwrap_or(0),
            found,
        })
    };
    if let (Some(size), Some(total)) = (file.size, total)
        && total > size
    {
        return Err(too_large(total));
    }
    observer(DownloadEvent::Started {
        file: &file.name,
        source: url,
        total,
    });
    let mut staged = Staged::create(dir, &file.name).map_err(Failure::Fatal)?;
    let mut reader = Capped {
        inner: response.into_body().into_reader(),
        limit: file.size.unwrap_or(u64::MAX),
        read: 0,
    };
    // The body is read on a thread of its own so that a server that stops sending can be
    // given up on: a blocking read has no timeout between bytes. A thread given up on
    // keeps its staged file until its read ends (or the process does; the next
    // download of the file removes what is left).
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let progress = sender.clone();
        let copied = staged.copy_from(&mut reader, &mut |received| {
            let _ = progress.send(Transfer::Received(received));
        });
        let copied = Box::new(copied.map(|n| (staged, n)));
        let _ = sender.send(Transfer::Done(copied, reader.read));
    });
    let name: &str = &file.name;
    let mut last = 0;
    let (staged, received) = loop {
        match receiver.recv_timeout(idle_timeout) {
            Ok(Transfer::Received(received)) => {
                last = received;
                observer(DownloadEvent::Progress {
                    file: name,
                    received,
                });
            }
            Ok(Transfer::Done(done, read)) => match *done {
                Ok(done) => break done,
                Err(e) => {
                    return Err(match e {
                        CopyError::Read(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                            too_large(read)
                        }
                        CopyError::Read(e) => {
                            Failure::Retry(format!("the transfer broke off: {e}"))
                        }
                        CopyError::Local(e) => Failure::Fatal(e),
                    });
                }
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(Failure::Retry(format!(
                    "the server sent nothing for {:.1} s (after {last} bytes)",
                    idle_timeout.as_secs_f64()
                )));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Failure::Retry("the transfer stopped without a word".into()));
            }
        }
    };
    match total {
        Some(total) if received != total => Err(Failure::Retry(format!(
            "the body ended after {received} of {total} bytes"
        ))),
        _ => Ok(staged),
    }
}

/// A body reader that fails (`FileTooLarge`) as soon as more than `limit` bytes came.
struct Capped<R> {
    inner: R,
    limit: u64,
    read: u64,
}

impl<R: std::io::Read> std::io::Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("more than {} bytes", self.limit),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
