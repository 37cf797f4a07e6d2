//! Links libtorch so that the bench executables find it at run time (see
//! crates/elbo-models/libtorch_link.rs).
include!("../crates/elbo-models/libtorch_link.rs");

fn main() {
    link_libtorch();
}
