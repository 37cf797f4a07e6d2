//! What the CLI's integration tests share: the `elbo` binary on one thread, run to its
//! end, and its output as text.

use std::process::{Command, Output};

/// The `elbo` binary as a command, on one thread (tests that run two processes at once
/// share the machine's cores).
pub fn elbo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_elbo"));
    command.env("OMP_NUM_THREADS", "1");
    command
}

/// `elbo args...`, run to its end.
pub fn run(args: &[&str]) -> Output {
    elbo().args(args).output().expect("elbo runs")
}

/// A finished command's standard output and error, as one text.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A port on 127.0.0.1 that was free a moment ago (the operating system's choice).
pub fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}
