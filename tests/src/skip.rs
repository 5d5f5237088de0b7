//! Visible skips. libtest has no "skipped" outcome, so a skipped test returns
//! early (counted as passed by libtest) and leaves a marker file naming the
//! test and the reason in `$VMBW_SKIP_DIR`; `cargo xtask test` counts those
//! as skipped and prints the reasons.

use std::{path::Path, process::Command, sync::OnceLock};

/// Environment variable naming the directory for skip markers.
pub const SKIP_DIR_ENV: &str = "VMBW_SKIP_DIR";

/// Records that the current test is skipped and why.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unknown-test");
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(dir) = std::env::var_os(SKIP_DIR_ENV) {
        let file = test.replace("::", "__");
        // A marker that cannot be written must not pass as a silent success.
        if let Err(e) = std::fs::write(Path::new(&dir).join(file), reason) {
            panic!("cannot write skip marker for {test} in {dir:?}: {e}");
        }
    }
}

/// Whether this process may run the privileged tests: root, `ip` with netns
/// support, and a kernel that loads tc BPF programs. Checked once.
pub fn privileged() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT.get_or_init(check_privileged).clone()
}

fn check_privileged() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, BPF, tc)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => return Err("iproute2 `ip` is missing (run `cargo xtask setup`)".into()),
    }
    match aya::sys::is_program_supported(aya::programs::ProgramType::SchedClassifier) {
        Ok(true) => Ok(()),
        Ok(false) => Err("the kernel does not load tc (sched_cls) BPF programs".into()),
        Err(e) => Err(format!("probing BPF support failed: {e}")),
    }
}
