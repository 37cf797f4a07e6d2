//! Links libtorch so that this package's executables find it at run time (see
//! libtorch_link.rs), and compiles `csrc/`: the libtorch operations tch does not expose
//! and the fused GroupNorm + SiLU (see src/sys/ffi.rs) and, with Gloo's headers, the
//! collectives of data-parallel training (src/sys/c10d.rs).
include!("libtorch_link.rs");

fn main() {
    link_libtorch();
    println!("cargo::rustc-check-cfg=cfg(elbo_ops)");
    println!("cargo::rustc-check-cfg=cfg(elbo_gloo)");
    println!("cargo::rustc-check-cfg=cfg(elbo_nccl)");
    println!("cargo::rustc-check-cfg=cfg(elbo_cuda_memory)");
    for file in [
        "elbo_ops.cpp",
        "elbo_ops.h",
        "group_norm.cpp",
        "distributed.cpp",
        "cuda_memory.cpp",
    ] {
        println!("cargo:rerun-if-changed=csrc/{file}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=ELBO_GLOO_INCLUDE");
    // Without libtorch (torch-sys in doc-only mode) there is nothing to compile against;
    // src/ffi.rs then falls back to tch's operations.
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let include = std::path::Path::new(&lib).join("../include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    // Data-parallel training (csrc/distributed.cpp) compiles against c10d's Gloo process
    // group, whose header includes Gloo's own; `cargo xtask setup` provides them and
    // `.cargo/config.toml` names them as ELBO_GLOO_INCLUDE (the folder holding gloo/).
    // Without them elbo-models builds for one process only (src/dist says so at run time).
    let gloo = std::env::var_os("ELBO_GLOO_INCLUDE")
        .map(std::path::PathBuf::from)
        .filter(|dir| dir.join("gloo/config.h").is_file());
    let mut build = cc::Build::new();
    let mut files = vec![
        "csrc/elbo_ops.cpp",
        "csrc/group_norm.cpp",
        "csrc/elbo_ops.h",
    ];
    build
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
        .flag("-w");
    // The CUDA libtorch of `cargo xtask setup --cuda` keeps NCCL's and CUDA's headers
    // beside its libraries (site-packages layout: torch/lib -> ../../nvidia/...).
    let nvidia = std::path::Path::new(&lib).join("../../nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = nvidia.join("cu13/include");
    let has_cuda = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
    let cuda_headers = cuda.join("crt/host_config.h").is_file();
    if has_cuda && cuda_headers {
        // The caching allocator's peaks (csrc/cuda_memory.cpp), for the benches.
        files.push("csrc/cuda_memory.cpp");
        build
            .file("csrc/cuda_memory.cpp")
            .include(&cuda)
            .include(cuda.join("cccl"));
        println!("cargo:rustc-cfg=elbo_cuda_memory");
    }
    match &gloo {
        Some(gloo) => {
            println!(
                "cargo:rerun-if-changed={}",
                gloo.join("gloo/config.h").display()
            );
            files.push("csrc/distributed.cpp");
            build
                .file("csrc/distributed.cpp")
                .include(gloo)
                .define("USE_C10D_GLOO", None);
            println!("cargo:rustc-cfg=elbo_gloo");
            // With NCCL's headers too, the NCCL process group is compiled.
            if has_cuda && cuda_headers && nccl.join("nccl.h").is_file() {
                build
                    .include(&nccl)
                    .define("USE_C10D_NCCL", None)
                    .define("ELBO_NCCL", None);
                println!("cargo:rustc-cfg=elbo_nccl");
            } else if has_cuda {
                println!(
                    "cargo:warning=a CUDA libtorch without NCCL's and CUDA's headers \
                     (nvidia/nccl/include, nvidia/cu13/include/crt): data-parallel training \
                     on GPUs uses Gloo; `cargo xtask setup --cuda --force` installs them"
                );
            }
        }
        None => println!(
            "cargo:warning=Gloo's headers not found (ELBO_GLOO_INCLUDE): elbo-models is built \
             without data-parallel training; `cargo xtask setup` installs them"
        ),
    }
    compile_once(&mut build, &files);
    println!("cargo:rustc-cfg=elbo_ops");
    if has_cuda && cuda_headers {
        // cuda_memory.cpp's allocator lives in libc10_cuda.so (after elbo_ops: the
        // linker resolves left to right).
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

/// Compiles the shim into `libelbo_ops.a` in OUT_DIR, or copies it from the cache.
///
/// Every build of this package that sees the same sources, compiler and flags compiles
/// the same archive, but cargo runs this script in a folder of its own for each kind of
/// build: `cargo clippy` (check mode), `cargo test` and the outside-workspace example
/// each would compile the shim again (about a minute on two cores). So the archive is
/// kept under `<target>/<profile>/elbo-ops-cache/<key>/`, the key a hash of the sources'
/// bytes, the compiler's identity and every argument it gets (includes, defines,
/// flags), and copied on a hit. The copy goes to a temporary name first and is renamed,
/// so a build running beside this one never reads half an archive.
fn compile_once(build: &mut cc::Build, files: &[&str]) {
    use std::hash::{Hash, Hasher};
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    build.cargo_metadata(false);
    let compiler = build.get_compiler();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    compiler.path().hash(&mut hasher);
    compiler.args().hash(&mut hasher);
    std::process::Command::new(compiler.path())
        .arg("--version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default()
        .hash(&mut hasher);
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(file)
            .unwrap_or_else(|e| panic!("reading {file}: {e}"))
            .hash(&mut hasher);
    }
    let archive = "libelbo_ops.a";
    // OUT_DIR is <target>/<profile>/build/elbo-models-<hash>/out.
    let cache = out.ancestors().nth(3).map(|profile| {
        profile
            .join("elbo-ops-cache")
            .join(format!("{:016x}", hasher.finish()))
    });
    match cache.as_ref().map(|dir| dir.join(archive)) {
        Some(cached) if cached.is_file() => {
            std::fs::copy(&cached, out.join(archive))
                .unwrap_or_else(|e| panic!("copying {}: {e}", cached.display()));
        }
        _ => {
            build.compile("elbo_ops");
            if let Some(dir) = &cache {
                // A failure to fill the cache costs the next build a compile, nothing else.
                let temp = dir.join(format!(".{archive}.{}", std::process::id()));
                let _ = std::fs::create_dir_all(dir)
                    .and_then(|()| std::fs::copy(out.join(archive), &temp))
                    .and_then(|_| std::fs::rename(&temp, dir.join(archive)));
                let _ = std::fs::remove_file(&temp);
            }
        }
    }
    // What cc would have printed: the archive, and the C++ standard library.
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=elbo_ops");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    for var in ["CXX", "CXXFLAGS", "CC", "CFLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
}
