//! A private bpffs instance for a test: mounted on a fresh directory,
//! unmounted (lazily) and removed on drop. Lets tests pin "persistently"
//! without touching /sys/fs/bpf.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct BpffsMount {
    dir: PathBuf,
}

impl BpffsMount {
    pub fn new() -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmbw-t{}-{n}-bpffs", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let c = CString::new(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid C strings; mounts a new bpffs on our own directory.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            anyhow::bail!("mounting bpffs on {}: {e}", dir.display());
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string naming our own mount.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
