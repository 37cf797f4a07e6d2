//! Links libtorch so that this package's executables find it at run time (see
//! libtorch_link.rs), and compiles `csrc/`: the libtorch operations tch does not expose
//! and the fused GroupNorm + SiLU (see src/ffi.rs).
include!("libtorch_link.rs");

fn main() {
    link_libtorch();
    println!("cargo::rustc-check-cfg=cfg(elbo_ops)");
    for file in ["elbo_ops.cpp", "elbo_ops.h", "group_norm.cpp"] {
        println!("cargo:rerun-if-changed=csrc/{file}");
    }
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
        .file("csrc/group_norm.cpp")
        // The kernels in group_norm.cpp are optimised and vectorised in every
        // profile: a debug build's tests would otherwise run them unoptimised.
        .opt_level(3)
        .flag_if_supported("-fopenmp-simd")
        // Lets GCC turn the kernels' clamps into vector blends (a compare may not trap).
        .flag_if_supported("-fno-trapping-math")
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
