//! `kubesync diff --output markdown`: what a change in Git will do to the cluster, as a comment
//! for a pull request. Objects to create, change and prune with the fields that change, then
//! the unified diff of each (Secret values already masked by the caller), within the size a
//! forge accepts for a comment.
use std::fmt::Write;

use crate::outcome::Change;

/// Most table rows and most per-object diffs shown; the rest is counted.
const MAX_ROWS: usize = 100;
const MAX_DIFFS: usize = 20;
/// Lines of one object's diff, and characters of the whole comment (forges cap comments near
/// 65,536 characters).
const MAX_DIFF_LINES: usize = 80;
const MAX_CHARS: usize = 60_000;
/// Fields named per object in the table.
const MAX_FIELDS: usize = 6;

/// Takes out what kubesync itself writes on every object (the ApplySet label, the applied-hash
/// annotation), so that a diff shows only what Git changes.
pub fn without_bookkeeping(object: &mut serde_json::Value) {
    let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) else {
        return;
    };
    for (field, key) in [
        ("labels", crate::plan::PART_OF_LABEL),
        ("annotations", crate::apply::HASH_ANNOTATION),
    ] {
        if let Some(map) = meta.get_mut(field).and_then(|m| m.as_object_mut()) {
            map.remove(key);
            if map.is_empty() {
                meta.remove(field);
            }
        }
    }
}

/// A revision as people read it: 12 characters of a commit, or of a content hash after its
/// `sha256:` prefix.
fn short_revision(revision: &str) -> String {
    match revision.strip_prefix("sha256:") {
        Some(hash) => format!("sha256:{}", &hash[..hash.len().min(12)]),
        None => revision[..revision.len().min(12)].to_string(),
    }
}

/// What a change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Create,
    Change,
    Prune,
}

impl Verb {
    fn of(change: &Change) -> Verb {
        match (&change.before, &change.after) {
            (None, _) => Verb::Create,
            (_, None) => Verb::Prune,
            _ => Verb::Change,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Change => "change",
            Verb::Prune => "prune",
        }
    }
}

/// The fields that differ between `before` and `after` (paths, never values).
fn changed_fields(change: &Change) -> Vec<String> {
    let (Some(before), Some(after)) = (&change.before, &change.after) else {
        return Vec::new();
    };
    let mut fields = crate::drift::drifted_fields(after, before);
    for removed in crate::drift::drifted_fields(before, after) {
        if !fields.contains(&removed) {
            fields.push(removed);
        }
    }
    fields.retain(|f| !f.starts_with("and "));
    fields
}

/// The comment: `name` is the sync, `revision` the commit, `unchanged` the objects left as
/// they are; `diffs[i]` is the unified diff of `changes[i]`.
pub fn markdown(
    name: &str,
    revision: &str,
    changes: &[Change],
    diffs: &[String],
    unchanged: usize,
) -> String {
    let short = short_revision(revision);
    let mut out = format!("### kubesync diff: `{name}` at `{short}`\n\n");
    let count = |verb: Verb| changes.iter().filter(|c| Verb::of(c) == verb).count();
    if changes.is_empty() {
        let _ = writeln!(out, "**No changes.** {unchanged} object(s) unchanged.");
        return out;
    }
    let _ = writeln!(
        out,
        "**{} to create, {} to change, {} to prune**; {unchanged} unchanged.\n",
        count(Verb::Create),
        count(Verb::Change),
        count(Verb::Prune)
    );
    out.push_str("| | object | fields |\n|---|---|---|\n");
    for change in changes.iter().take(MAX_ROWS) {
        let fields = changed_fields(change);
        let mut shown: Vec<String> = (fields.iter().take(MAX_FIELDS))
            .map(|f| format!("`{}`", escape(f)))
            .collect();
        if fields.len() > MAX_FIELDS {
            shown.push(format!("and {} more", fields.len() - MAX_FIELDS));
        }
        let _ = writeln!(
            out,
            "| {} | `{}` | {} |",
            Verb::of(change).word(),
            escape(&change.object),
            shown.join(", ")
        );
    }
    if changes.len() > MAX_ROWS {
        let _ = writeln!(out, "\nand {} more object(s).", changes.len() - MAX_ROWS);
    }
    out.push('\n');
    let mut left_out = 0;
    for (i, (change, diff)) in changes.iter().zip(diffs).enumerate() {
        let block = details(change, diff);
        if i >= MAX_DIFFS || out.len() + block.len() > MAX_CHARS {
            left_out += 1;
            continue;
        }
        out.push_str(&block);
    }
    if left_out > 0 {
        let _ = writeln!(
            out,
            "The diffs of {left_out} more object(s) are left out; `kubesync diff` shows them all."
        );
    }
    out
}

/// One object's diff, folded, at most MAX_DIFF_LINES lines.
fn details(change: &Change, diff: &str) -> String {
    let lines: Vec<&str> = diff.lines().collect();
    let mut body = lines[..lines.len().min(MAX_DIFF_LINES)].join("\n");
    if lines.len() > MAX_DIFF_LINES {
        let _ = write!(body, "\n… {} more line(s)", lines.len() - MAX_DIFF_LINES);
    }
    // A fence longer than any backtick run inside the diff.
    let longest = (body.split(|c| c != '`').map(str::len).max()).unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!(
        "<details><summary>{} <code>{}</code></summary>\n\n{fence}diff\n{body}\n{fence}\n\n</details>\n\n",
        Verb::of(change).word(),
        html_escape(&change.object)
    )
}

/// Table cells: no pipes or backticks break out of the cell.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('`', "'")
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(
        object: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> Change {
        Change {
            object: object.into(),
            before,
            after,
        }
    }

    #[test]
    fn bookkeeping_is_taken_out_and_revisions_shortened() {
        let mut object = json!({"metadata": {"name": "a",
            "labels": {"applyset.kubernetes.io/part-of": "applyset-x-v1", "app": "web"},
            "annotations": {"kubesync.dev/applied-hash": "abc"}}});
        without_bookkeeping(&mut object);
        assert_eq!(
            object,
            json!({"metadata": {"name": "a", "labels": {"app": "web"}}})
        );
        assert_eq!(
            short_revision("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_revision("0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn no_change_says_so() {
        let text = markdown("homelab", "0123456789abcdef", &[], &[], 7);
        assert_eq!(
            text,
            "### kubesync diff: `homelab` at `0123456789ab`\n\n**No changes.** 7 object(s) unchanged.\n"
        );
    }

    #[test]
    fn creates_changes_and_prunes_are_counted_with_their_fields() {
        let changes = vec![
            change(
                "deployment.apps/web -n homelab",
                None,
                Some(json!({"spec": {"replicas": 1}})),
            ),
            change(
                "configmap/rails-env -n homelab",
                Some(json!({"data": {"A": "1", "GONE": "x"}})),
                Some(json!({"data": {"A": "2", "NEW": "y"}})),
            ),
            change("service/old -n homelab", Some(json!({"spec": {}})), None),
        ];
        let diffs = vec!["+a".to_string(), "-x\n+y".to_string(), "-s".to_string()];
        let text = markdown("homelab", "abc", &changes, &diffs, 3);
        assert!(
            text.contains("**1 to create, 1 to change, 1 to prune**; 3 unchanged."),
            "{text}"
        );
        assert!(
            text.contains("| create | `deployment.apps/web -n homelab` |  |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| change | `configmap/rails-env -n homelab` | `data.A`, `data.NEW`, `data.GONE` |"
            ),
            "{text}"
        );
        assert!(
            text.contains("<details><summary>prune <code>service/old -n homelab</code></summary>")
        );
        assert!(text.contains("```diff\n-x\n+y\n```"), "{text}");
    }

    #[test]
    fn long_output_is_truncated_within_a_comment() {
        let changes: Vec<Change> = (0..150)
            .map(|i| {
                change(
                    &format!("configmap/c{i}"),
                    None,
                    Some(json!({"data": {"k": i}})),
                )
            })
            .collect();
        let diffs: Vec<String> = (0..150)
            .map(|i| format!("+{}", "x".repeat(i * 10)).repeat(200))
            .collect();
        let text = markdown("big", "abc", &changes, &diffs, 0);
        assert!(text.len() <= MAX_CHARS + 10_000, "{}", text.len());
        assert!(text.contains("and 50 more object(s)."));
        assert!(text.contains("more object(s) are left out"));
        assert!(text.matches("<details>").count() <= MAX_DIFFS);
    }

    #[test]
    fn backticks_and_pipes_do_not_break_the_markdown() {
        let c = change(
            "configmap/a|b",
            Some(json!({"data": {"k": "1"}})),
            Some(json!({"data": {"k": "2"}})),
        );
        let text = markdown("x", "abc", &[c], &["+```\n+|".to_string()], 0);
        assert!(text.contains("`configmap/a\\|b`"), "{text}");
        assert!(text.contains("````diff\n+```\n+|\n````"), "{text}");
    }
}
