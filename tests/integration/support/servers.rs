//! Git servers from Debian: lighttpd with git http-backend (HTTPS, basic auth) and sshd.
use std::process::Stdio;

use super::git::{free_port, git};
use super::run;
use std::path::Path;
use std::process::{Child, Command};

pub const USER: &str = "alice";

pub const PASSWORD: &str = "tok3n-Zq9-never-printed";

pub struct Lighttpd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Lighttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// lighttpd serving `git http-backend` for the repositories under `project_root` at `/git/`,
/// requiring basic auth.
pub fn start_lighttpd(project_root: &Path) -> Lighttpd {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_certificates(d);
    std::fs::create_dir_all(d.join("www")).expect("docroot");
    std::fs::write(d.join("users"), format!("{USER}:{PASSWORD}\n")).expect("users");
    let exec_path = git(project_root, &["--exec-path"]);
    let port = free_port();
    let config = format!(
        r#"server.modules = ("mod_alias", "mod_setenv", "mod_auth", "mod_authn_file", "mod_cgi", "mod_openssl")
server.document-root = "{www}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{d}/error.log"
ssl.engine = "enable"
ssl.pemfile = "{d}/server.pem"
ssl.privkey = "{d}/server.key"
auth.backend = "plain"
auth.backend.plain.userfile = "{d}/users"
auth.require = ("/git/" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
alias.url = ("/git/" => "{exec_path}/git-http-backend/")
$HTTP["url"] =~ "^/git/" {{
  cgi.assign = ("" => "")
  setenv.add-environment = ("GIT_PROJECT_ROOT" => "{root}", "GIT_HTTP_EXPORT_ALL" => "1")
}}
"#,
        www = d.join("www").display(),
        d = d.display(),
        root = project_root.display(),
    );
    spawn_lighttpd(dir, port, &config)
}

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_sshd() -> Sshd {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    keygen(&d.join("host_key"));
    keygen(&d.join("client_key"));
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
    std::fs::create_dir_all("/run/sshd").expect("privilege separation directory");
    let port = free_port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n",
        hk = d.join("host_key").display(),
        ak = d.join("authorized_keys").display(),
        pid = d.join("sshd.pid").display(),
    );
    std::fs::write(d.join("sshd_config"), config).expect("config");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd starts (openssh-server installed?)");
    let mut sshd = Sshd { child, port, dir };
    crate::support::wait_for_listener(&mut sshd.child, port, "sshd");
    sshd
}

/// lighttpd serving `dir/www` over HTTPS (the CA in `dir/ca.pem`), requiring basic auth for
/// everything under `/charts/`: a Helm chart repository.
pub fn start_chart_repository() -> Lighttpd {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_certificates(d);
    std::fs::create_dir_all(d.join("www/charts")).expect("docroot");
    std::fs::write(d.join("users"), format!("{USER}:{PASSWORD}\n")).expect("users");
    let port = free_port();
    let config = format!(
        r#"server.modules = ("mod_auth", "mod_authn_file", "mod_openssl")
server.document-root = "{d}/www"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{d}/error.log"
mimetype.assign = (".yaml" => "application/x-yaml", ".tgz" => "application/gzip")
ssl.engine = "enable"
ssl.pemfile = "{d}/server.pem"
ssl.privkey = "{d}/server.key"
auth.backend = "plain"
auth.backend.plain.userfile = "{d}/users"
auth.require = ("/charts/" => ("method" => "basic", "realm" => "charts", "require" => "valid-user"))
"#,
        d = d.display(),
    );
    spawn_lighttpd(dir, port, &config)
}

/// The CNCF distribution registry (the testbed's build) over HTTPS (the CA in `dir/ca.pem`),
/// with basic auth (`USER`, `PASSWORD`): an OCI registry for Helm charts.
pub fn start_registry() -> Lighttpd {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_certificates(d);
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    std::fs::write(d.join("htpasswd"), format!("{USER}:{hash}\n")).expect("htpasswd");
    let port = free_port();
    let config = format!(
        "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {d}/data}}}}\n\
         http: {{addr: \"127.0.0.1:{port}\", tls: {{certificate: {d}/server.pem, key: {d}/server.key}}}}\n\
         auth: {{htpasswd: {{realm: registry, path: {d}/htpasswd}}}}\n",
        d = d.display(),
    );
    std::fs::write(d.join("config.yml"), config).expect("config");
    let child = Command::new("registry")
        .arg("serve")
        .arg(d.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("registry.log")).expect("log"))
        .spawn()
        .expect("registry starts (tests/testbed/build registry, the testbed's PATH)");
    let mut server = Lighttpd { child, port, dir };
    crate::support::wait_for_listener(&mut server.child, port, "registry");
    server
}

/// Runs lighttpd with `config` from `dir` (which it keeps) and waits for it to listen on `port`.
fn spawn_lighttpd(dir: tempfile::TempDir, port: u16, config: &str) -> Lighttpd {
    let d = dir.path();
    std::fs::write(d.join("lighttpd.conf"), config).expect("config");
    let child = Command::new("lighttpd")
        .args(["-D", "-f"])
        .arg(d.join("lighttpd.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("lighttpd starts (lighttpd and lighttpd-mod-openssl installed?)");
    let mut server = Lighttpd { child, port, dir };
    crate::support::wait_for_listener(&mut server.child, port, "lighttpd");
    server
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kubesync test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs (openssh-client installed?)");
    assert!(status.success());
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}
