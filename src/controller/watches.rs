//! Metadata-only watches on what each GitSync manages, so that drift is undone within a second
//! and an idle interval costs nothing.
//!
//! After a successful sync, each GitSync gets one watch per group-kind and namespace it applied
//! to, selected by the set's `applyset.kubernetes.io/part-of` label. The sync's own writes are
//! recorded as [`Fingerprint`]s; an event that shows a newer change made by someone else marks
//! the object drifted and triggers a reconcile, which re-applies only that object (a repair).
//! While the watches are complete (every stream listed, no error or relist since the last full
//! sync, no drift pending), an interval whose revision did not move needs neither a LIST nor an
//! apply.
//!
//! Per watched object this keeps its key, two fingerprints and a shared file name (about 300
//! bytes); the streams keep nothing per object.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use kube::Client;
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::discovery::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, info, warn};

use crate::crd::GitSync;
use crate::drift::Fingerprint;
use crate::plan::{GroupKind, ObjectKey, PART_OF_LABEL};
use crate::sync::SyncReport;

/// An object is repaired at most this often per [`REPAIR_WINDOW`]; beyond that something keeps
/// changing it back (another controller, a person), and it waits for the next full sync.
pub const REPAIRS_PER_WINDOW: usize = 5;
const REPAIR_WINDOW: Duration = Duration::from_secs(60);

/// The watches of every GitSync this process syncs, by `namespace/name`.
pub struct Watches {
    sets: Mutex<HashMap<String, SetWatch>>,
    /// Reconciles a GitSync (its watches saw drift).
    trigger: UnboundedSender<ObjectRef<GitSync>>,
}

/// What a reconcile needs to repair drift.
pub struct Repair {
    pub checkout: crate::source::Checkout,
    pub objects: BTreeSet<ObjectKey>,
    /// The repository files the objects come from.
    pub files: Vec<String>,
    /// Objects left for the next full sync (repaired too often).
    pub given_up: Vec<ObjectKey>,
}

/// One stream: a group-kind in one namespace (None: cluster-scoped).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamKey {
    group_kind: GroupKind,
    namespace: Option<String>,
}

struct SetWatch {
    state: Arc<Mutex<SetState>>,
    streams: BTreeSet<StreamKey>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SetWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Watched {
    /// As the last sync or repair left it.
    expected: Fingerprint,
    /// The newest the watch delivered since (Some(None): gone).
    seen: Option<Option<Fingerprint>>,
    file: Arc<str>,
    repairs: Vec<Instant>,
}

struct SetState {
    objects: HashMap<ObjectKey, Watched>,
    drifted: BTreeSet<ObjectKey>,
    /// The revision the last sync applied and where its files are.
    revision: String,
    checkout_dir: PathBuf,
    /// A sync is running: events update what was seen but mark nothing (its own writes are not
    /// recorded yet).
    syncing: bool,
    /// A stream failed or listed again since the last full sync: events may have been missed.
    gap: bool,
    /// Streams whose first list is complete.
    listed: usize,
    streams: usize,
    /// Intervals that found nothing to do since the last full sync.
    idle_intervals: u32,
    sync_ref: ObjectRef<GitSync>,
    trigger: UnboundedSender<ObjectRef<GitSync>>,
}

impl SetState {
    /// Records what a watch delivered for `key` (None: gone); marks drift.
    fn observe(&mut self, key: &ObjectKey, seen: Option<Fingerprint>) {
        let Some(watched) = self.objects.get_mut(key) else {
            return; // in the set but not applied by the last sync (left to prune)
        };
        watched.seen = Some(seen);
        if !self.syncing && watched.expected.drifted_to(seen.as_ref()) {
            debug!(object = %key, expected = ?watched.expected, ?seen, "drift seen");
            self.mark(key.clone());
        }
    }

    fn mark(&mut self, key: ObjectKey) {
        if self.drifted.insert(key) && self.drifted.len() == 1 {
            let _ = self.trigger.unbounded_send(self.sync_ref.clone());
        }
    }

    /// After a sync or repair: drift seen while it ran, against what it recorded.
    fn recheck_seen(&mut self) {
        let drifted: Vec<ObjectKey> = (self.objects.iter())
            .filter(|(_, w)| {
                w.seen
                    .is_some_and(|seen| w.expected.drifted_to(seen.as_ref()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in drifted {
            self.mark(key);
        }
    }
}

fn lock(state: &Mutex<SetState>) -> MutexGuard<'_, SetState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watches {
    pub fn new(trigger: UnboundedSender<ObjectRef<GitSync>>) -> Watches {
        Watches {
            sets: Mutex::new(HashMap::new()),
            trigger,
        }
    }

    fn sets(&self) -> MutexGuard<'_, HashMap<String, SetWatch>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_state<T>(&self, key: &str, f: impl FnOnce(&mut SetState) -> T) -> Option<T> {
        let sets = self.sets();
        let set = sets.get(key)?;
        let mut state = lock(&set.state);
        Some(f(&mut state))
    }

    /// A full sync starts: what its own writes cause is not drift.
    pub fn sync_started(&self, key: &str) {
        self.with_state(key, |s| s.syncing = true);
    }

    /// A full sync finished. After a failure the watches stop (the checkout may no longer be
    /// the applied revision); after a success they follow what it applied, and start when the
    /// group-kinds or namespaces changed.
    pub fn sync_finished(
        &self,
        key: &str,
        sync: &GitSync,
        client: &Client,
        applyset_id: &str,
        report: &SyncReport,
    ) {
        let (Some(revision), Some(checkout_dir), true) = (
            report.revision.clone(),
            report.checkout_dir.clone(),
            report.succeeded() && !report.dry_run,
        ) else {
            self.forget(key);
            return;
        };
        let applied = applied_objects(report);
        let streams: BTreeMap<StreamKey, ApiResource> = (applied.iter())
            .map(|o| (stream_of(&o.key), o.resource.clone()))
            .collect();
        let mut sets = self.sets();
        let reuse = sets
            .get(key)
            .filter(|set| set.streams.iter().eq(streams.keys()));
        let objects = applied
            .into_iter()
            .map(|o| {
                let watched = Watched {
                    expected: o.fingerprint,
                    seen: None,
                    file: o.file,
                    repairs: Vec::new(),
                };
                (o.key, watched)
            })
            .collect();
        match reuse {
            Some(set) => {
                let mut state = lock(&set.state);
                carry_seen(&mut state.objects, objects);
                state.revision = revision;
                state.checkout_dir = checkout_dir;
                state.syncing = false;
                state.gap = false;
                state.idle_intervals = 0;
                state.drifted.clear();
                state.recheck_seen();
            }
            None => {
                let state = SetState {
                    objects,
                    drifted: BTreeSet::new(),
                    revision,
                    checkout_dir,
                    syncing: false,
                    gap: false,
                    listed: 0,
                    streams: streams.len(),
                    idle_intervals: 0,
                    sync_ref: ObjectRef::from_obj(sync),
                    trigger: self.trigger.clone(),
                };
                let set = start(client, applyset_id, streams, state);
                info!(sync = %key, streams = set.streams.len(), "watching what the sync applied");
                sets.insert(key.into(), set);
            }
        }
    }

    /// Drift to repair now: the drifted objects (taken), and where their files are.
    pub fn take_drift(&self, key: &str) -> Option<Repair> {
        self.with_state(key, |state| {
            if state.syncing || state.drifted.is_empty() {
                return None;
            }
            let now = Instant::now();
            let mut repair = Repair {
                checkout: crate::source::Checkout {
                    dir: state.checkout_dir.clone(),
                    revision: state.revision.clone(),
                    commit_time: None,
                    commit: None,
                    fetched: false,
                },
                objects: BTreeSet::new(),
                files: Vec::new(),
                given_up: Vec::new(),
            };
            let mut files = BTreeSet::new();
            for key in std::mem::take(&mut state.drifted) {
                let Some(watched) = state.objects.get_mut(&key) else {
                    continue;
                };
                watched
                    .repairs
                    .retain(|t| now.duration_since(*t) < REPAIR_WINDOW);
                if watched.repairs.len() >= REPAIRS_PER_WINDOW {
                    repair.given_up.push(key);
                    continue;
                }
                watched.repairs.push(now);
                files.insert(watched.file.to_string());
                repair.objects.insert(key);
            }
            if !repair.given_up.is_empty() {
                state.gap = true;
            }
            repair.files = files.into_iter().collect();
            Some(repair)
        })
        .flatten()
    }

    /// A repair finished: its writes are the new expectation. A failed repair leaves the
    /// objects to the next full sync.
    pub fn repair_finished(&self, key: &str, report: &SyncReport) {
        self.with_state(key, |state| {
            if !report.succeeded() {
                state.gap = true;
            }
            for o in applied_objects(report) {
                if let Some(w) = state.objects.get_mut(&o.key) {
                    w.expected = o.fingerprint;
                }
            }
            state.recheck_seen();
        });
    }

    /// Whether an interval may skip the full sync when the revision did not move: every stream
    /// is listed, none failed since the last full sync, no drift is pending, fewer than
    /// `full_every` intervals were skipped, and `revision` is still what was applied.
    pub fn quiet(&self, key: &str, full_every: u32) -> Option<String> {
        self.with_state(key, |s| {
            let quiet = !s.syncing
                && !s.gap
                && s.listed == s.streams
                && s.drifted.is_empty()
                && s.idle_intervals.saturating_add(1) < full_every;
            quiet.then(|| s.revision.clone())
        })
        .flatten()
    }

    /// An interval found the revision unchanged and the watches quiet.
    pub fn idle_interval(&self, key: &str) {
        self.with_state(key, |s| {
            s.idle_intervals = s.idle_intervals.saturating_add(1)
        });
    }

    /// Objects watched for `key`.
    pub fn watched(&self, key: &str) -> usize {
        self.with_state(key, |s| s.objects.len()).unwrap_or(0)
    }

    /// Stops the watches of `key` (failed sync, suspended, deleted).
    pub fn forget(&self, key: &str) {
        self.sets().remove(key);
    }
}

fn stream_of(key: &ObjectKey) -> StreamKey {
    StreamKey {
        group_kind: key.group_kind(),
        namespace: key.namespace.clone(),
    }
}

/// An object the report says is in the cluster as Git has it.
struct AppliedObject {
    key: ObjectKey,
    resource: ApiResource,
    fingerprint: Fingerprint,
    file: Arc<str>,
}

/// Every object the report says is in the cluster as Git has it (file names shared).
fn applied_objects(report: &SyncReport) -> Vec<AppliedObject> {
    let mut files: HashMap<&str, Arc<str>> = HashMap::new();
    (report.objects.iter())
        .filter(|o| o.result.in_set())
        .filter_map(|o| {
            let (key, resource) = o.target.clone()?;
            let fingerprint = o.fingerprint?;
            let file = &o.origin.as_ref()?.file;
            let file = files
                .entry(file)
                .or_insert_with(|| Arc::from(file.as_str()));
            Some(AppliedObject {
                key,
                resource,
                fingerprint,
                file: file.clone(),
            })
        })
        .collect()
}

/// Keeps what the running streams delivered for objects that stay watched.
fn carry_seen(old: &mut HashMap<ObjectKey, Watched>, mut new: HashMap<ObjectKey, Watched>) {
    for (key, watched) in new.iter_mut() {
        if let Some(before) = old.remove(key) {
            watched.seen = before.seen;
            watched.repairs = before.repairs;
        }
    }
    *old = new;
}

fn start(
    client: &Client,
    applyset_id: &str,
    streams: BTreeMap<StreamKey, ApiResource>,
    state: SetState,
) -> SetWatch {
    let state = Arc::new(Mutex::new(state));
    let selector = format!("{PART_OF_LABEL}={applyset_id}");
    let tasks = (streams.iter())
        .map(|(stream, resource)| {
            let follow = follow(
                client.clone(),
                stream.clone(),
                resource.clone(),
                selector.clone(),
                state.clone(),
            );
            tokio::spawn(follow)
        })
        .collect();
    SetWatch {
        state,
        streams: streams.into_keys().collect(),
        tasks,
    }
}

/// One stream, until aborted: events become fingerprints; a relist compares every object
/// again and counts as a gap; errors are retried with the watcher's backoff.
async fn follow(
    client: Client,
    stream: StreamKey,
    resource: ApiResource,
    selector: String,
    state: Arc<Mutex<SetState>>,
) {
    // PartialObjectMeta: the API server sends metadata only.
    let api: kube::Api<PartialObjectMeta<DynamicObject>> = match &stream.namespace {
        Some(ns) => kube::Api::namespaced_with(client, ns, &resource),
        None => kube::Api::all_with(client, &resource),
    };
    // Any resourceVersion for lists: served from the API server's watch cache, not etcd.
    let config = watcher::Config::default().labels(&selector).any_semantic();
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let key_of = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| ObjectKey {
        group: stream.group_kind.group.clone(),
        kind: stream.group_kind.kind.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
    };
    let mut listed = HashSet::new();
    let mut first_list = true;
    let mut failing = false;
    while let Some(event) = events.next().await {
        let relisted = matches!(event, Ok(Event::InitDone));
        let mut state = lock(&state);
        match event {
            Ok(Event::Init) => {
                listed.clear();
                state.gap |= !first_list;
            }
            Ok(Event::InitApply(o)) => {
                let key = key_of(&o.metadata);
                state.observe(&key, Some(Fingerprint::of(&o.metadata)));
                listed.insert(key);
            }
            Ok(Event::InitDone) => {
                let gone: Vec<ObjectKey> = (state.objects.keys())
                    .filter(|k| stream_of(k) == stream && !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    state.observe(&key, None);
                }
                listed = HashSet::new();
                if first_list {
                    state.listed += 1;
                    first_list = false;
                }
                failing = false;
            }
            Ok(Event::Apply(o)) => {
                failing = false;
                state.observe(&key_of(&o.metadata), Some(Fingerprint::of(&o.metadata)));
            }
            Ok(Event::Delete(o)) => state.observe(&key_of(&o.metadata), None),
            Err(e) => {
                state.gap = true;
                if !failing {
                    warn!(kind = %stream.group_kind.kind, namespace = ?stream.namespace, error = %e,
                        "watch failed: drift waits for the next full sync until it is back");
                }
                failing = true;
            }
        }
        drop(state);
        if relisted {
            // The list's pages are dropped: give them back to the system.
            crate::memory::release_free_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            kind: "ConfigMap".into(),
            namespace: Some("apps".into()),
            name: name.into(),
        }
    }

    fn fingerprint(rv: u64) -> Fingerprint {
        Fingerprint {
            resource_version: Some(rv),
            generation: None,
            marks: 7,
        }
    }

    /// Watches holding one set (`apps/web`) of two objects, a and b, both listed.
    fn watches() -> (Watches, mpsc::UnboundedReceiver<ObjectRef<GitSync>>) {
        let (trigger, triggered) = mpsc::unbounded();
        let watches = Watches::new(trigger.clone());
        let file: Arc<str> = Arc::from("a.yaml");
        let objects = ["a", "b"]
            .into_iter()
            .map(|n| {
                let watched = Watched {
                    expected: fingerprint(10),
                    seen: None,
                    file: file.clone(),
                    repairs: Vec::new(),
                };
                (key(n), watched)
            })
            .collect();
        let state = SetState {
            objects,
            drifted: BTreeSet::new(),
            revision: "abc".into(),
            checkout_dir: PathBuf::from("/nowhere"),
            syncing: false,
            gap: false,
            listed: 1,
            streams: 1,
            idle_intervals: 0,
            sync_ref: ObjectRef::new("web").within("apps"),
            trigger,
        };
        let set = SetWatch {
            state: Arc::new(Mutex::new(state)),
            streams: BTreeSet::new(),
            tasks: Vec::new(),
        };
        watches.sets().insert("apps/web".into(), set);
        (watches, triggered)
    }

    fn observe(watches: &Watches, name: &str, seen: Option<Fingerprint>) {
        watches.with_state("apps/web", |s| s.observe(&key(name), seen));
    }

    #[test]
    fn drift_triggers_one_reconcile_and_is_taken_with_its_files() {
        let (watches, mut triggered) = watches();
        assert_eq!(watches.quiet("apps/web", 10).as_deref(), Some("abc"));
        observe(&watches, "a", Some(fingerprint(10)));
        assert!(triggered.try_recv().is_err(), "its own write is not drift");
        observe(&watches, "a", Some(fingerprint(11)));
        observe(&watches, "b", None);
        assert!(triggered.try_recv().is_ok(), "one reconcile requested");
        assert!(
            triggered.try_recv().is_err(),
            "only one while drift is pending"
        );
        assert_eq!(
            watches.quiet("apps/web", 10),
            None,
            "drift pending: not quiet"
        );
        let repair = watches.take_drift("apps/web").expect("drift");
        assert_eq!(repair.objects, BTreeSet::from([key("a"), key("b")]));
        assert_eq!(repair.files, vec!["a.yaml".to_string()]);
        assert_eq!(repair.checkout.revision, "abc");
        assert!(watches.take_drift("apps/web").is_none(), "taken");
    }

    #[test]
    fn changes_during_a_sync_are_judged_against_what_it_wrote_after_it() {
        let (watches, mut triggered) = watches();
        watches.sync_started("apps/web");
        observe(&watches, "a", Some(fingerprint(12)));
        observe(&watches, "b", Some(fingerprint(13)));
        assert!(
            triggered.try_recv().is_err(),
            "nothing marked while syncing"
        );
        assert!(watches.take_drift("apps/web").is_none());
        // The sync wrote a at 12 (its own write); b changed again after the sync wrote it at 11.
        watches.with_state("apps/web", |s| {
            s.syncing = false;
            s.objects.get_mut(&key("a")).expect("a").expected = fingerprint(12);
            s.objects.get_mut(&key("b")).expect("b").expected = fingerprint(11);
            s.recheck_seen();
        });
        let repair = watches.take_drift("apps/web").expect("drift");
        assert_eq!(repair.objects, BTreeSet::from([key("b")]));
        assert!(triggered.try_recv().is_ok());
    }

    #[test]
    fn an_object_changed_back_again_and_again_is_left_to_the_full_sync() {
        let (watches, _triggered) = watches();
        for round in 0..REPAIRS_PER_WINDOW as u64 {
            observe(&watches, "a", Some(fingerprint(20 + round)));
            let repair = watches.take_drift("apps/web").expect("drift");
            assert_eq!(repair.objects.len(), 1, "round {round}");
        }
        observe(&watches, "a", Some(fingerprint(99)));
        let repair = watches.take_drift("apps/web").expect("drift");
        assert!(repair.objects.is_empty());
        assert_eq!(repair.given_up, vec![key("a")]);
        assert_eq!(
            watches.quiet("apps/web", 10),
            None,
            "the next interval syncs in full"
        );
    }

    #[test]
    fn quiet_until_a_gap_an_unlisted_stream_or_the_full_sync_period() {
        let (watches, _triggered) = watches();
        for _ in 0..8 {
            watches.idle_interval("apps/web");
        }
        assert!(
            watches.quiet("apps/web", 10).is_some(),
            "9th interval may be idle"
        );
        watches.idle_interval("apps/web");
        assert_eq!(
            watches.quiet("apps/web", 10),
            None,
            "the 10th is a full sync"
        );
        assert_eq!(watches.quiet("apps/web", 1), None);
        let (watches, _triggered) = self::watches();
        watches.with_state("apps/web", |s| s.listed = 0);
        assert_eq!(watches.quiet("apps/web", 10), None, "not listed yet");
        watches.with_state("apps/web", |s| {
            s.listed = 1;
            s.gap = true;
        });
        assert_eq!(watches.quiet("apps/web", 10), None, "after a gap");
        assert_eq!(watches.quiet("apps/other", 10), None, "not watched");
        watches.forget("apps/web");
        assert_eq!(watches.watched("apps/web"), 0);
    }
}
