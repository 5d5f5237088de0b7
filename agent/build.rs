//! Builds the eBPF object (`agent-ebpf`, crate `vmbw-ebpf`) for
//! bpfel-unknown-none with the nightly toolchain and bpf-linker, and leaves it
//! in OUT_DIR where `datapath` embeds it.

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../agent-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("eBPF crate not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .context("eBPF crate path is not valid UTF-8")?;

    // aya-build watches the eBPF crate only; the kernel programs also compile
    // the shared crate's parser, classifier and EDT code.
    let common_dir = std::path::Path::new(&manifest_dir).join("../common");
    println!("cargo:rerun-if-changed={}", common_dir.display());

    if std::env::var_os("AYA_BUILD_SKIP").is_none() && which_bpf_linker().is_none() {
        bail!(
            "bpf-linker is not on PATH; it is needed to build vmbw's eBPF programs. \
             Run `cargo xtask setup` (installs bpf-linker 0.13 against LLVM 22, nightly rust-src)."
        );
    }

    aya_build::build_ebpf(
        [aya_build::Package {
            name: "vmbw-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF object failed (is `cargo xtask setup` done?)")
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}
