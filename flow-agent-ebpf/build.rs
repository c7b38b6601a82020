//! Rebuilds the eBPF object when bpf-linker changes (a new LLVM can change codegen).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(error) => println!(
            "cargo:warning=bpf-linker not found ({error}); run `cargo xtask setup` to install it"
        ),
    }
}
