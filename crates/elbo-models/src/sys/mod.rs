//! What touches the process and the machine: the C++ shim (the only `unsafe`), device
//! names, and what libtorch reports about itself.

mod device;
pub mod ffi;
mod runtime;

pub use device::DeviceSpec;
pub use runtime::{RuntimeInfo, retain_freed_memory};
