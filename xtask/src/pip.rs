//! Fetching the torch wheel from PyPI with the ordinary client, `python3 -m pip
//! download`, which checks the hashes the index publishes.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::libtorch::{TORCH_VERSION, Variant};

/// The two CUDA runtime wheels whose libraries `libtorch_cpu.so` loads even on CPU.
pub const CPU_EXTRA_WHEELS: [&str; 2] =
    ["nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cupti==13.0.85"];

/// The header-only CUDA wheels that the CUDA variant adds to torch's dependencies: c10d's
/// `ProcessGroupNCCL.hpp` includes ATen's CUDA headers, which need the CUDA compiler's
/// `crt/` and libcu++'s `nv/target`, in no runtime wheel (nothing of them is linked).
/// Asked for as extras of NVIDIA's `cuda-toolkit` meta-package, unpinned: torch itself
/// requires `cuda-toolkit[cublas,cudart,...]==13.0.3` (torch 2.13.0's Requires-Dist),
/// pip resolves one version of it for both requirements, and so the headers come from
/// the toolkit release of the runtime torch loads (nvidia-cuda-crt 13.0.88 and
/// nvidia-cuda-cccl 13.0.85 for 13.0.3, where unpinned wheels would be 13.5's).
pub const CUDA_HEADER_WHEELS: [&str; 1] = ["cuda-toolkit[crt,cccl]"];

/// How to call pip.
#[derive(Debug, Clone)]
pub struct Pip {
    /// The Python interpreter (`python3`, or `$PYTHON`).
    pub python: String,
    /// The wheel platform tag (see [`crate::libtorch::wheel_platform`]).
    pub platform: &'static str,
    /// Extra environment for pip (tests point it at an unreachable index).
    pub env: Vec<(String, String)>,
}

impl Pip {
    /// The arguments of the `pip download` of `variant` into `dest`. The wheel is chosen
    /// by platform tag and one fixed Python ABI, so the same libtorch is fetched whatever
    /// Python the user has.
    pub fn download_args(&self, variant: Variant, dest: &Path) -> Vec<String> {
        let mut args: Vec<String> = [
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--progress-bar",
            "on",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--dest",
        ]
        .map(String::from)
        .to_vec();
        args.push(dest.display().to_string());
        // pip takes the platform tags literally: list every manylinux tag a glibc-2.28
        // system accepts, since the CUDA wheels carry older ones (manylinux2014, 2_17, 2_25).
        for tag in compatible_platforms(self.platform) {
            args.push("--platform".into());
            args.push(tag);
        }
        args.push(format!("torch=={TORCH_VERSION}"));
        match variant {
            // Only what the slim CPU libtorch needs.
            Variant::Cpu => {
                args.push("--no-deps".into());
                args.extend(CPU_EXTRA_WHEELS.map(String::from));
            }
            // The wheel's declared dependencies bring every CUDA 13 library; the header
            // wheels let elbo compile its NCCL process group.
            Variant::Cuda => args.extend(CUDA_HEADER_WHEELS.map(String::from)),
        }
        args
    }

    /// Checks that the interpreter runs and has pip.
    pub fn check(&self) -> Result<()> {
        let output = Command::new(&self.python)
            .args(["-m", "pip", "--version"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
        let hint = format!(
            "`cargo xtask setup` fetches libtorch {TORCH_VERSION} from PyPI with pip.\n  Fix: \
             install Python 3 with pip (Debian/Ubuntu: apt-get install python3-pip; or set \
             PYTHON to an interpreter that has it), or install libtorch {TORCH_VERSION} \
             yourself and set LIBTORCH."
        );
        match output {
            Err(err) => bail!("could not run `{}`: {err}\n  {hint}", self.python),
            Ok(out) if !out.status.success() => bail!(
                "`{} -m pip` does not work: {}\n  {hint}",
                self.python,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Ok(_) => Ok(()),
        }
    }

    /// Downloads the wheels of `variant` into `dest`, showing pip's progress and
    /// explaining a failure.
    pub fn download(&self, variant: Variant, dest: &Path) -> Result<()> {
        self.check()?;
        let args = self.download_args(variant, dest);
        eprintln!(
            "fetching torch=={TORCH_VERSION} ({}) from PyPI with pip",
            variant.name()
        );
        let mut child = Command::new(&self.python)
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", self.python))?;
        // Show pip's output as it comes, and keep it to explain a failure.
        let stdout = child.stdout.take().context("pip stdout")?;
        let stderr = child.stderr.take().context("pip stderr")?;
        let out_thread = std::thread::spawn(move || tee(stdout, std::io::stderr()));
        let err_text = tee(stderr, std::io::stderr());
        let out_text = out_thread.join().unwrap_or_default();
        let status = child.wait()?;
        if status.success() {
            return Ok(());
        }
        let output = format!("{out_text}\n{err_text}");
        let reachable = index_url(&output).map(|url| can_connect(&url));
        bail!("{}", explain_failure(&output, reachable))
    }
}

/// The index pip used, from its "Looking in indexes:" line, or PyPI's.
fn index_url(output: &str) -> Option<String> {
    let listed = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Looking in indexes:"))
        .and_then(|rest| rest.split([',', ' ']).find(|s| !s.is_empty()))
        .map(str::to_string);
    Some(listed.unwrap_or_else(|| "https://pypi.org/simple".to_string()))
}

/// Whether a TCP connection to the host of `url` can be opened (5 s at most).
pub fn can_connect(url: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let (default_port, rest) = match url.split_once("://") {
        Some(("http", rest)) => (80, rest),
        Some((_, rest)) => (443, rest),
        None => (443, url),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    // Credentials (user:token@host) are not part of the address.
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let address = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    };
    let Ok(addrs) = address.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)).is_ok())
}

/// The platform tags a system that accepts `platform` (`manylinux_2_M_ARCH`) also
/// accepts: every older manylinux 2 tag down to 2.17 and its `manylinux2014` alias.
pub fn compatible_platforms(platform: &str) -> Vec<String> {
    let parsed = platform.strip_prefix("manylinux_2_").and_then(|rest| {
        let (minor, arch) = rest.split_once('_')?;
        Some((minor.parse::<u32>().ok()?, arch))
    });
    match parsed {
        Some((minor, arch)) if minor >= 17 => {
            let mut tags: Vec<String> = (17..=minor)
                .rev()
                .map(|m| format!("manylinux_2_{m}_{arch}"))
                .collect();
            tags.push(format!("manylinux2014_{arch}"));
            tags
        }
        _ => vec![platform.to_string()],
    }
}

/// Copies `from` to `to` as it arrives and returns what was read (lossily decoded).
fn tee(mut from: impl Read, mut to: impl Write) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let _ = to.write_all(&buf[..n]);
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Turns pip's output into an error that says what went wrong and what to do;
/// `reachable` is whether the index answered a connection, when that was checked.
pub fn explain_failure(output: &str, reachable: Option<bool>) -> String {
    const NETWORK: [&str; 7] = [
        "NewConnectionError",
        "Max retries exceeded",
        "Temporary failure in name resolution",
        "ConnectTimeout",
        "ProxyError",
        "Connection refused",
        "Network is unreachable",
    ];
    let tail: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = tail[tail.len().saturating_sub(6)..].join("\n    ");
    if reachable == Some(false) || NETWORK.iter().any(|needle| output.contains(needle)) {
        format!(
            "the package index could not be reached, so torch=={TORCH_VERSION} could not be \
             downloaded.\n  pip said:\n    {tail}\n  Fix: check the network or proxy (pip \
             honours HTTPS_PROXY, PIP_INDEX_URL and its config), then run `cargo xtask \
             setup` again; or install libtorch {TORCH_VERSION} yourself and set LIBTORCH."
        )
    } else if let Some(missing) = output
        .lines()
        .find_map(|l| l.split("No matching distribution found for ").nth(1))
    {
        format!(
            "the package index has no {} wheel for this platform.\n  pip said:\n    \
             {tail}\n  Fix: check that pip uses PyPI (PIP_INDEX_URL), or install libtorch \
             {TORCH_VERSION} yourself and set LIBTORCH.",
            missing.trim()
        )
    } else {
        format!("pip could not download torch=={TORCH_VERSION}.\n  pip said:\n    {tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pip(python: &str) -> Pip {
        Pip {
            python: python.into(),
            platform: "manylinux_2_28_x86_64",
            env: Vec::new(),
        }
    }

    #[test]
    fn cpu_download_is_the_slim_set_and_cuda_takes_the_dependencies() {
        let dest = Path::new("/tmp/d");
        let cpu = pip("python3").download_args(Variant::Cpu, dest);
        assert!(cpu.contains(&"torch==2.13.0".to_string()));
        assert!(cpu.contains(&"--no-deps".to_string()));
        assert!(cpu.contains(&"nvidia-cuda-runtime==13.0.96".to_string()));
        assert!(cpu.contains(&"nvidia-cuda-cupti==13.0.85".to_string()));
        let cuda = pip("python3").download_args(Variant::Cuda, dest);
        assert!(!cuda.contains(&"--no-deps".to_string()));
        // The headers follow torch's own pin of the CUDA toolkit: no version of their own.
        assert!(cuda.contains(&"cuda-toolkit[crt,cccl]".to_string()));
        assert!(!cuda.iter().any(|a| a.starts_with("nvidia-cuda-crt")));
        assert!(!cpu.contains(&"cuda-toolkit[crt,cccl]".to_string()));
        assert!(
            cuda.windows(2)
                .any(|w| w == ["--platform", "manylinux_2_28_x86_64"])
        );
        assert!(
            cuda.windows(2)
                .any(|w| w == ["--platform", "manylinux2014_x86_64"])
        );
        assert!(cuda.windows(2).any(|w| w == ["--dest", "/tmp/d"]));
    }

    #[test]
    fn platform_tags_expand_down_to_manylinux2014() {
        let tags = compatible_platforms("manylinux_2_28_x86_64");
        assert_eq!(
            tags.first().map(String::as_str),
            Some("manylinux_2_28_x86_64")
        );
        assert!(tags.contains(&"manylinux_2_17_x86_64".to_string()));
        assert!(tags.contains(&"manylinux_2_25_x86_64".to_string()));
        assert_eq!(
            tags.last().map(String::as_str),
            Some("manylinux2014_x86_64")
        );
        assert_eq!(tags.len(), 28 - 17 + 2);
        assert_eq!(
            compatible_platforms("win_amd64"),
            vec!["win_amd64".to_string()]
        );
    }

    #[test]
    fn a_missing_python_is_a_clear_error() {
        let err = pip("/nonexistent/python3").check().unwrap_err().to_string();
        assert!(
            err.contains("could not run `/nonexistent/python3`"),
            "{err}"
        );
        assert!(err.contains("python3-pip"), "{err}");
        assert!(err.contains("LIBTORCH"), "{err}");
    }

    #[test]
    fn an_unreachable_index_is_reported_as_such() {
        let text = "WARNING: Retrying ... NewConnectionError('Failed to establish a new connection')\n\
                    ERROR: Could not find a version that satisfies the requirement torch==2.13.0\n\
                    ERROR: No matching distribution found for torch==2.13.0";
        let msg = explain_failure(text, None);
        assert!(msg.contains("could not be reached"), "{msg}");
        assert!(msg.contains("No matching distribution"), "{msg}");
        let quiet = "ERROR: No matching distribution found for torch==2.13.0";
        let msg = explain_failure(quiet, Some(true));
        assert!(
            msg.contains("no torch==2.13.0 wheel for this platform"),
            "{msg}"
        );
        // pip with no retries says nothing of the network: the connection check decides.
        let msg = explain_failure(quiet, Some(false));
        assert!(msg.contains("could not be reached"), "{msg}");
    }

    #[test]
    fn the_index_is_read_from_pip_output_and_probed() {
        let out = "Looking in indexes: http://127.0.0.1:9/simple\nERROR: ...";
        assert_eq!(index_url(out).as_deref(), Some("http://127.0.0.1:9/simple"));
        assert_eq!(
            index_url("ERROR").as_deref(),
            Some("https://pypi.org/simple")
        );
        // Port 9 (discard) on loopback: nothing listens there.
        assert!(!can_connect("http://127.0.0.1:9/simple"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(can_connect(&format!(
            "http://user:pw@127.0.0.1:{port}/simple"
        )));
    }

    /// The real pip against an index on a closed loopback port: the whole failure path,
    /// end to end, in a few seconds.
    #[test]
    fn real_pip_against_an_unreachable_index_fails_with_the_network_message() {
        let dest = tempfile::tempdir().unwrap();
        let mut pip = pip("python3");
        if pip.check().is_err() {
            eprintln!("python3 with pip is not installed here: nothing to run");
            return;
        }
        pip.env = vec![
            ("PIP_INDEX_URL".into(), "http://127.0.0.1:9/simple".into()),
            ("PIP_FIND_LINKS".into(), "".into()),
            ("PIP_NO_CACHE_DIR".into(), "1".into()),
            ("PIP_RETRIES".into(), "0".into()),
            ("PIP_TIMEOUT".into(), "2".into()),
        ];
        let err = pip
            .download(Variant::Cpu, dest.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("could not be reached"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dest.path()).unwrap().collect();
        assert!(left.is_empty(), "nothing downloaded: {left:?}");
    }
}
