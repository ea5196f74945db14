//! A notification: what happened to a GitSync, and its text.
use serde::Serialize;

use super::event::EventKind;

/// What a sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub created: usize,
    pub configured: usize,
    pub pruned: usize,
    pub unchanged: usize,
}

pub use crate::source::CommitInfo;

/// One thing to tell: built by the controller from a sync's report, sent to every receiver of
/// the GitSync that asked for its event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    pub namespace: String,
    pub name: String,
    pub event: EventKind,
    pub revision: Option<String>,
    /// One or a few lines: what failed, what changed, what was corrected.
    pub message: String,
    pub summary: Option<Counts>,
    pub commit: Option<CommitInfo>,
    /// The status page, when the controller knows where people reach it.
    pub url: Option<String>,
    /// RFC 3339.
    pub time: String,
}

impl Notification {
    /// "homelab/apps: sync failed"
    pub fn title(&self) -> String {
        format!(
            "{}/{}: {}",
            self.namespace,
            self.name,
            self.event.headline()
        )
    }

    /// The message with the revision, the commit and the counts, as plain text lines.
    pub fn text(&self) -> String {
        let mut lines = vec![self.message.clone()];
        if let Some(revision) = &self.revision {
            let short = short_revision(revision);
            match &self.commit {
                Some(c) => lines.push(format!("revision {short}: {} ({})", c.subject, c.author)),
                None => lines.push(format!("revision {short}")),
            }
        }
        if let Some(s) = &self.summary {
            lines.push(format!(
                "{} created, {} configured, {} pruned, {} unchanged",
                s.created, s.configured, s.pruned, s.unchanged
            ));
        }
        lines.join("\n")
    }
}

/// The first 12 characters of a commit id (of a content hash after `sha256:`).
pub fn short_revision(revision: &str) -> &str {
    let r = revision.strip_prefix("sha256:").unwrap_or(revision);
    r.get(..12).unwrap_or(r)
}

/// Cuts `text` to at most `max` characters, marking the cut.
pub fn truncated(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A notification for unit tests.
#[cfg(test)]
pub(crate) fn sample() -> Notification {
    Notification {
        namespace: "homelab".into(),
        name: "apps".into(),
        event: EventKind::Applied,
        revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
        message: "revision 0123456789ab applied".into(),
        summary: Some(Counts {
            created: 2,
            configured: 1,
            pruned: 1,
            unchanged: 7,
        }),
        commit: Some(CommitInfo {
            subject: "rails: 3 replicas".into(),
            author: "Hanako Yamada".into(),
        }),
        url: Some("https://kubesync.home.example/".into()),
        time: "2026-12-03T03:00:00Z".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_name_parses_back() {
        for e in EventKind::ALL {
            assert_eq!(EventKind::parse(e.as_str()), Some(e));
            let json = serde_json::to_value(e).unwrap();
            assert_eq!(json, serde_json::json!(e.as_str()));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn text_carries_revision_commit_and_counts() {
        let n = sample();
        assert_eq!(n.title(), "homelab/apps: applied");
        assert_eq!(
            n.text(),
            "revision 0123456789ab applied\nrevision 0123456789ab: rails: 3 replicas (Hanako Yamada)\n\
             2 created, 1 configured, 1 pruned, 7 unchanged"
        );
    }

    #[test]
    fn truncation_marks_the_cut_and_counts_characters() {
        assert_eq!(truncated("abc", 3), "abc");
        assert_eq!(truncated("abcdef", 4), "abc…");
        assert_eq!(truncated("日本語のテキスト", 4), "日本語…");
    }
}
