// Shared by the build scripts of the packages whose binaries, tests, benches or doctests
// load libtorch (elbo-models, elbo-cli, elbo-benches), through `include!`. Link arguments
// from a build script reach only that package's own targets, so each package that
// links libtorch into an executable needs this (and a direct dependency on torch-sys,
// which is what makes DEP_TCH_LIBTORCH_LIB visible here).

/// Emits the link arguments that let the package's executables find libtorch at run
/// time without LD_LIBRARY_PATH, and that keep libtorch_cuda.so linked when present.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys built in doc-only mode: nothing is linked.
        return;
    };
    let lib = std::path::PathBuf::from(lib);
    println!("cargo:rerun-if-changed={}", lib.display());
    // DT_RPATH rather than DT_RUNPATH (--disable-new-dtags): it also applies to the
    // libraries libtorch itself loads, and a user's LD_LIBRARY_PATH cannot shadow it with
    // a libtorch of another version.
    println!(
        "cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{}",
        lib.display()
    );
    if lib.join("libtorch_cuda.so").exists() {
        // Nothing in our code refers to a symbol of libtorch_cuda.so, so the linker's
        // --as-needed would drop it and the CUDA kernels would never register.
        println!(
            "cargo:rustc-link-arg=-Wl,-L{},--no-as-needed,-ltorch_cuda,--as-needed",
            lib.display()
        );
    }
}
