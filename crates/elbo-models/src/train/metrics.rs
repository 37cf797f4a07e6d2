//! The metrics of a run: `metrics.jsonl` (one JSON object per logged step and per
//! epoch, each line written whole), and the training curves drawn from it
//! (`curves.png`, each reported value against the step, train and test together).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use elbo_plot::{Figure, Panel, Series, Style};
use serde_json::Value;

use super::checkpoint;
use crate::error::{Error, Result};

/// `metrics.jsonl`, appended line by line (each line written whole).
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
    board: Option<super::board::Board>,
}

impl MetricsLog {
    /// Opens (creating) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<MetricsLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::file("create", parent, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::file("open", path, e))?;
        Ok(MetricsLog {
            file,
            path: path.to_path_buf(),
            board: None,
        })
    }

    /// The log that also writes each line's scalars (and the epochs' pictures) to the
    /// run's TensorBoard event file `board`.
    pub fn with_board(self, board: super::board::Board) -> MetricsLog {
        MetricsLog {
            board: Some(board),
            ..self
        }
    }

    /// The run's TensorBoard event file, if it keeps one.
    pub fn board(&mut self) -> Option<&mut super::board::Board> {
        self.board.as_mut()
    }

    /// Appends one line.
    pub fn write(&mut self, value: &Value) -> Result<()> {
        let mut line = value.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::file("append to", &self.path, e))?;
        match &mut self.board {
            Some(board) => board.line(value),
            None => Ok(()),
        }
    }
}

/// Refuses a metrics log (`text`, read from `path`) with a line that is not a JSON
/// object, other than a last line cut short (without its newline: a kill while it was
/// written). Such a line was edited or damaged; dropping it would lose it unseen.
pub fn check_lines(path: &Path, text: &str) -> Result<()> {
    let complete = text
        .strip_suffix('\n')
        .unwrap_or_else(|| text.rsplit_once('\n').map_or("", |(whole, _)| whole));
    let bad: Vec<String> = complete
        .lines()
        .enumerate()
        .filter(|(_, line)| serde_json::from_str::<Value>(line).map_or(true, |v| !v.is_object()))
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::Config {
        detail: format!(
            "{} line{} {} {} not a JSON object: expected one per line (only a last line cut \
             short by a kill may be incomplete), so the file was edited or damaged; fix or \
             remove {}",
            path.display(),
            if bad.len() > 1 { "s" } else { "" },
            bad.join(", "),
            if bad.len() > 1 { "are" } else { "is" },
            if bad.len() > 1 { "them" } else { "it" },
        ),
    })
}

/// Drops the metrics lines after `step` (from a run that went on past its last
/// checkpoint), rewriting the file atomically; refuses a damaged log
/// ([`check_lines`]).
pub fn truncate(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    check_lines(path, &text)?;
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    checkpoint::write_atomically(path, |temp| Ok(std::fs::write(temp, kept)?))
}

/// Keys of a step line that are bookkeeping, not curves.
const NOT_CURVES: [&str; 3] = ["kind", "step", "epoch"];
/// Keys drawn after the reported terms, in this order.
const LAST: [&str; 4] = ["lr", "grad_norm", "kl_weight", "skipped_updates"];

/// The training curves of the metrics log `text`: one panel per value a step line
/// reports (the loss first, the learning rate and other settings last), each with the
/// train values against the step, and the epoch lines' `test_<name>` values in the panel
/// `<name>` as a second series (a panel of its own when no step reports `<name>`).
/// Lines that do not parse are skipped (a log cut short by a kill ends in one).
pub fn curves(text: &str, title: &str) -> Figure {
    let mut train: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut test: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut test_order: Vec<String> = Vec::new();
    for line in text.lines() {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(step) = fields.get("step").and_then(Value::as_f64) else {
            continue;
        };
        let epoch_line = fields.get("kind").and_then(Value::as_str) == Some("epoch");
        for (key, value) in &fields {
            let Some(y) = value.as_f64() else { continue };
            if NOT_CURVES.contains(&key.as_str()) {
                continue;
            }
            if epoch_line {
                let name = key.strip_prefix("test_").unwrap_or(key).to_string();
                if !test.contains_key(&name) {
                    test_order.push(name.clone());
                }
                test.entry(name).or_default().push((step, y));
            } else {
                match train.iter_mut().find(|(k, _)| k == key) {
                    Some((_, points)) => points.push((step, y)),
                    None => train.push((key.clone(), vec![(step, y)])),
                }
            }
        }
    }
    let rank = |key: &str| match key {
        "loss" => 0,
        k => LAST.iter().position(|l| *l == k).map_or(1, |p| 2 + p),
    };
    train.sort_by_key(|(key, _)| rank(key));
    let mut panels: Vec<Panel> = train
        .into_iter()
        .map(|(key, points)| {
            let mut series = vec![Series {
                name: "train".into(),
                points,
                style: Style::Line,
            }];
            if let Some(points) = test.remove(&key) {
                series.push(Series {
                    name: "test".into(),
                    points,
                    style: Style::LineAndDots,
                });
            }
            Panel {
                title: key,
                x_label: "step".into(),
                series,
            }
        })
        .collect();
    for name in test_order {
        if let Some(points) = test.remove(&name) {
            panels.push(Panel {
                title: name,
                x_label: "step".into(),
                series: vec![Series {
                    name: "test".into(),
                    points,
                    style: Style::LineAndDots,
                }],
            });
        }
    }
    Figure {
        title: title.to_string(),
        panels,
    }
}

/// Draws the curves of the metrics log `metrics` into the PNG `out` (written whole or
/// not at all); `false`, writing nothing, when no line has a step and a value to plot.
pub fn write_curves(metrics: &Path, out: &Path, title: &str) -> Result<bool> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::file("read", metrics, e))?;
    let figure = curves(&text, title);
    if figure.panels.is_empty() {
        return Ok(false);
    }
    elbo_plot::write(out, &figure).map_err(|e| Error::plot(out.to_path_buf(), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A last line cut short by a kill is expected; a damaged line before it is named
    /// (by plot and by a resume, which would otherwise drop it unseen).
    #[test]
    fn a_damaged_line_is_named_and_a_cut_last_line_is_not() {
        let path = Path::new("run/metrics.jsonl");
        let good = "{\"step\": 1}\n{\"step\": 2}\n";
        check_lines(path, good).unwrap();
        check_lines(path, &format!("{good}{{\"step\": 3, \"lo")).unwrap();
        let err = check_lines(path, "{\"step\": 1}\ngarbage\n[1]\n{\"step\": 4}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("run/metrics.jsonl lines 2, 3 are not a JSON object"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("metrics.jsonl");
        std::fs::write(&file, "{\"step\": 1}\nxx\n{\"step\": 2}\n").unwrap();
        let err = truncate(&file, 1).unwrap_err().to_string();
        assert!(err.contains("line 2 is not a JSON object"), "{err}");
        assert!(
            std::fs::read_to_string(&file).unwrap().contains("xx"),
            "kept"
        );
    }

    #[test]
    fn curves_pair_train_and_test_values_and_skip_bad_lines() {
        let _generator = crate::testing::generator_lock();
        let text = concat!(
            r#"{"kind":"step","step":10,"epoch":0,"loss":5.0,"lr":0.001,"elbo":-5.0}"#,
            "\n",
            r#"{"kind":"step","step":20,"epoch":0,"loss":4.0,"lr":0.001,"elbo":-4.0}"#,
            "\n",
            r#"{"kind":"epoch","step":20,"epoch":1,"test_elbo":-4.5,"active_units":{"z_1":[3,4]}}"#,
            "\n",
            r#"{"kind":"epoch","step":20,"epoch":1,"test_accuracy":0.9}"#,
            "\n",
            r#"{"kind":"step","step":30,"#,
        );
        let figure = curves(text, "run");
        let titles: Vec<&str> = figure.panels.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["loss", "elbo", "lr", "accuracy"]);
        let elbo = &figure.panels[1];
        assert_eq!(elbo.series[0].points, [(10.0, -5.0), (20.0, -4.0)]);
        assert_eq!(elbo.series[1].name, "test");
        assert_eq!(elbo.series[1].points, [(20.0, -4.5)]);
        assert_eq!(figure.panels[3].series[0].points, [(20.0, 0.9)]);
    }

    #[test]
    fn a_log_without_values_draws_nothing_and_a_good_one_is_drawn() {
        let _generator = crate::testing::generator_lock();
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(&metrics, "not json\n").unwrap();
        let out = dir.path().join("curves.png");
        assert!(!write_curves(&metrics, &out, "r").unwrap());
        assert!(!out.exists());
        std::fs::write(
            &metrics,
            "{\"kind\":\"step\",\"step\":1,\"loss\":1.0}\n{\"kind\":\"step\",\"step\":2,\"loss\":0.5}\n",
        )
        .unwrap();
        assert!(write_curves(&metrics, &out, "r").unwrap());
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
        let err = write_curves(&dir.path().join("none.jsonl"), &out, "r")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("none.jsonl"),
            "{err}"
        );
    }
}
