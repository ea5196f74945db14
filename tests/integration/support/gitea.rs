//! A real Git forge for the tests: Gitea (the testbed's build, `tests/testbed/build gitea`) on
//! loopback with SQLite, an admin made by its CLI, everything else through its HTTP API.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::git::free_port;

const ADMIN: &str = "forge-admin";
const ADMIN_PASSWORD: &str = "Adm1n-passw0rd-for-tests";

pub struct Gitea {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Gitea {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user of the forge with an API token.
pub struct ForgeUser {
    pub name: String,
    pub token: String,
}

impl Gitea {
    pub fn start() -> Gitea {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = app_ini(dir.path(), port);
        std::fs::create_dir_all(dir.path().join("custom/conf")).expect("conf dir");
        let ini = dir.path().join("custom/conf/app.ini");
        std::fs::write(&ini, config).expect("app.ini");
        let gitea = |args: &[&str]| {
            let mut c = Command::new("gitea");
            c.arg("--config").arg(&ini).args(args);
            c.env("GITEA_WORK_DIR", dir.path()).env("HOME", dir.path());
            c
        };
        super::run(&mut gitea(&["migrate"]));
        super::run(&mut gitea(&[
            "admin",
            "user",
            "create",
            "--username",
            ADMIN,
            "--password",
            ADMIN_PASSWORD,
            "--email",
            "admin@forge.test",
            "--admin",
            "--must-change-password=false",
        ]));
        let log = std::fs::File::create(dir.path().join("gitea.log")).expect("log");
        let child = gitea(&["web"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("gitea starts (tests/testbed/build gitea, the testbed's PATH)");
        let mut forge = Gitea { child, port, dir };
        super::wait_for_listener(&mut forge.child, port, "gitea");
        for _ in 0..100 {
            if forge.api("GET", "/version", None, None).0 == 200 {
                return forge;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("gitea does not answer /api/v1/version: {}", forge.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gitea.log")).unwrap_or_default()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An API call; `auth`: `Some("token …")` or basic `user:password`. Returns (status, JSON).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
        c.arg(format!("{}/api/v1{path}", self.base()));
        match auth {
            Some(a) if a.starts_with("token ") => {
                c.args(["-H", &format!("authorization: {a}")]);
            }
            Some(basic) => {
                c.args(["-u", basic]);
            }
            None => {}
        }
        if let Some(body) = body {
            c.args([
                "-H",
                "content-type: application/json",
                "-d",
                &body.to_string(),
            ]);
        }
        let out = super::run(&mut c);
        let (json, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        let status = code.trim().parse().unwrap_or(0);
        (status, serde_json::from_str(json).unwrap_or(Value::Null))
    }

    /// A user made by the admin through the API, and a token the user makes for itself.
    pub fn create_user(&self, name: &str) -> ForgeUser {
        let admin = format!("{ADMIN}:{ADMIN_PASSWORD}");
        let password = format!("{name}-Passw0rd-for-tests");
        let (status, body) = self.api(
            "POST",
            "/admin/users",
            Some(&admin),
            Some(json!({"username": name, "password": password, "email": format!("{name}@forge.test"),
                        "must_change_password": false})),
        );
        assert_eq!(status, 201, "creating user {name}: {body}");
        let (status, body) = self.api(
            "POST",
            &format!("/users/{name}/tokens"),
            Some(&format!("{name}:{password}")),
            Some(json!({"name": "kubesync", "scopes": ["write:repository", "write:user"]})),
        );
        assert_eq!(status, 201, "creating a token: {body}");
        ForgeUser {
            name: name.into(),
            token: body["sha1"].as_str().expect("token").into(),
        }
    }

    /// A public repository of `user`, with `main` as default branch.
    pub fn create_repo(&self, user: &ForgeUser, name: &str) -> String {
        let (status, body) = self.api(
            "POST",
            "/user/repos",
            Some(&format!("token {}", user.token)),
            Some(json!({"name": name, "private": false, "default_branch": "main"})),
        );
        assert_eq!(status, 201, "creating repository {name}: {body}");
        format!("{}/{}/{name}.git", self.base(), user.name)
    }

    /// The statuses of `commit` (newest first).
    pub fn statuses(&self, user: &ForgeUser, repo: &str, commit: &str) -> Vec<Value> {
        let (status, body) = self.api(
            "GET",
            &format!("/repos/{}/{repo}/statuses/{commit}", user.name),
            Some(&format!("token {}", user.token)),
            None,
        );
        assert_eq!(status, 200, "reading statuses: {body}");
        body.as_array().cloned().unwrap_or_default()
    }
}

fn app_ini(dir: &Path, port: u16) -> String {
    // The web assets (templates, locales) are beside the binary (tests/testbed/build gitea).
    let binary = which("gitea");
    let share = binary
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("share"))
        .expect("gitea's share directory");
    format!(
        "APP_NAME = kubesync test forge\nRUN_MODE = prod\nI_AM_BEING_UNSAFE_RUNNING_AS_ROOT = true\n\
         WORK_PATH = {d}\n\
         [database]\nDB_TYPE = sqlite3\nPATH = {d}/data/gitea.db\n\
         [server]\nPROTOCOL = http\nHTTP_ADDR = 127.0.0.1\nHTTP_PORT = {port}\n\
         ROOT_URL = http://127.0.0.1:{port}/\nDISABLE_SSH = true\nOFFLINE_MODE = true\n\
         LFS_START_SERVER = false\nSTATIC_ROOT_PATH = {share}\nAPP_DATA_PATH = {d}/data\n\
         [repository]\nROOT = {d}/repos\n\
         [security]\nINSTALL_LOCK = true\nSECRET_KEY = kubesync-tests-only-secret-key\n\
         [service]\nDISABLE_REGISTRATION = true\n\
         [webhook]\nALLOWED_HOST_LIST = loopback\nDELIVER_TIMEOUT = 10\n\
         [log]\nMODE = console\nLEVEL = warn\n\
         [mailer]\nENABLED = false\n[actions]\nENABLED = false\n[indexer]\nREPO_INDEXER_ENABLED = false\n\
         [cron]\nENABLED = false\n[oauth2]\nENABLED = false\n",
        d = dir.display(),
        share = share.display(),
    )
}

/// The real path of an executable on PATH (the testbed links them).
fn which(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| panic!("{name} is not on PATH (tests/testbed/build gitea)"))
}
