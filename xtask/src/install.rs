//! Installing libtorch from PyPI's torch wheel into the user's cache.
//!
//! Layout of an install, mirroring a Python `site-packages` so that the `$ORIGIN`-relative
//! RPATHs inside the libtorch libraries (`$ORIGIN/../../nvidia/cu13/lib`, ...) find the
//! CUDA libraries without any `LD_LIBRARY_PATH`:
//!
//! ```text
//! <cache>/libtorch/2.13.0-cpu/
//!     torch/build-version        "2.13.0+cpu" (torch-sys checks it)
//!     torch/include/...          headers
//!     torch/lib/libtorch_cpu.so  ...
//!     nvidia/cu13/lib/libcudart.so.13, libcupti.so.13   (cpu: the two libtorch_cpu needs)
//!     elbo-install.txt           what was installed, from which wheels
//! ```
//!
//! Invariant: a folder under its final name is complete. Wheels are downloaded to
//! `.download-<pid>`, unpacked to `.tmp-<name>-<pid>`, and the unpacked folder is renamed
//! into place last; leftovers of an interrupted run are removed by the next one (under a
//! lock, so two concurrent setups cannot remove each other's work).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::libtorch::{TORCH_VERSION, Variant};

/// The file that marks a complete install (written before the folder is renamed into
/// place).
pub const MARKER: &str = "elbo-install.txt";

/// Disk space needed for an install, download and unpacking together, with a margin.
pub fn required_bytes(variant: Variant) -> u64 {
    const GB: u64 = 1 << 30;
    match variant {
        // 527 MB wheel + 13 MB CUDA runtime wheels + ~520 MB unpacked.
        Variant::Cpu => 3 * GB / 2,
        // ~4 GB of wheels + ~7 GB unpacked.
        Variant::Cuda => 12 * GB,
    }
}

/// The folder of the install of `variant` in `cache`.
pub fn install_dir(cache: &Path, variant: Variant) -> PathBuf {
    cache
        .join("libtorch")
        .join(format!("{TORCH_VERSION}-{}", variant.name()))
}

/// True when `dir` holds a complete install.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(MARKER).is_file() && dir.join("torch/lib/libtorch_cpu.so").is_file()
}

/// The `ELBO_CACHE_DIR`, `XDG_CACHE_HOME/elbo` or `~/.cache/elbo` folder.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("ELBO_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("elbo"));
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache/elbo")),
        None => bail!("neither ELBO_CACHE_DIR, XDG_CACHE_HOME nor HOME is set: set one"),
    }
}

/// Where a wheel member goes in the install, relative to its root, or `None` to skip it.
/// CPU installs leave out the CUDA libraries except the two `libtorch_cpu.so` loads;
/// both leave out `libtorch_python.so` (only Python extensions use it). CUDA installs
/// keep NCCL's and CUDA's headers (`nvidia/{nccl,cu13}/include`).
pub fn destination(member: &Path, variant: Variant) -> Option<PathBuf> {
    let parts: Vec<&str> = member.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        ["torch", "include", _, ..] => Some(member.to_path_buf()),
        ["torch", "lib", file] if is_shared_library(file) => {
            let cuda_only = file.starts_with("libtorch_cuda")
                || file.starts_with("libc10_cuda")
                || file.starts_with("libtorch_nvshmem")
                || file.starts_with("libcaffe2_nvrtc");
            let keep = *file != "libtorch_python.so" && (variant == Variant::Cuda || !cuda_only);
            keep.then(|| member.to_path_buf())
        }
        // NCCL's and CUDA's headers, to compile elbo's NCCL process group (CUDA only).
        ["nvidia", "nccl" | "cu13", "include", _, ..] if variant == Variant::Cuda => {
            Some(member.to_path_buf())
        }
        ["nvidia", _, "lib", file] if is_shared_library(file) => {
            let keep = match variant {
                Variant::Cuda => true,
                Variant::Cpu => matches!(*file, "libcudart.so.13" | "libcupti.so.13"),
            };
            keep.then(|| member.to_path_buf())
        }
        _ => None,
    }
}

fn is_shared_library(file: &str) -> bool {
    file.ends_with(".so") || file.contains(".so.")
}

/// Unpacks the members of every torch and nvidia wheel in `wheels` that
/// [`destination`] keeps into `root`. Returns the names of the wheels used.
pub fn unpack_wheels(wheels: &Path, root: &Path, variant: Variant) -> Result<Vec<String>> {
    let mut used = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(wheels)
        .with_context(|| format!("listing {}", wheels.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    entries.sort();
    for wheel in entries {
        let name = wheel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let relevant =
            name.ends_with(".whl") && (name.starts_with("torch-") || name.starts_with("nvidia_"));
        if !relevant {
            continue;
        }
        unpack_wheel(&wheel, root, variant)?;
        used.push(name);
    }
    if !root.join("torch/lib/libtorch_cpu.so").is_file() {
        bail!(
            "the downloaded wheels in {} hold no torch/lib/libtorch_cpu.so (wheels: {used:?})",
            wheels.display()
        );
    }
    Ok(used)
}

fn unpack_wheel(wheel: &Path, root: &Path, variant: Variant) -> Result<()> {
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("{} is not a readable wheel (zip)", wheel.display()))?;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .with_context(|| format!("reading member {index} of {}", wheel.display()))?;
        if entry.is_dir() {
            continue;
        }
        // `enclosed_name` refuses absolute paths and `..`: nothing lands outside `root`.
        let Some(member) = entry.enclosed_name() else {
            continue;
        };
        let Some(relative) = destination(&member, variant) else {
            continue;
        };
        let target = root.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut out =
            File::create(&target).with_context(|| format!("creating {}", target.display()))?;
        io::copy(&mut entry, &mut out)
            .with_context(|| format!("unpacking {} from {}", member.display(), wheel.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = entry.unix_mode().unwrap_or(0o644) & 0o777;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o444))?;
        }
    }
    Ok(())
}

/// What [`ensure_installed`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The install was already complete: nothing was downloaded.
    AlreadyInstalled,
    /// The wheels were downloaded and unpacked.
    Installed,
}

/// Makes sure the install of `variant` in `cache` is complete, calling `fetch(dir)` to
/// put the wheels in `dir` when it is not. Safe against interruption at any point and
/// against a concurrent run.
pub fn ensure_installed(
    cache: &Path,
    variant: Variant,
    force: bool,
    fetch: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<Outcome> {
    ensure_installed_needing(cache, variant, force, fetch, required_bytes(variant))
}

/// [`ensure_installed`], refusing to start with less than `needed` bytes free (the
/// tests' fake wheels need kilobytes, not the real install's gigabytes: their outcome
/// must not depend on the machine's free space).
fn ensure_installed_needing(
    cache: &Path,
    variant: Variant,
    force: bool,
    fetch: &mut dyn FnMut(&Path) -> Result<()>,
    needed: u64,
) -> Result<Outcome> {
    let dir = install_dir(cache, variant);
    if is_complete(&dir) && !force {
        return Ok(Outcome::AlreadyInstalled);
    }
    let base = cache.join("libtorch");
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let lock_path = base.join(".lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    // Another run may have finished while this one waited for the lock.
    if is_complete(&dir) && !force {
        return Ok(Outcome::AlreadyInstalled);
    }
    remove_leftovers(&base)?;
    check_disk_space(&base, needed)?;

    let pid = std::process::id();
    let download = base.join(format!(".download-{pid}"));
    let staging = base.join(format!(".tmp-{TORCH_VERSION}-{}-{pid}", variant.name()));
    fs::create_dir_all(&download)?;
    fs::create_dir_all(&staging)?;
    fetch(&download)?;
    eprintln!("unpacking libtorch into {}", dir.display());
    let wheels = unpack_wheels(&download, &staging, variant)?;
    let local = match variant {
        Variant::Cpu => "cpu",
        Variant::Cuda => "cu130",
    };
    fs::write(
        staging.join("torch/build-version"),
        format!("{TORCH_VERSION}+{local}\n"),
    )?;
    fs::write(
        staging.join(MARKER),
        format!(
            "libtorch {TORCH_VERSION} ({}) installed by `cargo xtask setup` from:\n{}\n",
            variant.name(),
            wheels.join("\n")
        ),
    )?;
    if dir.exists() {
        let old = base.join(format!(".old-{pid}"));
        fs::rename(&dir, &old)?;
        fs::remove_dir_all(&old)?;
    }
    fs::rename(&staging, &dir)
        .with_context(|| format!("moving {} into place", staging.display()))?;
    fs::remove_dir_all(&download)?;
    Ok(Outcome::Installed)
}

/// Removes the temporary folders of interrupted runs. Called under the lock.
fn remove_leftovers(base: &Path) -> Result<()> {
    for entry in fs::read_dir(base)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let leftover = name.starts_with(".tmp-")
            || name.starts_with(".download-")
            || name.starts_with(".old-");
        if leftover && entry.file_type()?.is_dir() {
            eprintln!(
                "removing {} (left by an interrupted setup)",
                entry.path().display()
            );
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

fn check_disk_space(dir: &Path, needed: u64) -> Result<()> {
    let available = fs4::available_space(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    if available < needed {
        bail!(
            "not enough disk space in {}: the install needs {:.1} GB, {:.1} GB are free.\n  \
             Free some space, or set ELBO_CACHE_DIR to a folder on a larger disk.",
            dir.display(),
            needed as f64 / 1e9,
            available as f64 / 1e9
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ensure_installed`] of the fake wheels: a megabyte of free space is enough.
    fn install(
        cache: &Path,
        variant: Variant,
        force: bool,
        fetch: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<Outcome> {
        ensure_installed_needing(cache, variant, force, fetch, 1 << 20)
    }
    use std::io::Write;

    fn write_wheel(path: &Path, members: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        for (name, data) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    /// A stand-in for the PyPI download: small wheels with the real member names.
    fn fake_fetch(dir: &Path) -> Result<()> {
        write_wheel(
            &dir.join("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
            &[
                ("torch/__init__.py", b""),
                ("torch/include/torch/torch.h", b"// header"),
                ("torch/lib/libtorch_cpu.so", b"cpu"),
                ("torch/lib/libc10.so", b"c10"),
                ("torch/lib/libtorch.so", b"stub"),
                ("torch/lib/libtorch_cuda.so", b"cuda"),
                ("torch/lib/libc10_cuda.so", b"c10 cuda"),
                ("torch/lib/libtorch_python.so", b"python"),
                ("torch/lib/libshm/libshm.h", b"// header"),
                ("../escape.so", b"zip slip"),
            ],
        );
        write_wheel(
            &dir.join("nvidia_cuda_runtime-13.0.96-py3-none-manylinux_2_17_x86_64.whl"),
            &[
                ("nvidia/cu13/lib/libcudart.so.13", b"cudart"),
                ("nvidia/cu13/include/cuda_runtime_api.h", b"// header"),
            ],
        );
        write_wheel(
            &dir.join("nvidia_nccl_cu13-2.28.3-py3-none-manylinux_2_18_x86_64.whl"),
            &[("nvidia/nccl/include/nccl.h", b"// header")],
        );
        write_wheel(
            &dir.join("nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl"),
            &[
                ("nvidia/cu13/lib/libcupti.so.13", b"cupti"),
                ("nvidia/cu13/lib/libnvperf_host.so", b"nvperf"),
            ],
        );
        write_wheel(
            &dir.join("triton-3.7.1-cp311-cp311-manylinux_2_28_x86_64.whl"),
            &[("triton/lib/libtriton.so", b"not ours")],
        );
        Ok(())
    }

    #[test]
    fn cpu_install_keeps_exactly_the_cpu_libraries_and_mirrors_site_packages() {
        let cache = tempfile::tempdir().unwrap();
        let outcome = install(cache.path(), Variant::Cpu, false, &mut fake_fetch).unwrap();
        assert_eq!(outcome, Outcome::Installed);
        let dir = install_dir(cache.path(), Variant::Cpu);
        assert!(is_complete(&dir));
        for kept in [
            "torch/lib/libtorch_cpu.so",
            "torch/lib/libc10.so",
            "torch/lib/libtorch.so",
            "torch/include/torch/torch.h",
            "nvidia/cu13/lib/libcudart.so.13",
            "nvidia/cu13/lib/libcupti.so.13",
        ] {
            assert!(dir.join(kept).is_file(), "{kept} missing");
        }
        for dropped in [
            "torch/lib/libtorch_cuda.so",
            "torch/lib/libc10_cuda.so",
            "torch/lib/libtorch_python.so",
            "nvidia/cu13/lib/libnvperf_host.so",
            "nvidia/cu13/include",
            "nvidia/nccl",
            "triton",
        ] {
            assert!(!dir.join(dropped).exists(), "{dropped} should be left out");
        }
        assert!(!cache.path().join("escape.so").exists());
        assert!(!cache.path().join("libtorch/escape.so").exists());
        assert_eq!(
            fs::read_to_string(dir.join("torch/build-version")).unwrap(),
            "2.13.0+cpu\n"
        );
        // Nothing temporary is left behind.
        let names: Vec<String> = fs::read_dir(cache.path().join("libtorch"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with(".tmp-") && !n.starts_with(".download-")),
            "{names:?}"
        );
    }

    #[test]
    fn cuda_install_keeps_the_cuda_libraries() {
        let cache = tempfile::tempdir().unwrap();
        install(cache.path(), Variant::Cuda, false, &mut fake_fetch).unwrap();
        let dir = install_dir(cache.path(), Variant::Cuda);
        assert!(dir.ends_with("2.13.0-cuda"));
        assert!(dir.join("torch/lib/libtorch_cuda.so").is_file());
        assert!(dir.join("nvidia/cu13/lib/libnvperf_host.so").is_file());
        assert!(
            dir.join("nvidia/nccl/include/nccl.h").is_file(),
            "NCCL's headers kept"
        );
        assert!(dir.join("nvidia/cu13/include/cuda_runtime_api.h").is_file());
        assert!(!dir.join("torch/lib/libtorch_python.so").exists());
        assert_eq!(Variant::of_lib_dir(&dir.join("torch/lib")), Variant::Cuda);
    }

    #[test]
    fn a_second_run_downloads_nothing() {
        let cache = tempfile::tempdir().unwrap();
        let calls = std::cell::Cell::new(0);
        let mut counting = |dir: &Path| {
            calls.set(calls.get() + 1);
            fake_fetch(dir)
        };
        install(cache.path(), Variant::Cpu, false, &mut counting).unwrap();
        let second = install(cache.path(), Variant::Cpu, false, &mut counting).unwrap();
        assert_eq!(second, Outcome::AlreadyInstalled);
        assert_eq!(calls.get(), 1);
        // --force downloads again and replaces the install.
        let forced = install(cache.path(), Variant::Cpu, true, &mut counting).unwrap();
        assert_eq!(forced, Outcome::Installed);
        assert_eq!(calls.get(), 2);
        assert!(is_complete(&install_dir(cache.path(), Variant::Cpu)));
    }

    #[test]
    fn an_interrupted_download_leaves_nothing_that_looks_complete_and_the_next_run_recovers() {
        let cache = tempfile::tempdir().unwrap();
        let mut failing = |dir: &Path| -> Result<()> {
            fs::write(
                dir.join("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
                b"PK\x03\x04 trunc",
            )?;
            bail!("connection reset")
        };
        let err = install(cache.path(), Variant::Cpu, false, &mut failing).unwrap_err();
        assert!(err.to_string().contains("connection reset"));
        let dir = install_dir(cache.path(), Variant::Cpu);
        assert!(
            !dir.exists(),
            "no folder under the final name after a failure"
        );

        // A truncated wheel that "downloaded" fine is caught when unpacking.
        let mut truncated = |dir: &Path| -> Result<()> {
            fs::write(
                dir.join("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
                b"PK\x03\x04 trunc",
            )?;
            Ok(())
        };
        let err = install(cache.path(), Variant::Cpu, false, &mut truncated).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a readable wheel"),
            "{err:#}"
        );
        assert!(!dir.exists());

        install(cache.path(), Variant::Cpu, false, &mut fake_fetch).unwrap();
        assert!(is_complete(&dir));
        let leftovers: Vec<String> = fs::read_dir(cache.path().join("libtorch"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-") || n.starts_with(".download-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_folder_without_the_marker_is_not_complete() {
        let cache = tempfile::tempdir().unwrap();
        let dir = install_dir(cache.path(), Variant::Cpu);
        fs::create_dir_all(dir.join("torch/lib")).unwrap();
        fs::write(dir.join("torch/lib/libtorch_cpu.so"), b"").unwrap();
        assert!(!is_complete(&dir));
        fs::write(dir.join(MARKER), b"").unwrap();
        assert!(is_complete(&dir));
    }

    #[test]
    fn too_little_disk_space_is_an_error_with_both_figures() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_disk_space(dir.path(), u64::MAX)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not enough disk space"), "{err}");
        assert!(err.contains("ELBO_CACHE_DIR"), "{err}");
        check_disk_space(dir.path(), 1).unwrap();
    }
}
