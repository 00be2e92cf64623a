//! Where everything the store keeps lives: the only code that names a key.
//!
//! # Partitions
//!
//! Sagas are spread over [`PARTITIONS`] partitions, fixed once and for all
//! (as a Temporal cluster's history shards are): a saga's partition is a
//! function of its id alone, and every key one of its transitions touches
//! (its record, the partition's index of sagas by state, the set of sagas
//! its owner drives there, the partition's fence of dead owners and its
//! outbox) carries the partition's hash tag, so that on Redis Cluster they
//! share one slot and one script writes them atomically.
//!
//! Why a fixed number rather than a tag per saga: what must be found
//! without a saga id (the sagas an owner drives, sagas by state, writes
//! not yet relayed) then lives in a few known keys per partition, read
//! one partition at a time, instead of in keys that span the keyspace.
//! Why 64: a cluster spreads partitions over at most 64 masters, far more
//! than a saga workload's shared streams (each one key, on one master)
//! let it use; and what visits every partition (takeover of a dead
//! daemon, listing, the relay's sweep) stays 64 small calls. Adding or
//! removing masters moves slots, never partitions: nothing here changes.
//!
//! Each partition's tag is chosen so that the 64 tags fall into 64 equal
//! ranges of the 16384 slots, in order: a cluster whose masters hold equal
//! ranges of slots (what `redis-cli --cluster create` makes) holds equal
//! numbers of partitions.
//!
//! # Keys shared by all partitions
//!
//! Leases (`<prefix>{leases}`) and the registry of owners
//! (`<prefix>{leases}:owners`) share one slot of their own; the streams
//! that handlers and starters share keep their names. The saga names
//! paused are one hash; what each trigger stream holds of them lives in
//! that stream's slot, under its hash tag ([`Keys::holds`],
//! [`Keys::held`]).

use std::sync::LazyLock;

/// The number of partitions. Never changed: a saga's keys are found from
/// its id through it.
pub const PARTITIONS: u16 = 64;

pub use crate::connection::{hash_tag, slot, SLOTS};

/// One partition of the sagas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(u16);

/// The hash tag of each partition, found once.
static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let width = SLOTS / PARTITIONS;
    (0..PARTITIONS)
        .map(|p| {
            (0u32..)
                .map(|n| format!("p{p}.{n}"))
                .find(|tag| slot(&format!("{{{tag}}}")) / width == p)
                .expect("every range of slots has a tag")
        })
        .collect()
});

impl Partition {
    /// The partition of a saga.
    pub fn of(saga_id: &str) -> Self {
        Self(slot(saga_id) % PARTITIONS)
    }

    /// Every partition, in order.
    pub fn all() -> impl Iterator<Item = Partition> {
        (0..PARTITIONS).map(Partition)
    }

    pub fn index(self) -> u16 {
        self.0
    }

    fn tag(self) -> &'static str {
        &TAGS[usize::from(self.0)]
    }
}

/// The phases a saga is indexed under, each a sorted set per partition
/// (member: saga id; score: the unix ms at which it entered the phase).
pub const INDEXED_PHASES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
];

/// The names of the keys, under a prefix (`saga_key_prefix`, `saga:` by
/// default).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn of(settings: &crate::config::Settings) -> Self {
        Self::new(&settings.saga_key_prefix)
    }

    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn in_partition(&self, p: Partition, rest: &str) -> String {
        format!("{}{{{}}}:{rest}", self.prefix, p.tag())
    }

    /// A saga's record: a hash of `owner`, `seq` (its last transition),
    /// `phase` and `state` (JSON).
    pub fn record(&self, saga_id: &str) -> String {
        self.in_partition(Partition::of(saga_id), &format!("record:{saga_id}"))
    }

    /// The sagas `owner` drives in a partition (a set of saga ids).
    pub fn owned(&self, p: Partition, owner: &str) -> String {
        self.in_partition(p, &format!("owned:{owner}"))
    }

    /// The owners that have had a set of sagas in a partition: found by
    /// housekeeping without a scan of the keyspace.
    pub fn owners_in(&self, p: Partition) -> String {
        self.in_partition(p, "owners")
    }

    /// The owners whose sagas in a partition were claimed (a sorted set
    /// scored by the unix ms of the claim): nothing of theirs is written
    /// there again.
    pub fn fenced(&self, p: Partition) -> String {
        self.in_partition(p, "fenced")
    }

    /// The sagas of a partition in one phase (see [`INDEXED_PHASES`]).
    pub fn index(&self, p: Partition, phase: &str) -> String {
        self.in_partition(p, &format!("index:{phase}"))
    }

    /// Every index key of a partition, in the order of [`INDEXED_PHASES`].
    pub fn indexes(&self, p: Partition) -> Vec<String> {
        INDEXED_PHASES.iter().map(|ph| self.index(p, ph)).collect()
    }

    /// The partition's outbox: on a cluster, the stream writes of its
    /// transitions, recorded with them and relayed after.
    pub fn outbox(&self, p: Partition) -> String {
        self.in_partition(p, "outbox")
    }

    /// The high-water marks of the relay into `stream`, per partition, in
    /// the stream's own slot: a hash whose hash tag is the stream's. `None`
    /// for a name whose hashed part holds a brace, which no other key can
    /// be made to share a slot with.
    pub fn relayed(&self, stream: &str) -> Option<String> {
        let tag = hash_tag(stream);
        (!tag.contains(['{', '}'])).then(|| format!("{}relayed:{{{tag}}}:{stream}", self.prefix))
    }

    /// The saga names operators paused: a hash, name to the pause as JSON
    /// (`by`, `reason`, `since_ms`, `nonce`). What is paused; the holds of
    /// each trigger stream follow it.
    pub fn paused_names(&self) -> String {
        format!("{}paused-names", self.prefix)
    }

    /// What is held of trigger stream `stream`: a hash, saga name to the
    /// pause (as in [`Self::paused_names`]) while the name is paused, or
    /// `draining` while the starts held are taken after its resume. In the
    /// stream's slot, so that one script reads it with the stream; `None`
    /// for a name whose hashed part holds a brace (as [`Self::relayed`]).
    pub fn holds(&self, stream: &str) -> Option<String> {
        let tag = hash_tag(stream);
        (!tag.contains(['{', '}'])).then(|| format!("{}holds:{{{tag}}}:{stream}", self.prefix))
    }

    /// The starts of saga `name` held from trigger stream `stream` while
    /// the name was paused: a stream in `stream`'s slot, read through the
    /// daemons' group once the name is resumed. The stream's name is
    /// written with its length, so that no two pairs of a stream and a
    /// name (each may hold `:`) give one key.
    pub fn held(&self, stream: &str, name: &str) -> Option<String> {
        let tag = hash_tag(stream);
        (!tag.contains(['{', '}'])).then(|| {
            format!(
                "{}held:{{{tag}}}:{}:{stream}:{name}",
                self.prefix,
                stream.len()
            )
        })
    }

    /// The shape of every key of [`Self::holds`] and [`Self::held`],
    /// `mark` standing for the rest (for ACL rules).
    pub fn any_hold(&self, mark: &str) -> [String; 2] {
        [
            format!("{}holds:{mark}", self.prefix),
            format!("{}held:{mark}", self.prefix),
        ]
    }

    /// Daemons' leases: a sorted set, member the owner token, score the
    /// unix ms (Redis's clock) at which the lease runs out.
    pub fn leases(&self) -> String {
        format!("{}{{leases}}", self.prefix)
    }

    /// Every owner token whose sagas may still exist.
    pub fn owners(&self) -> String {
        format!("{}{{leases}}:owners", self.prefix)
    }

    /// Marks an operator's request as carried out, by its nonce.
    pub fn nonce(&self, nonce: &str) -> String {
        format!("{}control:nonce:{{{nonce}}}", self.prefix)
    }

    /// Where the text of one version of a definition is kept.
    pub fn definition(&self, saga: &str, version: &str) -> String {
        format!("{}definition:{{{saga}}}:{version}", self.prefix)
    }

    /// A start's idempotency key: the id of the saga it started.
    pub fn idempotency(&self, saga: &str, key: &str) -> String {
        format!("{}idempotency:{{{saga}}}:{key}", self.prefix)
    }

    /// A semantic lock: a list of the sagas that hold it (the first) and
    /// wait for it (the rest, in the order they asked), each an entry of
    /// JSON (see [`super::locks`]). Its hash tag is the lock's name, which
    /// [`crate::protocol::locks::check_lock_name`] keeps free of braces: each
    /// lock has a slot of its own choosing, spread over a cluster.
    pub fn lock(&self, name: &str) -> String {
        format!("{}lock:{{{name}}}", self.prefix)
    }

    /// The signals kept for a saga, in its partition: a hash, field = the
    /// signal's name, value = the signal as JSON (see [`super::signals`]).
    pub fn signals(&self, saga_id: &str) -> String {
        self.in_partition(Partition::of(saga_id), &format!("signals:{saga_id}"))
    }

    /// The shape of a key of any partition, `mark` standing for the
    /// partition's tag: `rest` as given to the partition (for ACL rules).
    pub fn in_any_partition(&self, mark: &str, rest: &str) -> String {
        format!("{}{{{mark}}}:{rest}", self.prefix)
    }

    /// The shape of every relay mark, `mark` standing for the rest.
    pub fn any_relayed(&self, mark: &str) -> String {
        format!("{}relayed:{mark}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_redis_computes() {
        // `CLUSTER KEYSLOT` of each, on a real Redis.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("{foo}.bar"), 12182);
        assert_eq!(slot("{}foo"), slot("{}foo"));
    }

    #[test]
    fn partitions_fall_in_equal_ranges_of_slots_in_order() {
        let width = SLOTS / PARTITIONS;
        for p in Partition::all() {
            let key = Keys::new("saga:").outbox(p);
            assert_eq!(slot(&key) / width, p.index(), "{key}");
        }
    }

    #[test]
    fn the_tags_never_change() {
        // A saga's keys are found from its id through these: changing them
        // would lose every saga stored.
        let tags: Vec<&str> = Partition::all().take(4).map(Partition::tag).collect();
        assert_eq!(tags, ["p0.52", "p1.121", "p2.332", "p3.103"]);
        assert_eq!(
            Partition::of("6f1c2b0a9d8e4f7a8b6c5d4e3f2a1b0c").index(),
            23
        );
    }

    #[test]
    fn a_sagas_keys_share_one_slot() {
        let keys = Keys::new("saga:");
        let id = "6f1c2b0a9d8e4f7a8b6c5d4e3f2a1b0c";
        let p = Partition::of(id);
        let at = slot(&keys.record(id));
        for key in [
            keys.owned(p, "n.1"),
            keys.owners_in(p),
            keys.fenced(p),
            keys.outbox(p),
            keys.index(p, "running"),
        ] {
            assert_eq!(slot(&key), at, "{key}");
        }
    }

    #[test]
    fn a_relay_mark_lives_beside_its_stream() {
        let keys = Keys::new("saga:");
        for stream in ["saga:events", "explore:commands", "r:{abc}:x", "a{b}c}"] {
            let mark = keys.relayed(stream).expect("a mark");
            assert_eq!(slot(&mark), slot(stream), "{stream}");
        }
        assert_eq!(keys.relayed("odd{}name"), None);
        assert_eq!(keys.relayed("a}b"), None);
        assert_eq!(slot(&keys.leases()), slot(&keys.owners()));
    }

    #[test]
    fn what_is_held_lives_beside_its_trigger_stream() {
        let keys = Keys::new("saga:");
        for stream in ["mission:start", "t:{abc}:x", "a{b}c}"] {
            let holds = keys.holds(stream).expect("a hash");
            let held = keys.held(stream, "n:{x}").expect("a stream");
            assert_eq!(slot(&holds), slot(stream), "{stream}");
            assert_eq!(slot(&held), slot(stream), "{stream}");
        }
        assert_ne!(keys.held("x{t}a:b", "c"), keys.held("x{t}a", "b:c"));
        assert_eq!(keys.holds("odd{}name"), None);
        assert_eq!(keys.held("a}b", "n"), None);
    }
}
