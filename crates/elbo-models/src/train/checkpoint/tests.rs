//! The checkpoint format's tests: writing, reading, rotation, refusals.
use super::*;
use serde_json::json;

fn meta(step: u64) -> CheckpointMeta {
    CheckpointMeta {
        format: FORMAT,
        elbo_version: "test".into(),
        model: "vae".into(),
        model_config: json!({"latent_dim": 20, "hidden": [400]}),
        train_config: json!({"lr": 1e-3}),
        step,
        seed: 1,
        tensors: String::new(),
        tensors_sha256: None,
        world_size: None,
    }
}

#[test]
fn saves_loads_and_keeps_the_last_n() {
    let _generator = crate::testing::generator_lock();
    let dir = tempfile::tempdir().unwrap();
    let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    for step in [10, 20, 30] {
        save(dir.path(), meta(step), &[("w".into(), &w * step as f64)], 2).unwrap();
    }
    let kept: Vec<String> = list(dir.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, ["step-000000020.json", "step-000000030.json"]);
    assert!(!dir.path().join("step-000000010.safetensors").exists());
    let loaded = load(dir.path()).unwrap();
    assert_eq!(loaded.meta.step, 30);
    assert!(loaded.tensors["w"].equal(&(&w * 30.0)));
    let leftovers = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    // No temporary file (the atomic writer's are dot files) is left.
    assert_eq!(leftovers, 0);
}

#[test]
fn another_model_or_config_is_refused_naming_the_difference() {
    let _generator = crate::testing::generator_lock();
    let m = meta(1);
    m.check_compatible("vae", &json!({"latent_dim": 20, "hidden": [400]}))
        .unwrap();
    let err = m
        .check_compatible("ddpm", &m.model_config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds a vae model, this run is a ddpm"),
        "{err}"
    );
    let err = m
        .check_compatible("vae", &json!({"latent_dim": 32, "hidden": [400]}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("latent_dim: checkpoint 20, asked 32"), "{err}");
}

#[test]
fn garbage_and_missing_files_are_clear_errors() {
    let _generator = crate::testing::generator_lock();
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("no checkpoint"), "{err}");
    let json = dir.path().join("step-000000001.json");
    fs::write(&json, "{not json").unwrap();
    let err = load(&json).err().unwrap().to_string();
    assert!(err.contains("is not an elbo checkpoint"), "{err}");
    save(
        dir.path(),
        meta(2),
        &[("w".into(), Tensor::from_slice(&[1.0f32]))],
        5,
    )
    .unwrap();
    fs::write(dir.path().join("step-000000002.safetensors"), b"truncated").unwrap();
    let err = load(&dir.path().join("step-000000002.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("changed or damaged"), "{err}");
    // Without a recorded digest (a checkpoint from before it was kept), the reader's
    // own error.
    let json = dir.path().join("step-000000002.json");
    let mut unchecked: CheckpointMeta =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    unchecked.tensors_sha256 = None;
    fs::write(&json, serde_json::to_string(&unchecked).unwrap()).unwrap();
    let err = load(&json).err().unwrap().to_string();
    assert!(
        err.contains("are not the complete safetensors file")
            && err.contains("safetensors header")
            && !err.contains("HeaderTooLarge"),
        "{err}"
    );
}

/// A checkpoint records the sha256 of its tensors and refuses a file changed after:
/// 50 bytes flipped in the payload (safetensors itself would read them as weights).
#[test]
fn changed_tensors_a_renamed_json_and_another_format_are_refused() {
    let _generator = crate::testing::generator_lock();
    let dir = tempfile::tempdir().unwrap();
    let w = Tensor::arange(1000, (tch::Kind::Float, tch::Device::Cpu));
    let json = save(dir.path(), meta(7), &[("w".into(), w.shallow_clone())], 3).unwrap();
    let written: CheckpointMeta =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let digest = written.tensors_sha256.clone().unwrap();
    assert_eq!(digest.len(), 64);
    assert!(load(&json).unwrap().tensors["w"].equal(&w));

    let tensors = dir.path().join("step-000000007.safetensors");
    let mut bytes = fs::read(&tensors).unwrap();
    let end = bytes.len();
    for b in &mut bytes[end - 50..] {
        *b ^= 0x5a;
    }
    fs::write(&tensors, &bytes).unwrap();
    let err = load(&json).err().unwrap().to_string();
    assert!(err.contains(&format!("records {digest}")), "{err}");
    assert!(err.contains("changed or damaged"), "{err}");

    let renamed = dir.path().join("step-000000009.json");
    fs::copy(&json, &renamed).unwrap();
    let err = load(&renamed).err().unwrap().to_string();
    assert!(err.contains("says it is step 7"), "{err}");

    let mut future = written;
    future.format = FORMAT + 1;
    fs::write(&json, serde_json::to_string(&future).unwrap()).unwrap();
    let err = load(&json).err().unwrap().to_string();
    assert!(
        err.contains(&format!("this elbo reads format {FORMAT}")),
        "{err}"
    );
}

/// A checkpoint names only a file beside it, and holds only finite values: another
/// run's weights (by an absolute path or `..`, with the digest updated to match) and
/// NaN weights (with a valid digest) are refused.
#[test]
fn tensors_elsewhere_or_not_finite_are_refused() {
    let _generator = crate::testing::generator_lock();
    let other = tempfile::tempdir().unwrap();
    let theirs = save(
        other.path(),
        meta(3),
        &[(
            "w".into(),
            Tensor::ones([4], (tch::Kind::Float, tch::Device::Cpu)),
        )],
        3,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = save(
        dir.path(),
        meta(3),
        &[(
            "w".into(),
            Tensor::zeros([4], (tch::Kind::Float, tch::Device::Cpu)),
        )],
        3,
    )
    .unwrap();
    let mut edited: CheckpointMeta =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let target = other.path().join("step-000000003.safetensors");
    edited.tensors_sha256 = Some(sha256_of(&target).unwrap());
    for name in [
        target.display().to_string(),
        format!(
            "../{}/step-000000003.safetensors",
            other.path().file_name().unwrap().to_str().unwrap()
        ),
        "sub/step-000000003.safetensors".to_string(),
        String::new(),
    ] {
        edited.tensors = name.clone();
        fs::write(&json, serde_json::to_string(&edited).unwrap()).unwrap();
        let err = load(&json).err().unwrap().to_string();
        assert!(err.contains("not a path"), "{name}: {err}");
    }
    assert!(
        load(&theirs).is_ok(),
        "the other run's own checkpoint still loads"
    );

    // NaN weights with a digest that matches them.
    let nan = dir.path().join("nan");
    let json = save(
        &nan,
        meta(3),
        &[(
            "w".into(),
            Tensor::ones([4], (tch::Kind::Float, tch::Device::Cpu)),
        )],
        3,
    )
    .unwrap();
    let tensors = nan.join("step-000000003.safetensors");
    let poisoned = Tensor::from_slice(&[1.0f32, f32::NAN, 1.0, 1.0]);
    Tensor::write_safetensors(&[("w", poisoned)], &tensors).unwrap();
    let mut record: CheckpointMeta =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    record.tensors_sha256 = Some(sha256_of(&tensors).unwrap());
    fs::write(&json, serde_json::to_string(&record).unwrap()).unwrap();
    let err = load(&json).err().unwrap().to_string();
    assert!(err.contains("not finite in w"), "{err}");
}

#[test]
fn a_failed_write_leaves_no_file_under_either_name() {
    let _generator = crate::testing::generator_lock();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.bin");
    let err = write_atomically(&target, |temp| {
        fs::write(temp, b"half")?;
        Err(Error::Config {
            detail: "interrupted".into(),
        })
    });
    assert!(err.is_err());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A checkpoint whose JSON cannot be written (here a folder in its place; a full disk
/// alike) fails naming the JSON, and leaves no tensors file that nothing would read or
/// remove; tensors left without JSON by a kill are removed by the next save.
#[test]
fn a_failed_json_write_leaves_no_orphan_and_orphans_are_collected() {
    let _generator = crate::testing::generator_lock();
    let dir = tempfile::tempdir().unwrap();
    let w = [("w".to_string(), Tensor::from_slice(&[1.0f32]))];
    let json = dir.path().join("step-000000003.json");
    fs::create_dir(&json).unwrap();
    let err = save(dir.path(), meta(3), &w, 5).unwrap_err().to_string();
    assert!(
        err.contains(&format!("cannot rename into place {}", json.display())),
        "{err}"
    );
    assert!(!dir.path().join("step-000000003.safetensors").exists());
    fs::remove_dir(&json).unwrap();
    // A kill between the two writes (or during a rotation) leaves tensors alone.
    let orphan = dir.path().join("step-000000001.safetensors");
    fs::write(&orphan, b"left by a kill").unwrap();
    save(dir.path(), meta(4), &w, 5).unwrap();
    assert!(!orphan.exists(), "the orphan was kept");
    assert!(dir.path().join("step-000000004.safetensors").exists());
    // A file where the folder goes is refused before anything is written.
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = save(&file, meta(5), &w, 5).unwrap_err().to_string();
    assert!(err.contains("it is a file: expected a folder"), "{err}");
}

/// A reader that names a checkpoint the writer's rotation removed is told so, with the
/// newest one.
#[test]
fn a_rotated_checkpoint_names_the_newest() {
    let _generator = crate::testing::generator_lock();
    let dir = tempfile::tempdir().unwrap();
    let w = [("w".to_string(), Tensor::from_slice(&[1.0f32]))];
    for step in [1, 2, 3] {
        save(dir.path(), meta(step), &w, 1).unwrap();
    }
    let gone = dir.path().join("step-000000001.json");
    let newest = dir.path().join("step-000000003.json");
    for err in [
        resolve_checkpoint(&gone).unwrap_err().to_string(),
        load(&gone).err().unwrap().to_string(),
    ] {
        assert!(
            err.contains("removed it (rotation)") && err.contains(&newest.display().to_string()),
            "{err}"
        );
    }
}

/// A metrics line that cannot be appended (a full disk: /dev/full) names the log.
#[test]
fn a_full_disk_under_the_metrics_log_names_it() {
    let Some(full) = crate::testing::full_disk() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = crate::train::RunDir::new(dir.path()).metrics();
    std::os::unix::fs::symlink(full, &path).unwrap();
    let err = super::super::metrics::MetricsLog::open(&path)
        .unwrap()
        .write(&json!({"step": 1}))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "cannot append to {}: No space left on device (os error 28)",
            path.display()
        )
    );
}
