//! The render tools kubesync runs (`kustomize`, `helm`): found beside kubesync's own executable or
//! on PATH, and run with bounded output, a time limit (killed when reached) and an address-space
//! limit. The caller clears the environment and sets what the tool may see.
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// Limits of one run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    /// RLIMIT_AS, in bytes.
    pub memory: u64,
    /// Standard output kept; one byte more tells that the output was larger.
    pub max_stdout: u64,
    pub max_stderr: u64,
}

/// How a run ended.
pub enum Ended {
    Exited {
        status: ExitStatus,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    TimedOut,
}

/// The executable `name`: `explicit` if given (a bare name is looked up on PATH), else the one
/// beside kubesync's own executable, else the first on PATH. Returned as a path: the tool's
/// environment has no PATH to look it up with.
pub fn find(explicit: Option<&Path>, name: &str) -> PathBuf {
    let named = match explicit {
        Some(binary) => binary.to_path_buf(),
        None => {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
            match beside {
                Some(path) if path.is_file() => return path,
                _ => PathBuf::from(name),
            }
        }
    };
    if named.components().count() > 1 {
        return named;
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(&named))
        .find(|candidate| candidate.is_file())
        .unwrap_or(named)
}

/// Runs `command` (stdin closed, both pipes read at once so that neither stalls the child, each
/// with its bound) until it exits or `limits.timeout`, when it is killed.
pub async fn run(
    mut command: tokio::process::Command,
    limits: Limits,
) -> Result<Ended, std::io::Error> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    limit_memory(&mut command, limits.memory);
    let mut child = command.spawn()?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        tokio::join!(
            read_bounded(stdout, limits.max_stdout + 1),
            read_bounded(stderr, limits.max_stderr),
            child.wait(),
        )
    };
    // When the time is up, dropping `run` drops the child, which kills it (kill_on_drop).
    let Ok((stdout, stderr, status)) = tokio::time::timeout(limits.timeout, run).await else {
        return Ok(Ended::TimedOut);
    };
    Ok(Ended::Exited {
        status: status?,
        stdout,
        stderr,
    })
}

/// At most `limit` bytes of a pipe; the rest is left unread (the child is killed or exits).
async fn read_bounded(pipe: Option<impl tokio::io::AsyncRead + Unpin>, limit: u64) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.take(limit).read_to_end(&mut bytes).await;
    }
    bytes
}

/// A tool's error: its first non-empty line, without an `Error: ` prefix, with the absolute
/// paths under `root` made relative, at most 1 KiB.
pub fn message(stderr: &[u8], root: &Path, status: &ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let line = line.strip_prefix("Error: ").unwrap_or(line);
    let mut message = line.to_string();
    let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    for prefix in [canonical.as_path(), root] {
        message = message.replace(&format!("{}/", prefix.display()), "");
        message = message.replace(&prefix.display().to_string(), ".");
    }
    const MAX_MESSAGE: usize = 1024;
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    match message.is_empty() {
        true => format!("exited with {status}"),
        false => message,
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_memory(command: &mut tokio::process::Command, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit is async-signal-safe and touches only the child between fork and exec.
    unsafe {
        command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_AS, &limit) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_memory(_command: &mut tokio::process::Command, _bytes: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_the_checkout_path_and_prefix() {
        let root = Path::new("/work/x/checkout");
        let status = ExitStatus::default();
        let stderr = b"Error: accumulating resources: accumulation err='accumulating resources from 'missing.yaml': open /work/x/checkout/app/missing.yaml: no such file or directory'\n";
        assert_eq!(
            message(stderr, root, &status),
            "accumulating resources: accumulation err='accumulating resources from 'missing.yaml': open app/missing.yaml: no such file or directory'"
        );
        assert_eq!(message(b"", root, &status), format!("exited with {status}"));
    }
}
