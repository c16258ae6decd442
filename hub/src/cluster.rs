//! Several hub processes on one PostgreSQL and one external broker (`hub serve --cluster NAME`).
//!
//! The gateways are divided into a fixed number of partitions (`--partitions`, the same in every
//! process) by the FNV-1a hash of their id; a zone's camera events by the hash of `zone:<id>`.
//! Each process holds leases on a fair share of the partitions in `cluster_partitions`, renews
//! them every third of the lease on the database's clock (the hubs' own clocks may differ), and
//! takes over the partitions of a process whose leases ran out. For every partition it holds, a
//! process:
//!
//! - runs one MQTT session whose client id is the partition's, `<client-id>-pNN`, subscribed to
//!   the topics of that partition's gateways. The session belongs to the partition, not to the
//!   process: the next holder connects with the same id and the broker hands it everything queued
//!   for the dead one (its persistent session), so nothing published meanwhile is lost; and if the
//!   old holder is still alive, the broker disconnects it;
//! - evaluates the rules of that partition's gateways' assets and of its zones (their state and
//!   cursors are in PostgreSQL, so the next holder continues a condition in progress). Every rules
//!   transaction checks, under a share lock of the partitions' rows, that the leases are still
//!   this process's: a process that stalled past its lease writes nothing.
//!
//! A dust monitor measured against a background monitor of another partition reads the
//! background's state as its holder last saved it. Work over every gateway (the silence rule,
//! escalation, the lighting rate) is done by the holder of partition 0. Without `--cluster` a hub
//! holds everything and takes no leases.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::db::{self, Begin, Sql, Tx, args};

/// `--cluster`: this process's name and the partitioning.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This process's name, unique among the hubs (also in `cluster_hubs`).
    pub hub: String,
    /// How many partitions the gateways are divided into; the same in every process.
    pub partitions: u32,
    /// How long a lease holds without renewal: a dead process's partitions move after this.
    pub lease: Duration,
}

impl ClusterConfig {
    pub const DEFAULT_PARTITIONS: u32 = 32;
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.hub.is_empty()
                && self.hub.len() <= 64
                && self
                    .hub
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "--cluster {:?}: a hub name is 1 to 64 letters, digits, '-', '_' or '.'",
            self.hub
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.partitions),
            "--partitions {}: between 1 and 1024",
            self.partitions
        );
        anyhow::ensure!(
            self.lease >= Duration::from_secs(1) && self.lease <= Duration::from_secs(600),
            "--lease-secs {}: between 1 and 600",
            self.lease.as_secs()
        );
        Ok(())
    }

    /// How often leases are renewed and free partitions looked for.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }
}

/// What this process holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    /// `None`: the only hub, holding everything.
    pub hub: Option<String>,
    /// Partitions held (all of `0..count` for the only hub).
    pub parts: BTreeSet<u32>,
    pub count: u32,
    /// Every gateway known (its partition is [`Owned::part_of`]).
    pub gateways: BTreeSet<String>,
    /// Until when (this machine's monotonic clock) the leases are surely still this process's,
    /// counted from the start of the renewal that took them. Ingest stops serving past it even
    /// if the supervisor is stuck. `None`: the only hub.
    pub valid_until: Option<std::time::Instant>,
}

impl Owned {
    /// The only hub: one partition, held.
    pub fn everything() -> Owned {
        Owned {
            hub: None,
            parts: BTreeSet::from([0]),
            count: 1,
            gateways: BTreeSet::new(),
            valid_until: None,
        }
    }

    /// The partitions to serve now: none once the leases may have run out.
    pub fn serve_now(&self) -> BTreeSet<u32> {
        match self.valid_until {
            Some(v) if std::time::Instant::now() >= v => BTreeSet::new(),
            _ => self.parts.clone(),
        }
    }

    /// A gateway's partition: its readings, presence and configuration, and the state of its
    /// assets.
    pub fn part_of(&self, gateway: &str) -> u32 {
        partition_of(gateway, self.count)
    }

    /// A zone's partition: its camera events and their state (plate sightings, street trading),
    /// whichever gateways its cameras are on.
    pub fn part_of_zone(&self, zone: &str) -> u32 {
        partition_of(&format!("zone:{zone}"), self.count)
    }

    pub fn owns(&self, gateway: &str) -> bool {
        self.hub.is_none() || self.parts.contains(&self.part_of(gateway))
    }

    pub fn owns_zone(&self, zone: &str) -> bool {
        self.hub.is_none() || self.parts.contains(&self.part_of_zone(zone))
    }

    /// Whether this process does the work over all gateways (silence, escalation, lighting).
    pub fn leads(&self) -> bool {
        self.parts.contains(&0)
    }

    /// The gateways of partition `part`, sorted.
    pub fn gateways_of(&self, part: u32) -> Vec<String> {
        self.gateways
            .iter()
            .filter(|g| self.part_of(g) == part)
            .cloned()
            .collect()
    }
}

/// Ownership as it changes: the supervisor sends, ingest and the rules watch.
pub type Ownership = watch::Receiver<Arc<Owned>>;

/// The partitions whose MQTT sessions are running in this process: ingest adds one when its
/// session starts and removes it once the session has stopped (what it took stored and
/// acknowledged, disconnected). A partition handed back is released only once out of here, so the
/// next holder's session never overlaps this one's.
pub type Serving = Arc<std::sync::Mutex<BTreeSet<u32>>>;

/// The only hub's ownership: everything, for good.
pub fn only_hub() -> Ownership {
    watch::channel(Arc::new(Owned::everything())).1
}

/// The partition of a group key: FNV-1a, because it must be the same in every process and every
/// version of the hub (the standard library's hasher promises neither).
pub fn partition_of(key: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(count.max(1))) as u32
}

/// The database's clock in milliseconds, as SQL: leases are compared on one clock.
pub fn db_now(c: &(impl Sql + ?Sized)) -> &'static str {
    match c.engine() {
        db::Engine::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        db::Engine::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

/// Inside a rules transaction: whether `hub` still holds every partition of `parts` under a
/// live lease. On PostgreSQL the rows are share-locked, so no other process takes them over
/// before the transaction ends.
pub fn still_holds(tx: &dyn Sql, hub: &str, parts: &BTreeSet<u32>) -> db::Result<bool> {
    if parts.is_empty() {
        return Ok(true);
    }
    let lock = match tx.engine() {
        db::Engine::Sqlite => "",
        db::Engine::Postgres => " FOR SHARE",
    };
    let held: BTreeSet<u32> = tx
        .query(
            &format!(
                "SELECT part FROM cluster_partitions WHERE owner = $1 AND lease_until > {} ORDER BY part{lock}",
                db_now(tx)
            ),
            args![hub],
        )?
        .iter()
        .map(|r| r.get::<i64>(0).map(|p| p as u32))
        .collect::<db::Result<_>>()?;
    Ok(parts.is_subset(&held))
}

/// Every gateway the hub knows (a key, a gateway row, an asset or a configuration).
fn known_gateways(c: &dyn Sql) -> db::Result<Vec<String>> {
    c.query(
        "SELECT gateway FROM gateway_keys UNION SELECT id FROM gateways
         UNION SELECT gateway FROM assets UNION SELECT gateway FROM gateway_configs",
        &[],
    )?
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The supervisor's leases: each round records this hub alive, releases what was handed back and
/// has stopped, renews, and claims free or expired partitions up to the fair share, or hands
/// back what is over it.
struct Lease {
    cfg: ClusterConfig,
    held: BTreeSet<u32>,
    /// Over the fair share: no longer served (ingest stops their sessions, the rules their
    /// evaluation), still leased until their sessions have stopped, then released.
    releasing: BTreeSet<u32>,
    serving: Serving,
}

impl Lease {
    fn round(&mut self, c: &dyn Sql) -> db::Result<()> {
        let lease_ms = self.cfg.lease.as_millis() as i64;
        let now_sql = db_now(c);
        let tx = Tx::begin(c, Begin::Write)?;
        // This hub's rows first, in partition order: the order the rules' share locks take them
        // in (see still_holds), so the two never wait on each other in a circle.
        if let db::Engine::Postgres = tx.engine() {
            tx.query(
                "SELECT part FROM cluster_partitions WHERE owner = $1 ORDER BY part FOR UPDATE",
                args![self.cfg.hub],
            )?;
        }
        let now: i64 = db::one(&tx, &format!("SELECT {now_sql}"), &[])?;
        let have: i64 = db::one(
            &tx,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM cluster_partitions",
            &[],
        )?;
        if have == 0 {
            for p in 0..self.cfg.partitions {
                tx.execute(
                    "INSERT INTO cluster_partitions (part) VALUES ($1) ON CONFLICT (part) DO NOTHING",
                    args![p],
                )?;
            }
        } else if have != i64::from(self.cfg.partitions) {
            return Err(db::DbError::Other(format!(
                "the cluster has {have} partitions and this hub was started with --partitions {}; every hub must use the same number",
                self.cfg.partitions
            )));
        }
        tx.execute(
            "INSERT INTO cluster_hubs (hub, seen_at) VALUES ($1, $2)
             ON CONFLICT (hub) DO UPDATE SET seen_at = excluded.seen_at",
            args![self.cfg.hub, now],
        )?;
        tx.execute(
            "DELETE FROM cluster_hubs WHERE seen_at < $1",
            args![now - 86_400_000],
        )?;
        let live: i64 = db::one(
            &tx,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM cluster_hubs WHERE seen_at > $1",
            args![now - lease_ms],
        )?;
        let share = (i64::from(self.cfg.partitions) + live.max(1) - 1) / live.max(1);
        // Release what was handed back and whose session has stopped.
        let stopped: Vec<u32> = {
            let serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
            self.releasing
                .iter()
                .filter(|p| !serving.contains(p))
                .copied()
                .collect()
        };
        for p in stopped {
            tx.execute(
                "UPDATE cluster_partitions SET owner = NULL, lease_until = 0 WHERE part = $1 AND owner = $2",
                args![p, self.cfg.hub],
            )?;
            self.releasing.remove(&p);
        }
        // Renew; a lease that ran out is lost even if nobody took it yet (claimed again below).
        let renewed: BTreeSet<u32> = tx
            .query(
                "UPDATE cluster_partitions SET lease_until = $3
                 WHERE owner = $1 AND lease_until > $2 RETURNING part",
                args![self.cfg.hub, now, now + lease_ms],
            )?
            .iter()
            .map(|r| r.get::<i64>(0).map(|p| p as u32))
            .collect::<db::Result<_>>()?;
        for lost in self.held.difference(&renewed) {
            tracing::warn!(
                partition = lost,
                "lease on a partition lost (ran out before renewal); no longer served here"
            );
        }
        // Still handed back and stopping: leased, not held.
        self.releasing.retain(|p| renewed.contains(p));
        let mut held: BTreeSet<u32> = renewed.difference(&self.releasing).copied().collect();
        // Partitions still stopping count as this hub's until released: they are already on
        // their way back.
        let want = share - held.len() as i64 - self.releasing.len() as i64;
        let more_back = (held.len() as i64 - share).max(0);
        if want > 0 {
            let lock = db::for_update(&tx);
            let skip = if lock.is_empty() { "" } else { " SKIP LOCKED" };
            let free: Vec<i64> = tx
                .query(
                    &format!(
                        "SELECT part FROM cluster_partitions
                         WHERE owner IS NULL OR lease_until <= $1 ORDER BY part LIMIT $2{lock}{skip}"
                    ),
                    args![now, want],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect::<db::Result<_>>()?;
            for p in free {
                let prev: Option<String> = db::one(
                    &tx,
                    "SELECT owner FROM cluster_partitions WHERE part = $1",
                    args![p],
                )?;
                tx.execute(
                    "UPDATE cluster_partitions SET owner = $2, lease_until = $3, epoch = epoch + 1 WHERE part = $1",
                    args![p, self.cfg.hub, now + lease_ms],
                )?;
                tracing::info!(partition = p, from = ?prev, "partition taken");
                held.insert(p as u32);
            }
        } else if more_back > 0 {
            // Over the fair share (another hub joined): stop serving the highest ones now,
            // release them once stopped.
            let over: Vec<u32> = held
                .iter()
                .rev()
                .take(more_back as usize)
                .copied()
                .collect();
            for p in &over {
                held.remove(p);
                self.releasing.insert(*p);
                tracing::info!(
                    partition = p,
                    "partition handed back (over this hub's share)"
                );
            }
        }
        tx.commit()?;
        self.held = held;
        Ok(())
    }
}

/// Runs the supervisor on a thread of its own until `stop`: leases every [`ClusterConfig::renew_every`],
/// and the gateways known (new ones are subscribed by their partition's holder). Sends what is
/// held whenever it changes. The first round is done before this returns.
pub fn start(
    database: crate::store::Database,
    cfg: ClusterConfig,
    serving: Serving,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(Ownership, std::thread::JoinHandle<()>)> {
    cfg.validate()?;
    let conn = database.connect()?;
    if let db::Engine::Postgres = conn.engine() {
        // A stuck statement must not hold the supervisor past the leases it should renew.
        conn.batch(&format!(
            "SET statement_timeout = {}",
            cfg.renew_every().as_millis().max(500)
        ))?;
    }
    wait_for_namesake(&*conn, &cfg, &stop)?;
    let mut lease = Lease {
        cfg: cfg.clone(),
        held: BTreeSet::new(),
        releasing: BTreeSet::new(),
        serving,
    };
    let snapshot =
        move |lease: &Lease, c: &dyn Sql, began: std::time::Instant| -> db::Result<Owned> {
            let count = lease.cfg.partitions;
            Ok(Owned {
                hub: Some(lease.cfg.hub.clone()),
                parts: lease.held.clone(),
                // The lease less one renewal interval of slack for stopping.
                valid_until: Some(began + lease.cfg.lease - lease.cfg.renew_every()),
                count,
                gateways: known_gateways(c)?.into_iter().collect(),
            })
        };
    let began = std::time::Instant::now();
    lease.round(&*conn)?;
    let first = snapshot(&lease, &*conn, began)?;
    tracing::info!(hub = %cfg.hub, partitions = ?first.parts, of = cfg.partitions, "cluster: partitions held");
    let (tx, rx) = watch::channel(Arc::new(first));
    let handle = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let every = cfg.renew_every();
            let mut failures = 0u32;
            loop {
                let wait = if failures > 0 {
                    every / 2
                } else {
                    every
                };
                let deadline = std::time::Instant::now() + wait;
                while std::time::Instant::now() < deadline {
                    if stop.is_cancelled() {
                        // Stopping: hand everything back at once rather than when the leases
                        // run out (ingest and the rules have stopped by now).
                        match conn.execute(
                            "UPDATE cluster_partitions SET owner = NULL, lease_until = 0 WHERE owner = $1",
                            args![cfg.hub],
                        ) {
                            Ok(n) => tracing::info!(partitions = n, "cluster: partitions handed back"),
                            Err(e) => tracing::warn!(error = %e, "cluster: cannot hand the partitions back; they move when their leases run out"),
                        }
                        // Gone, so that the others' fair share counts without this hub at once.
                        let _ = conn.execute("DELETE FROM cluster_hubs WHERE hub = $1", args![cfg.hub]);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100).min(wait));
                }
                let began = std::time::Instant::now();
                match lease
                    .round(&*conn)
                    .and_then(|()| snapshot(&lease, &*conn, began))
                {
                    Ok(now) => {
                        failures = 0;
                        if **tx.borrow() != now {
                            if tx.borrow().parts != now.parts {
                                tracing::info!(partitions = ?now.parts, "cluster: partitions held");
                            }
                            tx.send_replace(Arc::new(now));
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, "cluster: lease renewal failed; retrying");
                        // Without renewal the leases run out: stop serving before they do, so
                        // that no partition is served twice.
                        if failures >= 2 && !tx.borrow().parts.is_empty() {
                            tracing::warn!("cluster: serving nothing until the leases are renewed");
                            lease.held.clear();
                            let mut none = (**tx.borrow()).clone();
                            none.parts.clear();
                            tx.send_replace(Arc::new(none));
                        }
                    }
                }
            }
        })?;
    Ok((rx, handle))
}

/// Waits while another process with this hub's name is alive (renewed within the lease): a hub
/// restarted right after it died waits for its old leases to run out; two live hubs with one name
/// are refused, because they would renew each other's leases.
fn wait_for_namesake(
    c: &dyn Sql,
    cfg: &ClusterConfig,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let lease_ms = cfg.lease.as_millis() as i64;
    let deadline = std::time::Instant::now() + cfg.lease + Duration::from_secs(2);
    loop {
        let age: Option<i64> = c
            .query_opt(
                &format!(
                    "SELECT {} - seen_at FROM cluster_hubs WHERE hub = $1",
                    db_now(c)
                ),
                args![cfg.hub],
            )?
            .map(|r| r.get(0))
            .transpose()?;
        match age {
            Some(age) if age < lease_ms => {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline && !stop.is_cancelled(),
                    "another hub named {:?} is alive (renewed {age} ms ago): each hub of a cluster needs a --cluster name of its own",
                    cfg.hub
                );
                tracing::warn!(hub = %cfg.hub, age_ms = age, "a hub with this name was alive moments ago; waiting for its leases to run out");
                std::thread::sleep(Duration::from_millis(500));
            }
            _ => return Ok(()),
        }
    }
}

/// What `GET /api/v1/cluster` shows.
pub fn status(c: &dyn Sql, own: &Owned) -> db::Result<serde_json::Value> {
    let parts: Vec<serde_json::Value> = c
        .query(
            "SELECT part, owner, lease_until, epoch FROM cluster_partitions ORDER BY part",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(serde_json::json!({
                "partition": r.get::<i64>(0)?,
                "owner": r.get::<Option<String>>(1)?,
                "leaseUntil": r.get::<i64>(2)?,
                "epoch": r.get::<i64>(3)?,
            }))
        })
        .collect::<db::Result<_>>()?;
    let hubs: Vec<serde_json::Value> = c
        .query("SELECT hub, seen_at FROM cluster_hubs ORDER BY hub", &[])?
        .iter()
        .map(|r| Ok(serde_json::json!({"hub": r.get::<String>(0)?, "seenAt": r.get::<i64>(1)?})))
        .collect::<db::Result<_>>()?;
    let gateways: std::collections::BTreeMap<&String, u32> =
        own.gateways.iter().map(|g| (g, own.part_of(g))).collect();
    Ok(serde_json::json!({
        "hub": own.hub,
        "partitionCount": own.count,
        "owned": own.parts,
        "partitions": parts,
        "hubs": hubs,
        "gateways": gateways,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values (FNV-1a 64, computed independently): a change of hash would move every
        // gateway to another partition at an upgrade.
        assert_eq!(partition_of("gw-1", 32), 1);
        assert_eq!(partition_of("gw-zhongshan-01", 32), 10);
        assert_eq!(partition_of("", 8), 5);
        let mut seen = BTreeSet::new();
        for i in 0..200 {
            seen.insert(partition_of(&format!("gw-{i}"), 8));
        }
        assert_eq!(seen.len(), 8);
    }

    fn lease(hub: &str) -> Lease {
        Lease {
            cfg: ClusterConfig {
                hub: hub.into(),
                partitions: 8,
                lease: Duration::from_millis(1500),
            },
            held: BTreeSet::new(),
            releasing: BTreeSet::new(),
            serving: Serving::default(),
        }
    }

    #[test]
    fn hubs_share_the_partitions_and_one_takes_over_from_a_dead_one() {
        for (name, ca, cb, _guard) in crate::db::testing::pairs() {
            let (mut a, mut b) = (lease("a"), lease("b"));
            a.round(&*ca).unwrap();
            assert_eq!(a.held.len(), 8, "{name}: the first hub takes everything");
            b.round(&*cb).unwrap();
            assert!(b.held.is_empty(), "{name}: nothing is free yet");
            // a sees two hubs: stops serving half at once, hands it back next round.
            a.round(&*ca).unwrap();
            assert_eq!(a.held.len(), 4, "{name}");
            assert_eq!(a.releasing.len(), 4, "{name}");
            b.round(&*cb).unwrap();
            assert!(b.held.is_empty(), "{name}: not handed back yet");
            // One handed-back partition's session is still stopping: it stays a's until it has.
            let slow = *a.releasing.iter().next().unwrap();
            a.serving.lock().unwrap().insert(slow);
            a.round(&*ca).unwrap();
            assert_eq!(a.releasing, BTreeSet::from([slow]), "{name}");
            b.round(&*cb).unwrap();
            assert_eq!(b.held.len(), 3, "{name}");
            a.serving.lock().unwrap().remove(&slow);
            a.round(&*ca).unwrap();
            assert!(a.releasing.is_empty(), "{name}");
            b.round(&*cb).unwrap();
            assert_eq!(b.held.len(), 4, "{name}");
            assert!(a.held.is_disjoint(&b.held), "{name}");
            assert!(still_holds(&*ca, "a", &a.held).unwrap(), "{name}");
            assert!(!still_holds(&*ca, "a", &b.held).unwrap(), "{name}");
            // A stopped hub's second wrong number of partitions is refused.
            let mut c = lease("c");
            c.cfg.partitions = 16;
            let e = c.round(&*cb).unwrap_err().to_string();
            assert!(e.contains("--partitions 16"), "{name}: {e}");
            // a dies (renews no more): once its lease and heartbeat run out, b takes all.
            std::thread::sleep(Duration::from_millis(1700));
            assert!(
                !still_holds(&*ca, "a", &a.held).unwrap(),
                "{name}: lease ran out"
            );
            b.round(&*cb).unwrap();
            assert_eq!(b.held.len(), 8, "{name}: {:?}", b.held);
            // a comes back: its old leases are gone, not renewed.
            a.round(&*ca).unwrap();
            assert!(a.held.is_empty(), "{name}: {:?}", a.held);
            let epochs: i64 = db::one(
                &*ca,
                "SELECT CAST(SUM(epoch) AS BIGINT) FROM cluster_partitions",
                &[],
            )
            .unwrap();
            // a took 8, b 3 and 1 from a; after the pause b's own 4 had run out too and were
            // taken again, with a's 4.
            assert_eq!(epochs, 8 + 4 + 8, "{name}: one epoch per taking");
        }
    }
}
