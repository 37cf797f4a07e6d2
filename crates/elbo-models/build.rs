//! Links libtorch so that this package's executables find it at run time (see
//! libtorch_link.rs), and compiles `csrc/elbo_ops.cpp`, the libtorch operations tch does
//! not expose (see src/ffi.rs).
include!("libtorch_link.rs");

fn main() {
    link_libtorch();
    println!("cargo::rustc-check-cfg=cfg(elbo_ops)");
    println!("cargo:rerun-if-changed=csrc/elbo_ops.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // Without libtorch (torch-sys in doc-only mode) there is nothing to compile against;
    // src/ffi.rs then falls back to tch's operations.
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let include = std::path::Path::new(&lib).join("../include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    cc::Build::new()
        .cpp(true)
        .file("csrc/elbo_ops.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // libtorch's headers warn under C++17; they are not ours to fix.
        .warnings(false)
        .flag("-w")
        .compile("elbo_ops");
    println!("cargo:rustc-cfg=elbo_ops");
}
