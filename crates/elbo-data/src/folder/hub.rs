//! Hugging Face datasets' parquet files as a data set: a file, or a folder of
//! `*.parquet` shards laid out as the Hub's repositories lay them out
//! (`data/train-00000-of-00002.parquet`, `plain_text/test-00000-of-00001.parquet`): a
//! shard whose name starts with `train` is training data, `test` test data, other
//! splits (`validation`, ...) are left out, and shards named after no split are
//! training data. Without a test shard, a seeded share is held out as for a folder.
//!
//! The image column holds `datasets`' `Image` feature, a struct of `bytes` and `path`:
//! found as the first struct column with a binary `bytes` field, or named. The label
//! column is an integer column `label` or `labels` (`datasets`' `ClassLabel`), or
//! named; without one the data is unlabelled. Class names come from the schema's
//! `huggingface` metadata (the `ClassLabel`'s `names`) when present. Rows are read
//! with the `parquet` crate's record reader (snappy-compressed and uncompressed pages,
//! as pyarrow and `datasets` write them); images are decoded as a folder's are.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::pack::{PackInfo, Source, listing_of, load_packed};
use super::{Entry, FolderData, FolderOptions, Scanned, decode_scanned};
use crate::error::{DataError, Result};

/// Which columns hold the images and the labels (`None`: found as the module says).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParquetColumns {
    /// The image column (a struct with a binary `bytes` field).
    pub image: Option<String>,
    /// The label column (integers).
    pub label: Option<String>,
}

fn invalid(expected: impl Into<String>, found: impl Into<String>) -> DataError {
    DataError::Invalid {
        what: "parquet data",
        expected: expected.into(),
        found: found.into(),
    }
}

fn parquet_error(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> DataError + '_ {
    move |e| DataError::Malformed {
        file: path.display().to_string(),
        offset: crate::error::Offset::File(0),
        expected: "a parquet file".into(),
        found: e.to_string(),
    }
}

/// The shards of `path`: (training, test).
fn shards(path: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    if path.is_file() {
        return Ok((vec![path.to_path_buf()], Vec::new()));
    }
    if !path.is_dir() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            hint: "expected a parquet file or a folder of *.parquet shards".into(),
        });
    }
    let mut all = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    collect(path, &mut seen, &mut all)?;
    all.sort();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for shard in all {
        let name = shard
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let split = name.split(['-', '_', '.']).next().unwrap_or_default();
        match split {
            "test" => test.push(shard),
            "validation" | "valid" | "val" | "dev" => {}
            _ => train.push(shard),
        }
    }
    if train.is_empty() {
        return Err(invalid(
            format!("training shards (*.parquet) in {}", path.display()),
            if test.is_empty() {
                "none".to_string()
            } else {
                "only test shards".to_string()
            },
        ));
    }
    Ok((train, test))
}

fn collect(
    dir: &Path,
    seen: &mut std::collections::BTreeSet<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(|e| DataError::io(dir, "resolving", e))?;
    if !seen.insert(real) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, "listing", e))? {
        let path = entry.map_err(|e| DataError::io(dir, "listing", e))?.path();
        if path.is_dir() {
            collect(&path, seen, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The columns of a shard: the image column's name, the label column's (if any) and
/// the class names of its `huggingface` metadata (if any).
fn columns(
    shard: &Path,
    reader: &SerializedFileReader<File>,
    asked: &ParquetColumns,
) -> Result<(String, Option<String>, Vec<String>)> {
    let metadata = reader.metadata().file_metadata();
    let root = metadata.schema_descr().root_schema();
    let fields = root.get_fields();
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    let is_image = |f: &parquet::schema::types::Type| {
        f.is_group()
            && f.get_fields().iter().any(|c| {
                c.name() == "bytes"
                    && !c.is_group()
                    && c.get_physical_type() == parquet::basic::Type::BYTE_ARRAY
            })
    };
    let image = match &asked.image {
        Some(name) => {
            let field = fields.iter().find(|f| f.name() == name).ok_or_else(|| {
                invalid(
                    format!("a column {name:?} in {} (--image-column)", shard.display()),
                    format!("the columns {names:?}"),
                )
            })?;
            if !is_image(field) {
                return Err(invalid(
                    format!(
                        "{name:?} in {} to be an image: a struct of bytes and path",
                        shard.display()
                    ),
                    "another type",
                ));
            }
            name.clone()
        }
        None => fields
            .iter()
            .find(|f| is_image(f))
            .map(|f| f.name().to_string())
            .ok_or_else(|| {
                invalid(
                    format!(
                        "an image column (a struct of bytes and path, as datasets' Image) in \
                         {}, or --image-column",
                        shard.display()
                    ),
                    format!("the columns {names:?}"),
                )
            })?,
    };
    let is_integer = |f: &parquet::schema::types::Type| {
        !f.is_group()
            && matches!(
                f.get_physical_type(),
                parquet::basic::Type::INT32 | parquet::basic::Type::INT64
            )
    };
    let label = match &asked.label {
        Some(name) => {
            let field = fields.iter().find(|f| f.name() == name).ok_or_else(|| {
                invalid(
                    format!("a column {name:?} in {} (--label-column)", shard.display()),
                    format!("the columns {names:?}"),
                )
            })?;
            if !is_integer(field) {
                return Err(invalid(
                    format!("{name:?} in {} to hold integer labels", shard.display()),
                    "another type",
                ));
            }
            Some(name.clone())
        }
        None => fields
            .iter()
            .find(|f| (f.name() == "label" || f.name() == "labels") && is_integer(f))
            .map(|f| f.name().to_string()),
    };
    let classes = label
        .as_ref()
        .and_then(|label| {
            let value = metadata
                .key_value_metadata()?
                .iter()
                .find(|kv| kv.key == "huggingface")?
                .value
                .clone()?;
            let json: serde_json::Value = serde_json::from_str(&value).ok()?;
            let names = json["info"]["features"][label.as_str()]["names"].as_array()?;
            names
                .iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
        })
        .unwrap_or_default();
    Ok((image, label, classes))
}

/// Every row of `shard` as an entry (its image's bytes and label), and the shard's
/// class names.
fn read_rows(shard: &Path, asked: &ParquetColumns) -> Result<(Vec<Entry>, Vec<String>, bool)> {
    let file = File::open(shard).map_err(|e| DataError::io(shard, "opening", e))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_error(shard))?;
    let (image, label, classes) = columns(shard, &reader, asked)?;
    let mut out = Vec::new();
    let rows = reader.get_row_iter(None).map_err(parquet_error(shard))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(parquet_error(shard))?;
        let name = PathBuf::from(format!("{}#row {i}", shard.display()));
        let mut bytes = None;
        let mut value = 0u8;
        for (column, field) in row.get_column_iter() {
            if *column == image {
                if let Field::Group(group) = field {
                    bytes = group.get_column_iter().find_map(|(k, v)| match v {
                        Field::Bytes(b) if k == "bytes" => Some(b.data().to_vec()),
                        _ => None,
                    });
                }
            } else if Some(column) == label.as_ref() {
                let number = match field {
                    Field::Long(v) => *v,
                    Field::Int(v) => i64::from(*v),
                    other => {
                        return Err(invalid(
                            format!("an integer label in {}", name.display()),
                            format!("{other:?}"),
                        ));
                    }
                };
                value = u8::try_from(number).map_err(|_| {
                    invalid(
                        format!("a label from 0 to 255 in {}", name.display()),
                        number.to_string(),
                    )
                })?;
            }
        }
        // A row without bytes is left to the decoder, which names it (or skip-bad).
        out.push(Entry {
            path: name,
            label: value,
            bytes: Some(bytes.unwrap_or_default()),
        });
    }
    Ok((out, classes, label.is_some()))
}

/// Parquet shards as a [`Source`].
struct HubSource {
    root: PathBuf,
    train: Vec<PathBuf>,
    test: Vec<PathBuf>,
    columns: ParquetColumns,
}

impl Source for HubSource {
    fn root(&self) -> &Path {
        &self.root
    }
    fn listing(&self, options: &FolderOptions) -> Result<String> {
        let tag = |split: &str| format!("{split} {:?}", self.columns);
        listing_of(
            self.train
                .iter()
                .map(|s| (s.as_path(), tag("train")))
                .chain(self.test.iter().map(|s| (s.as_path(), tag("test")))),
            options,
        )
    }
    fn decode(
        self: Box<Self>,
        options: &FolderOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<FolderData> {
        let mut names: Vec<String> = Vec::new();
        let mut labelled = false;
        let mut read = |shards: &[PathBuf]| -> Result<Vec<Entry>> {
            let mut out = Vec::new();
            for shard in shards {
                let (rows, classes, has_labels) = read_rows(shard, &self.columns)?;
                if names.is_empty() {
                    names = classes;
                }
                labelled |= has_labels;
                out.extend(rows);
            }
            Ok(out)
        };
        let train = read(&self.train)?;
        let test = if self.test.is_empty() {
            None
        } else {
            Some(read(&self.test)?)
        };
        let top = train
            .iter()
            .chain(test.iter().flatten())
            .map(|e| usize::from(e.label) + 1)
            .max()
            .unwrap_or(0);
        let classes: Vec<OsString> = if !labelled {
            Vec::new()
        } else if names.len() >= top {
            names.into_iter().map(OsString::from).collect()
        } else {
            (0..top).map(|k| OsString::from(k.to_string())).collect()
        };
        decode_scanned(
            Scanned {
                train,
                test,
                classes,
            },
            options,
            progress,
        )
    }
}

fn source(path: &Path, columns: &ParquetColumns) -> Result<HubSource> {
    let (train, test) = shards(path)?;
    let root = std::fs::canonicalize(path).map_err(|e| DataError::io(path, "resolving", e))?;
    Ok(HubSource {
        root,
        train,
        test,
        columns: columns.clone(),
    })
}

/// Reads parquet shards at `path` (see the module's documentation) as a folder of
/// images is read with `options`.
pub fn load_parquet(
    path: &Path,
    columns: &ParquetColumns,
    options: &FolderOptions,
) -> Result<FolderData> {
    super::check_options(options)?;
    Box::new(source(path, columns)?).decode(options, &mut |_, _| {})
}

/// [`load_parquet`] through a pack under `packs`, as [`super::load_folder_packed`].
pub fn load_parquet_packed(
    path: &Path,
    columns: &ParquetColumns,
    options: &FolderOptions,
    packs: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(FolderData, PackInfo)> {
    super::check_options(options)?;
    load_packed(Box::new(source(path, columns)?), options, packs, progress)
}
