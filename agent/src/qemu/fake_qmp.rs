//! Test support: fake QMP sockets in the temp dir.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

pub const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"#;

/// A socket path in the temp dir, removed when dropped.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl std::ops::Deref for SocketFile {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

pub fn socket_path() -> SocketFile {
    static N: AtomicU32 = AtomicU32::new(0);
    SocketFile(std::env::temp_dir().join(format!(
        "vmbw-qmp-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )))
}
