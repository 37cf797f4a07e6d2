//! The CLI holds no logic a library user would miss (ARCHITECTURE.md): it reaches
//! elbo-models only through the front door, `elbo_models::session`.

use std::path::{Path, PathBuf};

/// The `.rs` files below `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_cli_uses_only_the_libraries_front_door() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for path in sources(&src) {
        let text = std::fs::read_to_string(&path).expect("a source file");
        for (line_number, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("elbo_models::") {
                let rest = &line[at + "elbo_models::".len()..];
                let module: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert_eq!(
                    module,
                    "session",
                    "{}:{}: `{}` reaches past the front door",
                    path.display(),
                    line_number + 1,
                    line.trim()
                );
                checked += 1;
            }
        }
        assert!(
            !text.contains("use tch") && !text.contains("tch::"),
            "{}: the CLI does not touch libtorch itself",
            path.display()
        );
    }
    assert!(checked >= 5, "found only {checked} uses of elbo_models");
}
