//! Gloo's headers, which elbo-models needs to compile its data-parallel training against
//! libtorch's `c10d::ProcessGroupGloo` (the wheel ships c10d's headers but not Gloo's;
//! nothing of Gloo is linked: its code is inside `libtorch_cpu.so`).
//!
//! The source is Debian's `libgloo-dev` package, fetched like the wheel from a package
//! registry (`apt-get download`), pinned by version and sha256, unpacked with
//! `dpkg-deb -x` into `<cache>/gloo/<version>/include`; the workspace link `.gloo` points
//! at that folder and `.cargo/config.toml` hands it to the build as `ELBO_GLOO_INCLUDE`.
//! A user with Gloo's headers of their own sets `ELBO_GLOO_INCLUDE` to the folder that
//! holds `gloo/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The Debian package and version whose headers match the Gloo inside libtorch closely
/// enough (checked: a program compiled against them rendezvoused and all-reduced).
pub const PACKAGE: &str = "libgloo-dev";
/// Its pinned version.
pub const VERSION: &str = "0.0~git20220518.5b14351-3";
/// The sha256 of `libgloo-dev_<VERSION>_amd64.deb`.
pub const SHA256: &str = "80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299";
/// The workspace link `.cargo/config.toml` names as `ELBO_GLOO_INCLUDE`.
pub const LINK_NAME: &str = ".gloo";

/// The folder (holding `gloo/`) of the managed install in `cache`.
pub fn include_dir(cache: &Path) -> PathBuf {
    cache
        .join("gloo")
        .join(VERSION.replace('~', "_"))
        .join("include")
}

/// True when `include` holds Gloo's headers.
pub fn is_complete(include: &Path) -> bool {
    include.join("gloo/config.h").is_file() && include.join("gloo/transport/tcp").is_dir()
}

/// Where the headers come from for this build: the user's `ELBO_GLOO_INCLUDE`, or the
/// managed install (fetched if missing). Returns the folder that holds `gloo/`.
pub fn ensure(workspace: &Path, cache: &Path) -> Result<PathBuf> {
    // `.cargo/config.toml` sets ELBO_GLOO_INCLUDE to the workspace link for every cargo
    // command, this one included: only another value is the user's own.
    let own = std::env::var_os("ELBO_GLOO_INCLUDE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|own| *own != workspace.join(LINK_NAME));
    if let Some(own) = own {
        if !is_complete(&own) {
            bail!(
                "ELBO_GLOO_INCLUDE={} holds no gloo/config.h: it should be the folder that \
                 holds Gloo's `gloo/` headers. Fix it, or unset it to let setup fetch them",
                own.display()
            );
        }
        return Ok(own);
    }
    let include = include_dir(cache);
    if !is_complete(&include) {
        fetch(&include)?;
        eprintln!("installed Gloo's headers into {}", include.display());
    }
    crate::setup::link_named(workspace, LINK_NAME, &include)?;
    Ok(include)
}

/// Downloads the pinned package, checks it and unpacks its headers into `include`
/// (through a temporary folder renamed into place: never half there).
fn fetch(include: &Path) -> Result<()> {
    let parent = include
        .parent()
        .context("the include folder has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let work = tempfile_dir(parent)?;
    let result = (|| {
        let status = Command::new("apt-get")
            .args(["download", &format!("{PACKAGE}={VERSION}")])
            .current_dir(&work)
            .stdout(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => bail!(
                "`apt-get download {PACKAGE}={VERSION}` failed ({s}). Gloo's headers are \
                 needed for data-parallel training: install them (Debian/Ubuntu: {PACKAGE}; \
                 or the headers of github.com/facebookincubator/gloo at 5b14351) and set \
                 ELBO_GLOO_INCLUDE to the folder that holds gloo/"
            ),
            Err(e) => bail!(
                "cannot run apt-get ({e}): this is not a Debian-like system. Gloo's headers \
                 are needed for data-parallel training: get the headers of \
                 github.com/facebookincubator/gloo at 5b14351 and set ELBO_GLOO_INCLUDE to \
                 the folder that holds gloo/"
            ),
        }
        let deb = std::fs::read_dir(&work)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let found = elbo_data::digest_file(&deb)?.sha256;
        if found != SHA256 {
            bail!(
                "{} has sha256 {found}, expected {SHA256}: the package is not the one \
                 elbo was checked with; nothing was installed",
                deb.display()
            );
        }
        let unpacked = work.join("root");
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked)
            .status()
            .context("running dpkg-deb")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed ({status})", deb.display());
        }
        let headers = unpacked.join("usr/include");
        if !is_complete(&headers) {
            bail!("{} holds no gloo/config.h", deb.display());
        }
        if include.exists() {
            std::fs::remove_dir_all(include)
                .with_context(|| format!("removing the incomplete {}", include.display()))?;
        }
        std::fs::rename(&headers, include)
            .with_context(|| format!("moving the headers to {}", include.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_managed_folder_is_versioned_and_a_partial_one_is_not_complete() {
        let cache = tempfile::tempdir().unwrap();
        let include = include_dir(cache.path());
        assert!(include.ends_with("gloo/0.0_git20220518.5b14351-3/include"));
        assert!(!is_complete(&include));
        std::fs::create_dir_all(include.join("gloo")).unwrap();
        std::fs::write(include.join("gloo/config.h"), "").unwrap();
        assert!(!is_complete(&include), "the transport headers are missing");
        std::fs::create_dir_all(include.join("gloo/transport/tcp")).unwrap();
        assert!(is_complete(&include));
    }
}
