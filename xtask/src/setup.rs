//! `cargo xtask setup`: everything the build, tests and demo need, installed
//! idempotently. Each step says what it checks and skips what is present.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{self, cache_dir, output, step};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Skip fetching the test-guest kernel (build and kernel tests only).
    #[arg(long)]
    pub no_guest: bool,
}

/// Debian packages and why each is needed.
const DEB_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libpolly-22-dev", "bpf-linker's LLVM 22 link"),
    ("libzstd-dev", "bpf-linker's LLVM 22 link"),
    ("zlib1g-dev", "bpf-linker's LLVM 22 link"),
    ("iproute2", "ip/tc for test namespaces and tc checks"),
    ("iperf3", "TCP goodput measurements in shaping tests"),
    ("busybox-static", "the test guest's initramfs userland"),
    ("cpio", "packing the test guest's initramfs"),
    (
        "prometheus",
        "a real Prometheus scraping the agent in the agent tests",
    ),
    (
        "libc6-dev",
        "static libc for the test guest's workload (crt-static)",
    ),
    ("pkg-config", "virt-sys finds libvirt with it"),
    (
        "python3-pip",
        "installs kubernetes-validate, the outside judge of deploy/",
    ),
    (
        "systemd",
        "systemd-analyze judges deploy/systemd/vmbw.service (verify, security --offline)",
    ),
];

/// The schema checker the test suite runs on deploy/ (PyPI), pinned.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The policy checker the test suite runs on deploy/ (PyPI), pinned. In
/// its own virtualenv: its pins (botocore, ...) would fight other tools'.
const CHECKOV: &str = "checkov==3.3.30";
/// The schema checker for deploy/'s custom resources (npm), pinned: models
/// generated from prometheus-operator's own CRDs, and a YAML parser.
/// kubernetes-validate has schemas only for the built-in kinds.
const CRD_MODELS: &[(&str, &str)] = &[
    ("@kubernetes-models/prometheus-operator", "6.0.0"),
    ("yaml", "2.9.1"),
];

/// Packages taken from bookworm-backports: QEMU 10 (the QEMU users run
/// today; 7.2 in bookworm has a TCG dirty-tracking bug fixed in 9.0) and the
/// libvirt built against it. libvirt-dev must match the libvirt0 the daemon
/// pulls in, so it comes from the same suite.
const BACKPORTS_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "test guests and live migrations (TCG)"),
    ("libvirt-daemon", "private libvirtd for libvirt tests"),
    ("libvirt-daemon-driver-qemu", "libvirtd's QEMU driver"),
    ("libvirt-dev", "vmbw::libvirt links libvirt (virt-sys)"),
];

/// The oldest QEMU the testbed is measured on.
const QEMU_MIN_MAJOR: u32 = 10;
const BACKPORTS: &str = "bookworm-backports";
/// Where setup writes the backports source when apt has none.
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/vmbw-bookworm-backports.sources";

/// bpf-linker version built against LLVM 22 (the version that builds with it here).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// The guest kernel modules setup fetches (the guest builder loads them).
pub use vmbw_testenv::GUEST_MODULES;

pub fn run(args: &Args) -> anyhow::Result<()> {
    debian_packages()?;
    backports_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    cargo_deb()?;
    kubernetes_validate()?;
    checkov()?;
    crd_models()?;
    if args.no_guest {
        step("guest kernel: skipped (--no-guest)");
    } else {
        guest_kernel()?;
    }
    step("setup complete");
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    step("Debian packages");
    let missing: Vec<&str> = DEB_PACKAGES
        .iter()
        .filter(|(pkg, _)| !deb_installed(pkg))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        println!("    all {} present", DEB_PACKAGES.len());
        return Ok(());
    }
    for (pkg, why) in DEB_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("    missing {pkg} ({why})");
    }
    if !util::is_root() {
        bail!(
            "Debian packages missing: {}. Install them as root: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
    .context("installing Debian packages")?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !deb_installed(p)).collect();
    if !still.is_empty() {
        bail!(
            "apt-get ran but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// kubernetes-validate from PyPI (a package registry, reachable from CI).
fn kubernetes_validate() -> anyhow::Result<()> {
    step("kubernetes-validate (PyPI)");
    if util::status(Command::new("kubernetes-validate").arg("--version")).is_ok_and(|s| s.success())
    {
        println!("    present");
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "kubernetes-validate missing. Install it: python3 -m pip install {KUBERNETES_VALIDATE}"
        );
    }
    // Debian marks its Python as externally managed (PEP 668); this one
    // command-line tool goes beside it.
    util::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--break-system-packages",
        KUBERNETES_VALIDATE,
    ]))
    .context("installing kubernetes-validate with pip")
}

/// checkov's executable in its virtualenv under the cache.
pub fn checkov_bin() -> anyhow::Result<PathBuf> {
    Ok(cache_dir()?.join("checkov-venv/bin/checkov"))
}

/// checkov from PyPI into its own virtualenv.
fn checkov() -> anyhow::Result<()> {
    step(&format!("{CHECKOV} (PyPI, own virtualenv)"));
    let bin = checkov_bin()?;
    let want = CHECKOV.trim_start_matches("checkov==");
    if let Some(v) = output(Command::new(&bin).arg("--version"))
        && v.trim() == want
    {
        println!("    present: {}", bin.display());
        return Ok(());
    }
    let venv = bin
        .parent()
        .and_then(Path::parent)
        .context("checkov's virtualenv directory")?;
    util::run(Command::new("python3").args(["-m", "venv"]).arg(venv))
        .context("creating checkov's virtualenv (python3 -m venv)")?;
    util::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", CHECKOV]))
        .context("installing checkov with pip")
}

/// The node_modules the custom-resource check (xtask/scripts/crd-check.mjs)
/// imports from.
pub fn crd_models_dir() -> anyhow::Result<PathBuf> {
    Ok(util::cache_dir()?.join("crd-models/node_modules"))
}

/// The CRD models from the npm registry into their own prefix, with the
/// machine's Node.js.
fn crd_models() -> anyhow::Result<()> {
    step("custom-resource schemas (npm: @kubernetes-models/prometheus-operator)");
    let modules = crd_models_dir()?;
    let installed = |name: &str| -> Option<String> {
        let text = std::fs::read_to_string(modules.join(name).join("package.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["version"].as_str().map(str::to_owned)
    };
    if CRD_MODELS
        .iter()
        .all(|(name, v)| installed(name).as_deref() == Some(*v))
    {
        println!("    present: {}", modules.display());
        return Ok(());
    }
    if output(Command::new("node").arg("--version")).is_none() {
        bail!("Node.js is missing (node --version failed); install Debian's nodejs and npm");
    }
    let prefix = modules.parent().context("the models' npm prefix")?;
    util::run(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(prefix)
            .args(CRD_MODELS.iter().map(|(name, v)| format!("{name}@{v}"))),
    )
    .context("installing the CRD models with npm")
}

/// QEMU and libvirt from bookworm-backports. Adds the suite to apt's sources
/// if no source names it yet (same mirror and keyring as bookworm), and says
/// so; installs or upgrades the packages whose installed version is not the
/// suite's.
fn backports_packages() -> anyhow::Result<()> {
    step(&format!(
        "QEMU >= {QEMU_MIN_MAJOR} and libvirt from {BACKPORTS}"
    ));
    let stale: Vec<&str> = BACKPORTS_PACKAGES
        .iter()
        .filter(|(pkg, _)| !deb_version(pkg).is_some_and(|v| v.contains("bpo12")))
        .map(|(pkg, _)| *pkg)
        .collect();
    if stale.is_empty() && qemu_major().is_some_and(|m| m >= QEMU_MIN_MAJOR) {
        println!(
            "    present: qemu-system-x86 {}",
            deb_version("qemu-system-x86").unwrap_or_default()
        );
        return Ok(());
    }
    for (pkg, why) in BACKPORTS_PACKAGES.iter().filter(|(p, _)| stale.contains(p)) {
        match deb_version(pkg) {
            Some(v) => println!("    {pkg} {v} is not the {BACKPORTS} build ({why})"),
            None => println!("    missing {pkg} ({why})"),
        }
    }
    if !util::is_root() {
        bail!(
            "add {BACKPORTS} to apt's sources and install as root: apt-get install -y -t {BACKPORTS} {}",
            stale.join(" ")
        );
    }
    if apt_has_backports() {
        println!("    apt sources already name {BACKPORTS}");
    } else {
        fs::write(
            BACKPORTS_SOURCES,
            "# Added by `cargo xtask setup` (vmbw): QEMU 10 and libvirt 11 for the testbed.\n\
             Types: deb\n\
             URIs: http://deb.debian.org/debian\n\
             Suites: bookworm-backports\n\
             Components: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .with_context(|| format!("writing {BACKPORTS_SOURCES}"))?;
        println!("    changed apt sources: wrote {BACKPORTS_SOURCES} ({BACKPORTS}, main)");
    }
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(["-t", BACKPORTS])
            .args(&stale),
    )
    .with_context(|| format!("installing {} from {BACKPORTS}", stale.join(" ")))?;
    match qemu_major() {
        Some(m) if m >= QEMU_MIN_MAJOR => {
            println!(
                "    qemu-system-x86 {}",
                deb_version("qemu-system-x86").unwrap_or_default()
            );
            Ok(())
        }
        other => bail!(
            "after installing from {BACKPORTS}, qemu-system-x86_64 reports major version {other:?}, want >= {QEMU_MIN_MAJOR}"
        ),
    }
}

/// Whether any apt source (one-line or deb822) already names the suite.
fn apt_has_backports() -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(Result::ok).map(|e| e.path()));
    }
    files.iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|text| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.split_whitespace().any(|w| w == BACKPORTS))
        })
    })
}

fn deb_version(pkg: &str) -> Option<String> {
    let out = output(Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", pkg]))?;
    let version = out.strip_prefix("install ok installed ")?;
    Some(version.trim().to_owned())
}

/// The major version `qemu-system-x86_64 --version` reports.
fn qemu_major() -> Option<u32> {
    let out = output(Command::new("qemu-system-x86_64").arg("--version"))?;
    let version = out
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)?;
    version.split('.').next()?.parse().ok()
}

fn deb_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn nightly_rust_src() -> anyhow::Result<()> {
    step("nightly toolchain with rust-src (eBPF target: -Z build-std=core)");
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context(
        "rustup not found: vmbw builds with rustup-managed stable and nightly toolchains",
    )?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("installing the nightly toolchain")?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("    present");
        return Ok(());
    }
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("adding rust-src to nightly")
}

fn bpf_linker() -> anyhow::Result<()> {
    step(&format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"));
    let have = output(Command::new("bpf-linker").arg("--version"));
    if let Some(v) = &have {
        if v.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
            println!("    present: {}", v.trim());
            return Ok(());
        }
        println!(
            "    found {}, want {BPF_LINKER_VERSION}: reinstalling",
            v.trim()
        );
    }
    if !Path::new(LLVM_BIN).join("llvm-config").exists() {
        bail!("{LLVM_BIN}/llvm-config is missing: install llvm-22-dev (cargo xtask setup does)");
    }
    println!("    building from crates.io (about 2 minutes)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    util::run(
        Command::new("cargo")
            .env("PATH", path)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("building bpf-linker")
}

/// cargo-fuzz, which builds and runs the fuzz targets (`cargo xtask fuzz`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// cargo-deb, which packages the agent (`cargo xtask deb`).
const CARGO_DEB_VERSION: &str = "3.8.0";

fn cargo_fuzz() -> anyhow::Result<()> {
    cargo_tool("cargo-fuzz", "fuzz", CARGO_FUZZ_VERSION)
}

fn cargo_deb() -> anyhow::Result<()> {
    cargo_tool("cargo-deb", "deb", CARGO_DEB_VERSION)
}

/// Installs cargo subcommand `krate` (`cargo SUBCOMMAND`) at `version`
/// from crates.io unless that version is present.
fn cargo_tool(krate: &str, subcommand: &str, version: &str) -> anyhow::Result<()> {
    step(&format!("{krate} {version}"));
    let have = output(Command::new("cargo").args([subcommand, "--version"]));
    if let Some(v) = &have
        && v.split_whitespace().any(|w| w == version)
    {
        println!("    present: {}", v.trim());
        return Ok(());
    }
    println!("    building from crates.io (a few minutes)");
    util::run(Command::new("cargo").args([
        "install",
        krate,
        "--version",
        version,
        "--locked",
        "--force",
    ]))
    .with_context(|| format!("building {krate}"))
}

/// Where the test-guest kernel and its modules are kept.
pub fn guest_dir() -> anyhow::Result<PathBuf> {
    Ok(cache_dir()?.join("guest"))
}

/// Downloads Debian's cloud kernel (the package `linux-image-cloud-amd64`
/// points at) and keeps vmlinuz plus the virtio modules in the cache.
fn guest_kernel() -> anyhow::Result<()> {
    step("test-guest kernel (Debian linux-image-*-cloud-amd64)");
    let dir = guest_dir()?;
    let stamp = dir.join("kernel-package");
    if let Ok(pkg) = fs::read_to_string(&stamp)
        && dir.join("vmlinuz").exists()
        && GUEST_MODULES
            .iter()
            .all(|m| dir.join("modules").join(format!("{m}.ko")).exists())
    {
        println!("    present: {} in {}", pkg.trim(), dir.display());
        return Ok(());
    }
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))
        .context("apt-cache cannot resolve linux-image-cloud-amd64 (run apt-get update?)")?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_owned)
        .context("linux-image-cloud-amd64 names no kernel package")?;
    let work = dir.join("download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    util::run(
        Command::new("apt-get")
            .current_dir(&work)
            .args(["download", &pkg]),
    )
    .with_context(|| format!("downloading {pkg}"))?;
    let deb = fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", work.display()))?;
    let tree = work.join("tree");
    util::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;

    let vmlinuz = find_file(&tree.join("boot"), |n| n.starts_with("vmlinuz-"))
        .with_context(|| format!("{pkg} has no boot/vmlinuz-*"))?;
    fs::copy(&vmlinuz, dir.join("vmlinuz"))?;
    let modules_out = dir.join("modules");
    fs::create_dir_all(&modules_out)?;
    for m in GUEST_MODULES {
        let want = format!("{m}.ko");
        let found = find_file(&tree.join("lib/modules"), |n| n == want)
            .with_context(|| format!("{pkg} has no module {want}"))?;
        fs::copy(&found, modules_out.join(&want))?;
    }
    fs::write(&stamp, format!("{pkg}\n"))?;
    fs::remove_dir_all(&work)?;
    println!("    installed {pkg} into {}", dir.display());
    Ok(())
}

/// Depth-first search for a file whose name satisfies `pred`.
fn find_file(root: &Path, pred: impl Fn(&str) -> bool + Copy) -> Option<PathBuf> {
    for entry in fs::read_dir(root).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(p) = find_file(&path, pred) {
                return Some(p);
            }
        } else if entry.file_name().to_str().is_some_and(pred) {
            return Some(path);
        }
    }
    None
}
