//! Mechanical checks of the architecture, run as the xtask's tests (and so by `cargo
//! xtask test`): the layers of elbo-models (every `crate::` import points down the
//! table [`LAYERS`]), the length of source files (none passes [`LONG_FILE`] lines unless
//! ARCHITECTURE.md's "Long files" names it with its reason), no line counts in
//! ARCHITECTURE.md (they go stale), and no string literal with a run of spaces inside (a
//! lost `\` line continuation shows in a user's message).
//!
//! Only the tests use this module; it reads the workspace's files and changes nothing.

#![cfg(test)]

use std::path::{Path, PathBuf};

/// The layers of elbo-models' top-level modules, bottom first: a module may import
/// (`crate::...`) only modules of a lower layer. `lib.rs` and the unit tests' `testing`
/// helper stand outside the table.
pub const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("sys", 1),
    ("terms", 2),
    ("nn", 2),
    ("sample", 2),
    ("dist", 2),
    ("data", 3),
    ("train", 4),
    ("models", 5),
    ("eval", 6),
    ("fit", 7),
    ("interop", 7),
    ("session", 8),
];

/// Source files longer than this must be named, with a reason, in ARCHITECTURE.md's
/// "Long files".
pub const LONG_FILE: usize = 600;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, skipping build output.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The source without comments (line, block and doc comments), string literals
/// blanked, so that only code is searched.
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(source.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(source.len(), |n| i + n + 2);
            i = end;
        } else if bytes[i] == b'"' {
            // A string literal: skipped to its closing quote (escapes honoured).
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The top-level modules a file's code names through `crate::` (`crate::a::b`,
/// `crate::{a, b::c}`).
fn crate_imports(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        // `$crate::` in macros and paths such as `elbo_models::...` are not this crate's.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || c != '{' {
                    item.push(c);
                }
            }
            out.push(ident(&item));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// The top-level module of a file of `src` (`train/step.rs` -> `train`, `fit.rs` ->
/// `fit`, `lib.rs` -> `lib`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("a file under src");
    let first = rel.components().next().expect("a path");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// Every import of elbo-models against [`LAYERS`]: `(file, from, to)` for each one that
/// does not point down (or names a module the table does not know).
fn layer_violations(src: &Path) -> Vec<(PathBuf, String, String)> {
    let layer = |m: &str| LAYERS.iter().find(|(name, _)| *name == m).map(|(_, l)| *l);
    let mut bad = Vec::new();
    for file in rust_files(src) {
        let from = module_of(src, &file);
        if from == "lib" {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&file).expect("readable source"));
        for to in crate_imports(&code) {
            // Items of lib.rs (the crate's re-exports, `testing`) and the module itself.
            if to == from || to == "testing" || to == "Error" || to == "Result" {
                continue;
            }
            let ok = match (layer(&from), layer(&to)) {
                (Some(a), Some(b)) => b < a,
                _ => false,
            };
            if !ok {
                bad.push((file.clone(), from.clone(), to));
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

#[test]
fn every_import_of_elbo_models_points_down_a_layer() {
    let src = workspace().join("crates/elbo-models/src");
    // Every top-level module is in the table, so a new one must be placed.
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let name = module_of(&src, &entry.path());
        if name != "lib" {
            assert!(
                LAYERS.iter().any(|(m, _)| *m == name),
                "crates/elbo-models/src/{name} is not in xtask/src/tidy.rs's LAYERS: give \
                 it a layer (and a row in ARCHITECTURE.md's layer table)"
            );
        }
    }
    let bad = layer_violations(&src);
    assert!(
        bad.is_empty(),
        "imports that do not point down elbo-models' layers (LAYERS in xtask/src/tidy.rs, \
         ARCHITECTURE.md's layer table):\n{}",
        bad.iter()
            .map(|(file, from, to)| format!("  {}: {from} -> {to}", file.display()))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_layer_check_sees_imports_in_every_form() {
    let code = code_only(
        "use crate::train::{self, Step};\n\
         use crate::{data, models::ElboModel, nn::{a, b}};\n\
         // use crate::session;\n\
         let s = \"crate::eval\";\n\
         let x = crate::sys::ffi::f();\n\
         let y = elbo_models::crate_like::z; $crate::fit::g();\n",
    );
    assert_eq!(
        crate_imports(&code),
        ["train", "data", "models", "nn", "sys"],
        "{code}"
    );
    // And it catches an import up a layer in a real tree.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("train")).unwrap();
    std::fs::write(
        dir.path().join("train/mod.rs"),
        "use crate::models::ElboModel;\nuse crate::dist::Alone;\n",
    )
    .unwrap();
    let bad = layer_violations(dir.path());
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!((bad[0].1.as_str(), bad[0].2.as_str()), ("train", "models"));
}

/// The "Long files" section of ARCHITECTURE.md.
fn long_files_section(architecture: &str) -> &str {
    let start = architecture
        .find("\n## Long files")
        .expect("ARCHITECTURE.md has a '## Long files' section");
    let rest = &architecture[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |n| n + 3);
    &rest[..end]
}

#[test]
fn no_source_file_is_long_unless_architecture_says_why() {
    let ws = workspace();
    let architecture = std::fs::read_to_string(ws.join("ARCHITECTURE.md")).unwrap();
    let named = long_files_section(&architecture);
    let mut unnamed = Vec::new();
    for root in ["crates", "xtask", "benches", "examples"] {
        for file in rust_files(&ws.join(root)) {
            let rel = file
                .strip_prefix(&ws)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if rel.contains("/tests/") {
                continue;
            }
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > LONG_FILE && !named.contains(&rel) {
                unnamed.push(format!("{rel} ({lines} lines)"));
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "source files over {LONG_FILE} lines that ARCHITECTURE.md's 'Long files' does not \
         name (by their path from the workspace root) with a reason: {unnamed:?}"
    );
}

#[test]
fn architecture_states_no_line_counts() {
    let architecture = std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).unwrap();
    let counted: Vec<&str> = architecture
        .lines()
        .filter(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.windows(2).any(|w| {
                w[1].trim_matches(|c: char| !c.is_alphanumeric()) == "lines"
                    && w[0]
                        .trim_start_matches(['(', '~'])
                        .replace(',', "")
                        .parse::<u64>()
                        .is_ok()
            })
        })
        .collect();
    assert!(
        counted.is_empty(),
        "ARCHITECTURE.md states line counts, which go stale (the long-file test keeps the \
         limit instead): {counted:?}"
    );
}

/// String literals of `source` that hold a run of six or more spaces between two other
/// characters, with their line numbers.
fn spaced_literals(source: &str) -> Vec<(usize, String)> {
    let code_lines = source.lines().enumerate().filter(|(_, l)| {
        let t = l.trim_start();
        !t.starts_with("//")
    });
    let mut out = Vec::new();
    for (n, line) in code_lines {
        let mut rest = line;
        while let Some(open) = rest.find('"') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('"') else {
                break;
            };
            let literal = &after[..close];
            let inner = literal.trim();
            if inner.contains("      ") && !literal.starts_with(' ') {
                out.push((n + 1, literal.to_string()));
            }
            rest = &after[close + 1..];
        }
    }
    out
}

#[test]
fn no_message_carries_a_run_of_spaces() {
    assert_eq!(
        spaced_literals("let m = \"does not divide among 2                  processes\";").len(),
        1
    );
    assert!(spaced_literals("let m = \"one sentence \\\n    continued\";").is_empty());
    let ws = workspace();
    let mut found = Vec::new();
    // The libraries' and the CLI's messages (the xtask's reports align columns).
    for root in ["crates", "benches"] {
        for file in rust_files(&ws.join(root)) {
            let source = std::fs::read_to_string(&file).unwrap();
            for (line, literal) in spaced_literals(&source) {
                found.push(format!(
                    "{}:{line}: {literal:?}",
                    file.strip_prefix(&ws).unwrap().display()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "string literals with a run of spaces inside (a lost `\\` continuation?): {found:#?}"
    );
}

#[test]
fn the_pure_crates_do_not_depend_on_libtorch() {
    let ws = workspace();
    for krate in ["elbo-math", "elbo-data", "elbo-plot", "elbo-board"] {
        let manifest =
            std::fs::read_to_string(ws.join("crates").join(krate).join("Cargo.toml")).unwrap();
        for line in manifest.lines() {
            let name = line.split(['=', '.']).next().unwrap_or("").trim();
            assert!(
                name != "tch" && name != "torch-sys",
                "{krate} depends on {name}: the pure crates build and test without libtorch"
            );
        }
    }
}

/// The names of a run folder's files and folders, which only `train::layout` writes out.
const RUN_FILES: [&str; 7] = [
    "config.json",
    "metrics.jsonl",
    "curves.png",
    "gamma.png",
    "checkpoints",
    "samples",
    ".lock",
];

#[test]
fn only_the_layout_names_a_run_folders_files() {
    let src = workspace().join("crates/elbo-models/src");
    let mut found = Vec::new();
    for file in rust_files(&src) {
        if file.ends_with("train/layout.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        // Unit tests may make run folders of their own.
        let code = source.split("#[cfg(test)]").next().unwrap_or("");
        for name in RUN_FILES {
            if code.contains(&format!("join(\"{name}\")")) {
                found.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "run-folder names outside train::layout (use RunDir's methods): {found:?}"
    );
}
