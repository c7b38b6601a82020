//! Rebuilds the eBPF object when bpf-linker changes (a new LLVM can change
//! codegen), and tells bpf-linker how to generate code.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(error) => println!(
            "cargo:warning=bpf-linker not found ({error}); run `cargo xtask setup` to install it"
        ),
    }
    // bpf-linker passes --bpf-expand-memcpy-in-order to LLVM by default, which
    // turns off LLVM's inline expansion of memset: every zeroed struct then
    // became a call to a byte-at-a-time memset loop (51 iterations to clear a
    // parsed packet). With the expansion on, zeroing is a few 8-byte stores;
    // the per-packet cost fell from 101 to 75 ns above an empty program.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
