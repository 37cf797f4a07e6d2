//! Lets the program find libtorch at run time without LD_LIBRARY_PATH: an rpath to the
//! libtorch that torch-sys linked.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::path::PathBuf::from(lib);
        println!(
            "cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{}",
            lib.display()
        );
    }
}
