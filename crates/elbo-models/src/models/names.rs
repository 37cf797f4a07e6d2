//! The names users type for the models' options (presets, objectives, schedules...),
//! parsed and printed in one place: each option is an enum whose serde name
//! (kebab-case) is its name on the command line, in configurations and in checkpoints.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Parses `text` as the option `what` (e.g. `objective`), listing the accepted names
/// when it is none of them.
pub fn parse<T: DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| {
        // serde says "unknown variant `x`, expected one of `a`, `b`".
        let expected = e
            .to_string()
            .split_once("expected ")
            .map(|(_, rest)| rest.replace('`', "").replace(" at line 0 column 0", ""))
            .unwrap_or_default();
        Error::Config {
            detail: format!("unknown {what} {text:?}: expected {expected}"),
        }
    })
}

/// The name of an option value.
pub fn name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        other => format!("{other:?}"),
    }
}

/// `FromStr` and `Display` through [`parse`] and [`name`] for option enums.
macro_rules! named_option {
    ($($t:ty => $what:literal),* $(,)?) => {
        $(
            impl std::str::FromStr for $t {
                type Err = $crate::error::Error;
                fn from_str(text: &str) -> $crate::error::Result<Self> {
                    $crate::models::names::parse($what, text)
                }
            }
            impl std::fmt::Display for $t {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(&$crate::models::names::name(self))
                }
            }
        )*
    };
}
pub(crate) use named_option;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Colour {
        Red,
        DeepBlue,
    }

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_choices() {
        let _generator = crate::testing::generator_lock();
        assert_eq!(
            parse::<Colour>("colour", "deep-blue").unwrap(),
            Colour::DeepBlue
        );
        assert_eq!(name(&Colour::Red), "red");
        let err = parse::<Colour>("colour", "green").unwrap_err().to_string();
        assert!(
            err.contains("unknown colour \"green\": expected red or deep-blue"),
            "{err}"
        );
    }
}
