//! Commit statuses on the Git forge: Gitea and Forgejo, GitHub, GitLab. The forge and its API
//! are found from the repository's URL, or set in the GitSync.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::payload::{Request, percent_encode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Forge {
    /// Gitea and Forgejo (same API).
    Gitea,
    Github,
    Gitlab,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Gitea => "gitea",
            Forge::Github => "github",
            Forge::Gitlab => "gitlab",
        }
    }
}

/// The state of a commit status, as kubesync uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Pending,
    Success,
    Failure,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Success => "success",
            State::Failure => "failure",
        }
    }
}

/// A repository on a forge: where its API is, and its owner/name path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repository {
    pub forge: Forge,
    /// The API's root: `https://host/api/v1` (Gitea), `https://api.github.com` or
    /// `https://host/api/v3` (GitHub), `https://host/api/v4` (GitLab).
    pub api: String,
    /// `owner/name` (GitLab: the full group path).
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForgeError {
    #[error("cannot find owner/repository in the URL {0}")]
    Path(String),
    #[error("cannot tell the forge of {0}: set spec.commitStatus.forge (gitea, github or gitlab)")]
    Unknown(String),
}

/// The repository of a Git URL (`https://host/owner/name.git`, `ssh://git@host:22/owner/name`,
/// `git@host:owner/name.git`). `forge` and `api` override what the URL suggests: a host named
/// `github.com` is GitHub, one whose name holds `gitlab` is GitLab, others are Gitea unless set.
pub fn repository(
    url: &str,
    forge: Option<Forge>,
    api: Option<&str>,
) -> Result<Repository, ForgeError> {
    let (scheme, host, path) = split_url(url).ok_or_else(|| ForgeError::Path(url.into()))?;
    let path = path.trim_matches('/').trim_end_matches(".git").to_string();
    if path.split('/').filter(|s| !s.is_empty()).count() < 2 {
        return Err(ForgeError::Path(url.into()));
    }
    let bare_host = host.split(':').next().unwrap_or_default();
    let forge = forge.unwrap_or(if bare_host == "github.com" {
        Forge::Github
    } else if bare_host.contains("gitlab") {
        Forge::Gitlab
    } else {
        Forge::Gitea
    });
    // A forge under a sub-path (https://host/git/owner/name) has its API under it too; the
    // repository is the last two segments (GitLab groups nest: all of it).
    let segments: Vec<&str> = path.split('/').collect();
    let (prefix, repo) = match forge {
        Forge::Gitlab => (String::new(), path.clone()),
        _ => {
            let split = segments.len() - 2;
            (segments[..split].join("/"), segments[split..].join("/"))
        }
    };
    // The web server of an SSH remote is on the same host, over HTTPS.
    let mut web = match scheme {
        "http" | "https" => format!("{scheme}://{host}"),
        _ => format!("https://{bare_host}"),
    };
    if !prefix.is_empty() {
        web = format!("{web}/{prefix}");
    }
    let api = match (api, forge) {
        (Some(api), _) => api.trim_end_matches('/').to_string(),
        (None, Forge::Github) if bare_host == "github.com" => "https://api.github.com".into(),
        (None, Forge::Github) => format!("{web}/api/v3"),
        (None, Forge::Gitea) => format!("{web}/api/v1"),
        (None, Forge::Gitlab) => format!("{web}/api/v4"),
    };
    Ok(Repository {
        forge,
        api,
        path: repo,
    })
}

/// (scheme, host[:port], path) of a Git URL, scp-like SSH included; credentials dropped.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_at(rest.find('/')?);
        let host = authority.rsplit('@').next()?;
        return Some((scheme, host, path));
    }
    // git@host:owner/name.git
    let (authority, path) = url.split_once(':')?;
    let host = authority.rsplit('@').next()?;
    Some(("ssh", host, path))
}

/// The request that sets `state` on `commit`. `context` names the check (one per GitSync),
/// `description` is cut to 140 characters (GitHub's limit).
pub fn status_request(
    repo: &Repository,
    token: &str,
    commit: &str,
    state: State,
    context: &str,
    description: &str,
    target_url: Option<&str>,
) -> Request {
    let description = super::message::truncated(description, 140);
    match repo.forge {
        Forge::Gitea | Forge::Github => {
            let url = format!("{}/repos/{}/statuses/{commit}", repo.api, repo.path);
            let mut body = json!({
                "state": state.as_str(),
                "context": context,
                "description": description,
            });
            if let Some(link) = target_url {
                body["target_url"] = json!(link);
            }
            let auth = match repo.forge {
                Forge::Github => format!("Bearer {token}"),
                _ => format!("token {token}"),
            };
            Request {
                method: "POST",
                url,
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("accept", "application/json".into()),
                    ("authorization", auth),
                ],
                body: body.to_string().into_bytes(),
            }
        }
        Forge::Gitlab => {
            let gitlab_state = match state {
                State::Pending => "running",
                State::Success => "success",
                State::Failure => "failed",
            };
            let mut body = json!({
                "state": gitlab_state,
                "name": context,
                "description": description,
            });
            if let Some(link) = target_url {
                body["target_url"] = json!(link);
            }
            Request {
                method: "POST",
                url: format!(
                    "{}/projects/{}/statuses/{commit}",
                    repo.api,
                    percent_encode(&repo.path)
                ),
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("private-token", token.into()),
                ],
                body: body.to_string().into_bytes(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(url: &str) -> Repository {
        repository(url, None, None).unwrap()
    }

    #[test]
    fn forge_and_api_come_from_the_url() {
        assert_eq!(
            repo("https://github.com/hanako/homelab.git"),
            Repository {
                forge: Forge::Github,
                api: "https://api.github.com".into(),
                path: "hanako/homelab".into()
            }
        );
        assert_eq!(
            repo("git@github.com:hanako/homelab.git").api,
            "https://api.github.com"
        );
        let gitea = repo("http://127.0.0.1:3000/hanako/homelab.git");
        assert_eq!(gitea.forge, Forge::Gitea);
        assert_eq!(gitea.api, "http://127.0.0.1:3000/api/v1");
        let ssh = repo("ssh://git@git.home.lan:2222/hanako/homelab.git");
        assert_eq!(ssh.api, "https://git.home.lan/api/v1");
        let lab = repo("https://gitlab.com/group/sub/homelab.git");
        assert_eq!(
            (lab.forge, lab.path.as_str()),
            (Forge::Gitlab, "group/sub/homelab")
        );
        assert_eq!(lab.api, "https://gitlab.com/api/v4");
        let sub = repo("https://home.lan/git/hanako/homelab");
        assert_eq!(sub.api, "https://home.lan/git/api/v1");
        assert_eq!(sub.path, "hanako/homelab");
        let set = repository(
            "ssh://git@git.home.lan:2222/hanako/homelab.git",
            Some(Forge::Github),
            Some("https://ghe.home.lan/api/v3/"),
        )
        .unwrap();
        assert_eq!(set.api, "https://ghe.home.lan/api/v3");
        assert!(repository("https://host/onlyone", None, None).is_err());
        assert!(repository("not a url", None, None).is_err());
    }

    #[test]
    fn requests_follow_each_forges_api() {
        let gitea = repo("http://127.0.0.1:3000/hanako/homelab.git");
        let r = status_request(
            &gitea,
            "t0k",
            "abc",
            State::Success,
            "kubesync/apps",
            "applied",
            Some("http://s/"),
        );
        assert_eq!(
            r.url,
            "http://127.0.0.1:3000/api/v1/repos/hanako/homelab/statuses/abc"
        );
        assert_eq!(r.header("authorization"), Some("token t0k"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["state"], "success");
        assert_eq!(body["target_url"], "http://s/");

        let r = status_request(
            &repo("https://github.com/a/b"),
            "t",
            "abc",
            State::Pending,
            "c",
            &"x".repeat(300),
            None,
        );
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["description"].as_str().unwrap().chars().count(), 140);
        assert!(body.get("target_url").is_none());

        let r = status_request(
            &repo("https://gitlab.com/g/s/p"),
            "t",
            "abc",
            State::Failure,
            "c",
            "d",
            None,
        );
        assert_eq!(
            r.url,
            "https://gitlab.com/api/v4/projects/g%2Fs%2Fp/statuses/abc"
        );
        assert_eq!(r.header("private-token"), Some("t"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["state"], "failed");
    }
}
