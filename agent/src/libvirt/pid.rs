//! QEMU's pid for a libvirt domain: libvirt's pid file, checked against
//! the process's command line, else a search of `/proc` (see the module
//! docs of [`super`]).

use std::path::{Path, PathBuf};

/// Where libvirt keeps the pid file of `domain` for a connection `uri`
/// (see the module docs); `None` for URIs whose run directory vmbw cannot
/// tell (remote hosts).
pub fn default_pid_file(uri: &str, domain: &str) -> Option<PathBuf> {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let socket = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("socket="))
        .map(PathBuf::from);
    let session = base.ends_with("/session");
    let file = format!("{domain}.pid");
    if let Some(sock) = socket {
        // The socket lives in libvirt's run directory.
        let run = sock.parent()?.to_owned();
        return Some(if session {
            run.join("qemu/run").join(file)
        } else {
            run.join("qemu").join(file)
        });
    }
    let local = base.starts_with("qemu:///") || base.starts_with("qemu+unix:///");
    if !local {
        return None;
    }
    if session {
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")?;
        Some(PathBuf::from(runtime).join("libvirt/qemu/run").join(file))
    } else {
        Some(PathBuf::from("/run/libvirt/qemu").join(file))
    }
}

/// Whether `/proc/<pid>/cmdline` is the QEMU of `domain` (libvirt passes
/// `-name guest=<domain>,...`).
fn is_qemu_of(pid: u32, domain: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| cmdline_names_domain(&c, domain))
        .unwrap_or(false)
}

fn cmdline_names_domain(cmdline: &[u8], domain: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| {
        w[0] == b"-name"
            && std::str::from_utf8(w[1]).is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.strip_prefix("guest=").unwrap_or(part) == domain)
            })
    })
}

/// QEMU's pid for `domain`: the pid file (checked), else a search of
/// `/proc`. The error says what was tried.
pub fn find_qemu_pid(pid_file: Option<&Path>, domain: &str) -> Result<u32, String> {
    let mut tried = Vec::new();
    if let Some(path) = pid_file {
        match std::fs::read_to_string(path) {
            Ok(text) => match text.trim().parse::<u32>() {
                Ok(pid) if is_qemu_of(pid, domain) => return Ok(pid),
                Ok(pid) => tried.push(format!(
                    "{} names pid {pid}, which is not QEMU of {domain}",
                    path.display()
                )),
                Err(_) => tried.push(format!("{} holds no pid", path.display())),
            },
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if is_qemu_of(pid, domain) {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => {
            tried.push(format!("no process in /proc has `-name guest={domain}`"));
            Err(tried.join("; "))
        }
        many => Err(format!(
            "several processes have `-name guest={domain}`: {many:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_by_uri() {
        assert_eq!(
            default_pid_file("qemu:///system", "vm1"),
            Some(PathBuf::from("/run/libvirt/qemu/vm1.pid"))
        );
        assert_eq!(
            default_pid_file(
                "qemu+unix:///session?socket=/tmp/d/run/libvirt/libvirt-sock",
                "vm1"
            ),
            Some(PathBuf::from("/tmp/d/run/libvirt/qemu/run/vm1.pid"))
        );
        assert_eq!(
            default_pid_file(
                "qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock",
                "a_b"
            ),
            Some(PathBuf::from("/var/run/libvirt/qemu/a_b.pid"))
        );
        assert_eq!(default_pid_file("qemu+ssh://host/system", "vm1"), None);
    }

    #[test]
    fn qemu_command_lines_name_their_domain() {
        let cmd = b"/usr/bin/qemu-system-x86_64\0-name\0guest=vm1,debug-threads=on\0-S\0";
        assert!(cmdline_names_domain(cmd, "vm1"));
        assert!(!cmdline_names_domain(cmd, "vm"));
        assert!(!cmdline_names_domain(b"bash\0-c\0guest=vm1\0", "vm1"));
        assert!(cmdline_names_domain(b"qemu\0-name\0vm2\0", "vm2"));
    }
}
