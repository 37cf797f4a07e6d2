//! Where downloaded data sets live.
//!
//! The data folder is `$ELBO_DATA_DIR` if set, else `$XDG_CACHE_HOME/elbo/data`, else
//! `$HOME/.cache/elbo/data`; each data set has its own subfolder named after it
//! (`mnist/`, `fashion-mnist/`, `cifar10/`). Empty and relative values of
//! `XDG_CACHE_HOME` are ignored, as the XDG specification asks.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{DataError, Result};
use crate::kind::DatasetKind;

/// The environment variable that sets the data folder.
pub const DATA_DIR_ENV: &str = "ELBO_DATA_DIR";

/// The folder that holds one subfolder per downloaded data set.
pub fn default_data_dir() -> Result<PathBuf> {
    data_dir_from(|key| std::env::var_os(key))
}

/// The folder of `kind` under [`default_data_dir`].
pub fn dataset_dir(kind: DatasetKind) -> Result<PathBuf> {
    Ok(default_data_dir()?.join(kind.name()))
}

/// [`default_data_dir`] with the environment given as a function (for tests).
fn data_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let non_empty = |key: &str| var(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(DATA_DIR_ENV) {
        return Ok(dir);
    }
    if let Some(cache) = non_empty("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Ok(cache.join("elbo").join("data"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(home.join(".cache").join("elbo").join("data"));
    }
    Err(DataError::Invalid {
        what: "environment",
        expected: format!("{DATA_DIR_ENV}, XDG_CACHE_HOME or HOME to choose a data folder"),
        found: "none of them set".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn precedence_is_elbo_then_xdg_then_home() {
        let all = [
            ("ELBO_DATA_DIR", "/d"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(data_dir_from(env(&all)).unwrap(), PathBuf::from("/d"));
        assert_eq!(
            data_dir_from(env(&all[1..])).unwrap(),
            PathBuf::from("/x/elbo/data")
        );
        assert_eq!(
            data_dir_from(env(&all[2..])).unwrap(),
            PathBuf::from("/h/.cache/elbo/data")
        );
    }

    #[test]
    fn empty_or_relative_values_are_ignored() {
        let vars = [
            ("ELBO_DATA_DIR", ""),
            ("XDG_CACHE_HOME", "rel"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            data_dir_from(env(&vars)).unwrap(),
            PathBuf::from("/h/.cache/elbo/data")
        );
        assert!(data_dir_from(env(&[])).is_err());
    }
}
