//! One agent per host (per uplink tree): a second `vmbw agent` with the
//! same state directory refuses to start and names the one that runs,
//! instead of both attaching programs and rewriting one HTB tree.
//!
//! The lock is `flock(2)` on `<[shaping] state_dir>/agent.lock`, which
//! holds the owner's pid. The kernel drops it when the process ends, however
//! it ends, so a killed agent leaves no stale lock. The file itself stays:
//! removing it on exit would let a third agent lock a new file while a
//! second still holds the old one.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

/// Held for the agent's lifetime.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another vmbw agent (pid {holder}) runs with this state directory: {} is locked. \
         Stop it first, or give this agent its own [shaping] state_dir, uplink and pin_dir",
        path.display()
    )]
    Held { path: PathBuf, holder: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Takes the lock in `dir` (created if missing) and writes this process's
/// pid into it.
pub fn acquire(dir: &Path) -> Result<AgentLock, LockError> {
    let path = dir.join("agent.lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|source| LockError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(err));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "unknown".to_owned(),
            pid => pid.to_owned(),
        };
        return Err(LockError::Held { path, holder });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(AgentLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_one_s_pid() {
        let dir = std::env::temp_dir().join(format!("vmbw-lock-{}", std::process::id()));
        let first = acquire(&dir).expect("first");
        let e = acquire(&dir).expect_err("second");
        let text = e.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("agent.lock"), "{text}");
        drop(first);
        let again = acquire(&dir).expect("free again once the first is gone");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
