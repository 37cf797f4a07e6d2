//! elbo-models' integration tests, as one test binary (one link against libtorch and
//! the crate instead of one per file); each module is what was a test file of its own,
//! run by name as before (`cargo test -p elbo-models --test all ddpm::`). Every test
//! that depends on libtorch's generator holds `common::exclusive()`, one lock for the
//! whole binary. The tests that must run alone stay binaries of their own: `allocator`
//! and `parallel` (harness = false) and `cuda` (feature cuda-tests).

#[path = "../common/mod.rs"]
mod common;

mod classifier;
mod compat;
mod ddpm;
mod hvae;
mod interop;
mod training;
mod vdm;
