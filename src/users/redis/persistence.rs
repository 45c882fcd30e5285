//! Whether Redis keeps tollgate's state across its own restart, and whether it did.
//!
//! A Redis without persistence (no append-only file, no snapshots) that restarts comes back
//! empty: every user silently gets a fresh day and month. So the ledger checks, at start-up and
//! whenever its connection came back (after an outage, or a dropped connection), how Redis
//! persists (`CONFIG GET appendonly` / `save`; [`Persistence`]), and warns loudly when it does
//! not: a log line, `/readyz`'s `redis_persistence`, and `tollgate_redis_persistence{mode}`.
//!
//! And it detects the loss itself: a marker key (`<prefix>:marker`, a random value) is written
//! at the first check and looked for at every later one (those, and every minute). If the marker
//! is gone, or holds another value (another replica re-created it first), Redis lost tollgate's
//! keys since the last check: an error log and `tollgate_redis_state_lost_total`. The marker
//! expires like every key tollgate writes; each check renews it.

/// How Redis persists its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Not known yet, or Redis does not say (`CONFIG` disabled, as managed services do).
    Unknown,
    /// Neither: a restart empties Redis.
    None,
    /// RDB snapshots only (`save` rules): a restart keeps the last snapshot; a crash loses what
    /// came after it.
    Snapshots,
    /// The append-only file (`appendonly yes`): a restart keeps everything fsynced.
    AppendOnly,
}

impl Persistence {
    pub const ALL: [Persistence; 4] = [
        Persistence::Unknown,
        Persistence::None,
        Persistence::Snapshots,
        Persistence::AppendOnly,
    ];

    /// The mode that says least about keeping the data, of several masters': none, then
    /// snapshots, then unknown, then the append-only file (`Unknown` for no master at all).
    pub fn weakest(modes: impl IntoIterator<Item = Persistence>) -> Self {
        let rank = |mode: &Persistence| match mode {
            Persistence::None => 0,
            Persistence::Snapshots => 1,
            Persistence::Unknown => 2,
            Persistence::AppendOnly => 3,
        };
        modes
            .into_iter()
            .min_by_key(rank)
            .unwrap_or(Persistence::Unknown)
    }

    /// From the values of `CONFIG GET appendonly` and `CONFIG GET save`.
    pub fn from_config(appendonly: &str, save: &str) -> Self {
        if appendonly.eq_ignore_ascii_case("yes") {
            Persistence::AppendOnly
        } else if !save.trim().is_empty() {
            Persistence::Snapshots
        } else {
            Persistence::None
        }
    }

    /// The `mode` label and `/readyz`'s `redis_persistence`.
    pub fn as_str(self) -> &'static str {
        match self {
            Persistence::Unknown => "unknown",
            Persistence::None => "none",
            Persistence::Snapshots => "rdb",
            Persistence::AppendOnly => "aof",
        }
    }

    pub(super) fn to_u8(self) -> u8 {
        match self {
            Persistence::Unknown => 0,
            Persistence::None => 1,
            Persistence::Snapshots => 2,
            Persistence::AppendOnly => 3,
        }
    }

    pub(super) fn from_u8(value: u8) -> Self {
        match value {
            1 => Persistence::None,
            2 => Persistence::Snapshots,
            3 => Persistence::AppendOnly,
            _ => Persistence::Unknown,
        }
    }
}

/// What one state check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateCheck {
    /// How Redis persists (`Unknown` when not asked this time, or not said).
    pub persistence: Persistence,
    /// The marker this ledger had seen was gone or replaced: Redis lost tollgate's keys.
    pub keys_lost: bool,
    /// Every command of the check was answered (else it is retried at the next probe).
    pub complete: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_follows_appendonly_then_save() {
        assert_eq!(Persistence::from_config("yes", ""), Persistence::AppendOnly);
        assert_eq!(
            Persistence::from_config("yes", "3600 1"),
            Persistence::AppendOnly
        );
        assert_eq!(
            Persistence::from_config("no", "3600 1 300 100 60 10000"),
            Persistence::Snapshots
        );
        assert_eq!(Persistence::from_config("no", ""), Persistence::None);
        assert_eq!(Persistence::from_config("no", "  "), Persistence::None);
        for mode in Persistence::ALL {
            assert_eq!(Persistence::from_u8(mode.to_u8()), mode);
        }
    }

    #[test]
    fn a_cluster_is_as_weak_as_its_weakest_master() {
        use Persistence::*;
        assert_eq!(Persistence::weakest([AppendOnly, None, Snapshots]), None);
        assert_eq!(
            Persistence::weakest([AppendOnly, Unknown, Snapshots]),
            Snapshots
        );
        assert_eq!(Persistence::weakest([AppendOnly, Unknown]), Unknown);
        assert_eq!(Persistence::weakest([AppendOnly, AppendOnly]), AppendOnly);
        assert_eq!(Persistence::weakest([]), Unknown);
    }
}
