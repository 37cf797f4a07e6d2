//! What touches the process and the machine: the C++ shim (ffi.rs and c10d.rs hold the
//! only `unsafe`), device names, and what libtorch reports about itself.

pub mod c10d;
mod device;
pub mod ffi;
mod runtime;

pub use device::DeviceSpec;
pub use runtime::{RuntimeInfo, retain_freed_memory};
