//! TensorBoard event files, written and read, in pure Rust: the scalars, images and
//! text of a run as TensorBoard (and anything that reads its files) loads them.
//!
//! An event file is a sequence of records, each `length (u64 LE) | masked CRC32C of the
//! length | data | masked CRC32C of the data`, whose data is an [`proto::Event`]
//! protocol buffer (encoded with prost). Its first event names the format
//! (`brain.Event:2`). [`EventWriter`] appends each event with one write, so a writer
//! killed mid-record leaves at most a cut last record, which [`read_events`] (as
//! TensorBoard's own reader) takes as the end of the file.
//!
//! ```
//! use elbo_board::{EventWriter, read_events, proto::{Kind, What}};
//!
//! let dir = std::env::temp_dir().join(format!("elbo-board-doc-{}", std::process::id()));
//! let mut writer = EventWriter::create(&dir)?;
//! writer.scalars(10, &[("train/loss".to_string(), 0.5)])?;
//! let events = read_events(writer.path())?;
//! assert!(matches!(&events[0].what, Some(What::FileVersion(v)) if v == "brain.Event:2"));
//! let Some(What::Summary(summary)) = &events[1].what else { panic!("a summary") };
//! assert_eq!((events[1].step, summary.value[0].tag.as_str()), (10, "train/loss"));
//! assert_eq!(summary.value[0].kind, Some(Kind::SimpleValue(0.5)));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), elbo_board::BoardError>(())
//! ```
#![warn(missing_docs)]

pub mod proto;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use proto::{Event, Image, Kind, PluginData, SessionLog, Summary, SummaryMetadata, Value, What};

/// What went wrong with an event file.
#[derive(Debug)]
pub enum BoardError {
    /// The file or its folder could not be created, written or read.
    Io {
        /// What was being done (`create`, `write`, `read`).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A record that is not what an event file holds.
    Record {
        /// The file.
        path: PathBuf,
        /// Where the record starts, in bytes.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// An image that is not a PNG file.
    NotPng {
        /// The tag it was for.
        tag: String,
    },
}

impl fmt::Display for BoardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoardError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            BoardError::Record {
                path,
                offset,
                detail,
            } => write!(
                f,
                "{} at byte {offset}: {detail} (expected a TensorBoard event record)",
                path.display()
            ),
            BoardError::NotPng { tag } => {
                write!(
                    f,
                    "the image for {tag} is not a PNG file (expected PNG bytes)"
                )
            }
        }
    }
}

impl std::error::Error for BoardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BoardError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The result type of elbo-board.
pub type Result<T, E = BoardError> = std::result::Result<T, E>;

/// The format an event file's first event names.
pub const FILE_VERSION: &str = "brain.Event:2";

/// TensorBoard's masked CRC32C (Castagnoli) of `data`.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record's bytes: the length, its masked CRC, `data`, and the data's masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name, as event file names carry it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "localhost".to_string())
}

/// An event file being written: a new one per process start, as TensorBoard expects
/// (it reads every `*tfevents*` file of a folder, in name order, as one run).
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (created if needed), named as TensorBoard's
    /// writers name theirs (`events.out.tfevents.<seconds>.<host>.<pid>.<n>`), and
    /// writes its first event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(dir).map_err(|source| BoardError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(format!(
            "events.out.tfevents.{}.{}.{}.{}",
            now() as u64,
            host_name(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| BoardError::Io {
                action: "create",
                path: path.clone(),
                source,
            })?;
        let mut writer = EventWriter { file, path };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.to_string())),
        })?;
        Ok(writer)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` as one record, in one write.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        self.file
            .write_all(&record(&event.encode_to_vec()))
            .map_err(|source| BoardError::Io {
                action: "write",
                path: self.path.clone(),
                source,
            })
    }

    fn summary(&mut self, step: u64, value: Vec<Value>) -> Result<()> {
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        })
    }

    /// Marks a session's start at `step`: TensorBoard then drops the events that earlier
    /// files hold at `step` and after (a run resumed from the checkpoint of step `s`
    /// starts its session at `s + 1`: what the interrupted run logged after its
    /// checkpoint is not part of the run any more).
    pub fn start_session(&mut self, step: u64) -> Result<()> {
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::SessionLog(SessionLog {
                status: proto::SESSION_START,
            })),
        })
    }

    /// Scalars at `step`, one event, each under its tag.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| Value {
                tag: tag.clone(),
                metadata: None,
                kind: Some(Kind::SimpleValue(*v as f32)),
            })
            .collect();
        self.summary(step, value)
    }

    /// A PNG image at `step` under `tag` (its size and colours read from its header).
    pub fn png(&mut self, step: u64, tag: &str, png: &[u8]) -> Result<()> {
        let not_png = || BoardError::NotPng {
            tag: tag.to_string(),
        };
        const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
        if png.len() < 26 || png[..8] != SIGNATURE || &png[12..16] != b"IHDR" {
            return Err(not_png());
        }
        let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
        let colorspace = match png[25] {
            0 => 1,     // grey
            4 => 2,     // grey and alpha
            2 | 3 => 3, // RGB, palette
            6 => 4,     // RGBA
            _ => return Err(not_png()),
        };
        let image = Image {
            height: be(20) as i32,
            width: be(16) as i32,
            colorspace,
            encoded_image_string: png.to_vec(),
        };
        self.summary(
            step,
            vec![Value {
                tag: tag.to_string(),
                metadata: None,
                kind: Some(Kind::Image(image)),
            }],
        )
    }

    /// Text (Markdown, as TensorBoard's text plugin renders it) at `step` under `tag`.
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        let tensor = proto::TensorProto {
            dtype: proto::DT_STRING,
            tensor_shape: Some(proto::TensorShape {
                dim: vec![proto::Dim { size: 1 }],
            }),
            string_val: vec![text.as_bytes().to_vec()],
        };
        self.summary(
            step,
            vec![Value {
                tag: tag.to_string(),
                metadata: Some(SummaryMetadata {
                    plugin_data: Some(PluginData {
                        plugin_name: "text".to_string(),
                    }),
                }),
                kind: Some(Kind::Tensor(tensor)),
            }],
        )
    }
}

/// The events of the file at `path`, checking both CRCs of every record. A cut last
/// record (a writer killed during it) ends the list, as in TensorBoard's reader; a
/// damaged record is an error naming its offset.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|source| BoardError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let mut events = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = |detail: String| BoardError::Record {
            path: path.to_path_buf(),
            offset: at as u64,
            detail,
        };
        let Some(header) = bytes.get(at..at + 12) else {
            break; // cut short
        };
        let length_bytes = &header[..8];
        let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if masked_crc(length_bytes) != crc {
            return Err(bad("the length's CRC does not match".to_string()));
        }
        let length = u64::from_le_bytes(length_bytes.try_into().unwrap_or_default());
        let Some(end) = usize::try_from(length)
            .ok()
            .and_then(|l| (at + 12).checked_add(l))
        else {
            return Err(bad(format!("a length of {length} bytes")));
        };
        let (Some(data), Some(tail)) = (bytes.get(at + 12..end), bytes.get(end..end + 4)) else {
            break; // cut short
        };
        if masked_crc(data) != u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) {
            return Err(bad("the data's CRC does not match".to_string()));
        }
        events.push(Event::decode(data).map_err(|e| bad(format!("not an Event: {e}")))?);
        at = end + 4;
    }
    Ok(events)
}

/// The event files in `dir` (`*tfevents*`), in name order (the order TensorBoard reads
/// them in); none when `dir` does not exist.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("tfevents"))
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests;
