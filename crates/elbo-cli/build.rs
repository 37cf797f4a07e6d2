//! Links libtorch so that this package's executables find it at run time (see
//! libtorch_link.rs).
include!("../elbo-models/libtorch_link.rs");

fn main() {
    link_libtorch();
}
