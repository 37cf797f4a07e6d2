//! Two nodes, for real: each "node" a network namespace of its own with its own address
//! (a veth pair between them), one `elbo train` process in each, the rendezvous at the
//! first's address and Gloo on the interface `GLOO_SOCKET_IFNAME` names. The result must
//! equal one node's two processes (`--nproc 2`) bit for bit. Creating namespaces needs
//! root: elsewhere the test says it did not run. And an interface that does not exist is
//! refused naming it, root or not.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{elbo, run, text};

/// Two network namespaces joined by a veth pair (10.201.0.1 and 10.201.0.2), removed
/// when dropped.
struct TwoNodes {
    names: [String; 2],
    interfaces: [String; 2],
}

impl TwoNodes {
    fn new() -> Option<TwoNodes> {
        let id = std::process::id();
        let nodes = TwoNodes {
            names: [format!("elbo-a-{id}"), format!("elbo-b-{id}")],
            // Interface names have at most 15 characters.
            interfaces: [format!("ea{id}"), format!("eb{id}")],
        };
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let [a, b] = &nodes.names;
        let [ea, eb] = &nodes.interfaces;
        let made = ip(&["netns", "add", a])
            && ip(&["netns", "add", b])
            && ip(&["link", "add", ea, "type", "veth", "peer", "name", eb])
            && ip(&["link", "set", ea, "netns", a])
            && ip(&["link", "set", eb, "netns", b])
            && ip(&["-n", a, "addr", "add", "10.201.0.1/24", "dev", ea])
            && ip(&["-n", b, "addr", "add", "10.201.0.2/24", "dev", eb])
            && [(a, ea), (b, eb)].iter().all(|(n, e)| {
                ip(&["-n", n, "link", "set", "lo", "up"]) && ip(&["-n", n, "link", "set", e, "up"])
            });
        if !made {
            eprintln!("not run: creating network namespaces needs root and iproute2");
            return None;
        }
        Some(nodes)
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The sha256 of the newest checkpoint's tensors in `run_dir`.
fn newest_digest(run_dir: &Path) -> String {
    let json = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max()
        .expect("a checkpoint");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    meta["tensors_sha256"].as_str().unwrap().to_string()
}

const JOB: [&str; 8] = [
    "train",
    "vae",
    "--steps",
    "20",
    "--batch-size",
    "32",
    "--iw",
    "0",
];

#[test]
fn two_nodes_equal_one_node_of_two_processes() {
    let Some(nodes) = TwoNodes::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_elbo");
    let children: Vec<_> = (0..2)
        .map(|rank| {
            let run_dir = dir.path().join(format!("node-{rank}"));
            Command::new("ip")
                .args(["netns", "exec", &nodes.names[rank], "env"])
                .arg(format!("RANK={rank}"))
                .args([
                    "WORLD_SIZE=2",
                    "LOCAL_RANK=0",
                    "LOCAL_WORLD_SIZE=1",
                    "MASTER_ADDR=10.201.0.1",
                    "MASTER_PORT=29500",
                    "OMP_NUM_THREADS=1",
                ])
                .arg(format!("GLOO_SOCKET_IFNAME={}", nodes.interfaces[rank]))
                .arg(exe)
                .args(JOB)
                .arg("--run")
                .arg(&run_dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let one_node = dir.path().join("one-node");
    let mut args = JOB.to_vec();
    args.extend(["--nproc", "2", "--run", one_node.to_str().unwrap()]);
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out));
    // Rank 0 writes the run; the other node's folder holds nothing.
    assert!(!dir.path().join("node-1/checkpoints").exists());
    assert_eq!(
        newest_digest(&dir.path().join("node-0")),
        newest_digest(&one_node)
    );
}

#[test]
fn an_interface_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let out = elbo()
        .args(JOB)
        .arg("--run")
        .arg(dir.path().join("r"))
        .envs([
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", port.as_str()),
            ("GLOO_SOCKET_IFNAME", "nope0"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the network interface nope0 (GLOO_SOCKET_IFNAME)"),
        "{}",
        text(&out)
    );
}
