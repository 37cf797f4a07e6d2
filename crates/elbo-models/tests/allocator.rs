//! `retain_freed_memory` takes effect: tensors of 16 MiB (above glibc's default mmap
//! threshold of 128 KiB, below the new one) are served from the heap instead of a
//! mapping of their own, and a freed one's memory stays there for the next.
//!
//! The allocator is process-wide state, so this is a test binary of its own (`harness =
//! false` in Cargo.toml): one process, one check, on the main thread (whose allocations
//! come from glibc's main arena, the `[heap]` of /proc/self/maps), with no test threads
//! allocating beside it. It checks where memory comes from rather than counting page
//! faults, which libtorch's worker threads and glibc's own dynamic mmap threshold blur.

/// The name of the mapping of /proc/self/maps that holds `address` (`[heap]`, a file's
/// path, or empty for an anonymous mapping).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mapping_of(address: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().expect("an address range");
        let (start, end) = range.split_once('-').expect("start-end");
        let start = usize::from_str_radix(start, 16).expect("hex start");
        let end = usize::from_str_radix(end, 16).expect("hex end");
        if (start..end).contains(&address) {
            return fields.nth(4).unwrap_or("").to_string();
        }
    }
    panic!("address {address:#x} is in no mapping of /proc/self/maps");
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    elbo_models::retain_freed_memory().expect("glibc takes the mallopt settings");
    // 16 MiB: glibc maps it on its own by default (and unmaps it when freed, so the next
    // tensor page-faults its memory in afresh); after the call it comes from the heap.
    let numel = 4i64 << 20;
    let ones = || tch::Tensor::ones([numel], (tch::Kind::Float, tch::Device::Cpu));
    let first = ones();
    let address = first.data_ptr() as usize;
    let mapping = mapping_of(address);
    assert_eq!(
        mapping, "[heap]",
        "a 16 MiB tensor at {address:#x} lies in mapping {mapping:?}, expected the heap"
    );
    assert_eq!(first.sum(tch::Kind::Float).double_value(&[]), numel as f64);
    drop(first);
    // Freed, the block stays in the heap (its top is never trimmed, nothing is unmapped):
    // the memory the next tensors reuse.
    let after = mapping_of(address);
    assert_eq!(
        after, "[heap]",
        "after the free, {address:#x} lies in {after:?}"
    );
    let second = ones();
    let address = second.data_ptr() as usize;
    let mapping = mapping_of(address);
    assert_eq!(mapping, "[heap]", "the second tensor lies in {mapping:?}");
    assert_eq!(second.sum(tch::Kind::Float).double_value(&[]), numel as f64);
    println!("allocator: 16 MiB tensors come from the heap and stay there when freed: ok");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("allocator: glibc only; nothing to check here");
}
