//! The CLI's integration tests, as one test binary (one link of the `elbo` crate's
//! dependencies instead of one per file); each module is what was a test file of its
//! own, run by name as before (`cargo test -p elbo-cli --test all hostile::`).

mod common;
mod conditional;
mod edm;
mod folders;
mod hostile;
mod interop;
mod nodes;
mod thin;
mod vdm;
