//! Which shard a GitSync belongs to, and how many shards a replica may hold. Pure and stable:
//! every replica, on any machine and any version of Rust, computes the same shard for the same
//! GitSync (FNV-1a of `namespace/name`, not the standard library's seeded hasher).

/// A GitSync carrying this label (a shard number below the shard count) is pinned to that shard.
pub const SHARD_LABEL: &str = "kubesync.dev/shard";

/// The shard of the GitSync `namespace/name`: the pinned one when `pinned` is a shard number
/// below `count`, else a stable hash of its key. `count` 0 is taken as 1.
pub fn shard_of(namespace: &str, name: &str, pinned: Option<&str>, count: u32) -> u32 {
    let count = count.max(1);
    if let Some(shard) = pinned.and_then(|p| p.trim().parse::<u32>().ok())
        && shard < count
    {
        return shard;
    }
    let key = format!("{namespace}/{name}");
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    u32::try_from(hash % u64::from(count)).unwrap_or(0)
}

/// Whether a pin label names no valid shard (it is then ignored, and said so).
pub fn invalid_pin(pinned: Option<&str>, count: u32) -> bool {
    pinned.is_some_and(|p| p.trim().parse::<u32>().map_or(true, |s| s >= count.max(1)))
}

/// How many shards one of `live` replicas may hold: the shards spread as evenly as they can.
pub fn fair_share(count: u32, live: u32) -> u32 {
    count.div_ceil(live.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_of_a_gitsync_is_stable_and_spread() {
        assert_eq!(
            shard_of("apps", "web", None, 3),
            shard_of("apps", "web", None, 3)
        );
        // FNV-1a 64, checked against an independent implementation: a change of the hash
        // would move every GitSync at an upgrade.
        assert_eq!(shard_of("apps", "web", None, 1000), 40);
        assert_eq!(shard_of("infra", "ingress", None, 1000), 813);
        let mut per_shard = [0u32; 3];
        for i in 0..60 {
            per_shard[shard_of("team", &format!("app-{i}"), None, 3) as usize] += 1;
        }
        assert!(
            per_shard.iter().all(|n| (12..=28).contains(n)),
            "{per_shard:?}"
        );
    }

    #[test]
    fn a_valid_pin_wins_and_an_invalid_one_is_ignored() {
        assert_eq!(shard_of("apps", "web", Some("2"), 3), 2);
        let hashed = shard_of("apps", "web", None, 3);
        assert_eq!(shard_of("apps", "web", Some("3"), 3), hashed);
        assert_eq!(shard_of("apps", "web", Some("two"), 3), hashed);
        assert!(invalid_pin(Some("3"), 3));
        assert!(invalid_pin(Some("two"), 3));
        assert!(!invalid_pin(Some(" 1 "), 3));
        assert!(!invalid_pin(None, 3));
    }

    #[test]
    fn shares_cover_every_shard() {
        assert_eq!(fair_share(3, 1), 3);
        assert_eq!(fair_share(3, 3), 1);
        assert_eq!(fair_share(3, 2), 2);
        assert_eq!(fair_share(4, 3), 2);
        assert_eq!(fair_share(3, 0), 3);
        assert_eq!(fair_share(1, 5), 1);
    }
}
