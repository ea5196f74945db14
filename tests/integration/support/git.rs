//! Real Git repositories and a `git daemon` serving them.
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command};

/// A working repository with a bare remote that tests push to.
pub struct GitRepo {
    pub root: tempfile::TempDir,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitRepo {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("work")).expect("mkdir");
        git(
            root.path(),
            &["init", "-q", "--bare", "-b", "main", "remote.git"],
        );
        git(&root.path().join("work"), &["init", "-q", "-b", "main"]);
        git(
            &root.path().join("work"),
            &["remote", "add", "origin", "../remote.git"],
        );
        GitRepo { root }
    }

    pub fn work(&self) -> PathBuf {
        self.root.path().join("work")
    }

    pub fn remote(&self) -> PathBuf {
        self.root.path().join("remote.git")
    }

    pub fn write(&self, path: &str, content: &str) -> &Self {
        let full = self.work().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, content).expect("write");
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        git(&self.work(), &["rm", "-q", path]);
        self
    }

    /// Commits everything and pushes; returns the commit id.
    pub fn commit_and_push(&self, message: &str) -> String {
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-q", "-m", message]);
        git(&self.work(), &["push", "-q", "-f", "origin", "HEAD:main"]);
        git(&self.work(), &["rev-parse", "HEAD"])
    }
}

pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    /// The URL of the repository it serves (`remote.git` under its base path).
    pub fn url(&self) -> String {
        format!("git://127.0.0.1:{}/remote.git", self.port)
    }

    pub fn start(base: &Path) -> GitDaemon {
        Self::start_on(base, free_port())
    }

    /// On a given port (to restart a stopped daemon where its clients expect it).
    pub fn start_on(base: &Path, port: u16) -> GitDaemon {
        // Run git-daemon itself: `git daemon` would leave it running when killed.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
            ])
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon starts (is git installed?)");
        let mut daemon = GitDaemon { child, port };
        crate::support::wait_for_listener(&mut daemon.child, port, "git daemon");
        daemon
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
