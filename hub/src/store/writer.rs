//! The store's writer thread: drains the write queue in batches, one transaction per batch, and
//! acknowledges each message only after its batch is committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::db::{self, Begin, Sql, Tx, args};
use protocol::{Envelope, Item, Presence, Quality, Value};
use tokio::sync::mpsc;

use super::{Ack, WriteOp};
use crate::metrics::Metrics;

/// The writer's maps are looked up once or more per reading: a fast hash instead of SipHash. Their
/// keys are series ids and the gateway's own device and metric names (authenticated unless the hub
/// takes unsigned messages); foldhash seeds each map at random, which is the flood resistance kept.
type Fast = foldhash::fast::RandomState;
pub(super) type FastMap<K, V> = HashMap<K, V, Fast>;

/// Most operations in one transaction.
const MAX_BATCH: usize = 512;
/// Longest a batch waits for more under load ([`linger`]).
const LINGER_MAX: Duration = Duration::from_millis(20);
/// A batch that lingers stops waiting once nothing has come for this long (tokio's timer rounds
/// it up to the next millisecond: 2–3 ms).
const LINGER_STALL: Duration = Duration::from_millis(2);
/// A batch lingers only if at least this many operations were queued when the writer came back:
/// a queue, not the one or two envelopes a sustainable rate leaves behind a commit.
const LINGER_FROM: usize = 8;
/// Dead letters kept; older ones are deleted.
const DEAD_LETTERS_KEPT: i64 = 10_000;
/// Payload bytes kept per dead letter.
const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    conn: Box<dyn Sql + Send>,
    checkpoint_conn: Option<Box<dyn Sql + Send>>,
    mut rx: mpsc::Receiver<(WriteOp, Option<Ack>)>,
    metrics: Arc<Metrics>,
    sink: Option<crate::influx::Sink>,
    live: crate::live::Live,
    mut maintenance: super::rollup::Maintenance,
    feed: crate::rules::Feed,
) {
    let mut series = SeriesCache::default();
    if let Err(e) = repair_latest(&*conn) {
        tracing::error!(error = %e, "latest values after a crash not repaired; each series' is right again at its next reading");
    }
    let mut carry = Carry::new(conn.engine() == db::Engine::Sqlite);
    let checkpoints = checkpoint_conn.and_then(Checkpointer::start);
    maintenance.run_due(&*conn, &metrics);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Waiting for the next write with a timeout, so rollups and retention run on an idle hub too
    // (a current-thread runtime of its own: only its timer is used).
    let idle = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "store writer cannot start its timer; not started");
            return;
        }
    };
    loop {
        let wait = maintenance.next_due().min(carry.due());
        let first = match idle.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
            Ok(Some(op)) => op,
            Ok(None) => break,
            Err(_) => {
                if carry.due().is_zero() {
                    carry.write_logged(&*conn);
                }
                carry.maintain(&mut maintenance, &*conn, &metrics);
                continue;
            }
        };
        batch.push(first);
        take_queued(&mut rx, &mut batch);
        // Under load (a queue in front of it, and the writer came back at once), a batch waits a
        // little for what keeps coming (see [`linger`]).
        let busy = carry.came_back_busy();
        if busy && batch.len() >= LINGER_FROM {
            linger(&idle, &mut rx, &mut batch, LINGER_STALL, LINGER_MAX);
        }
        let started = Instant::now();
        let mut attempt = 0u32;
        // A failed commit (disk full, I/O error) is retried: the batch is not acknowledged, so nothing
        // is lost, and the queue in front of us fills up and slows the broker down meanwhile.
        let (fresh, touched) = loop {
            let late = Late::new(&maintenance);
            // Latest values wait for a later batch only while the hub is busy, and not for long.
            // (Busy as the writer came back: a linger that stalled left the queue empty.)
            let defer = carry.may_defer(busy || !rx.is_empty());
            match write_batch(&*conn, &mut series, &batch, &metrics, late, &carry, defer) {
                Ok((fresh, touched, latest)) => {
                    carry.after_commit(latest);
                    if let Some(c) = &checkpoints {
                        c.nudge();
                    }
                    break (fresh, touched);
                }
                Err(e) => {
                    attempt += 1;
                    series.clear();
                    metrics.store_errors.fetch_add(1, Relaxed);
                    let wait = Duration::from_millis((100u64 << attempt.min(6)).min(5_000));
                    tracing::error!(error = %e, attempt, ops = batch.len(), "store batch failed; retrying in {wait:?}");
                    std::thread::sleep(wait);
                }
            }
        };
        // The rules read what was just committed (see crate::rules).
        let events = fresh.iter().any(|&i| {
            matches!(&batch[i].0, WriteOp::Envelope { env, .. } if env.items.iter().any(|it| matches!(it, Item::Event(_))))
        });
        if !touched.is_empty() || events {
            feed.touch(touched, events);
        }
        if live.wanted() {
            publish_live(&live, &batch, &fresh);
        }
        if let Some(sink) = &sink {
            sink.offer(
                fresh
                    .into_iter()
                    .filter_map(|i| match &batch[i].0 {
                        WriteOp::Envelope { env, .. } => Some(env.clone()),
                        _ => None,
                    })
                    .collect(),
            );
        }
        let now = crate::now_ms();
        for (op, _) in &batch {
            if let WriteOp::Envelope { env, .. } = op {
                metrics
                    .commit_age
                    .observe_ms(now - env.sent_at.unix_millis());
            }
        }
        metrics.store_batches.fetch_add(1, Relaxed);
        metrics
            .store_batch_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        for (_, ack) in batch.drain(..) {
            if let Some(ack) = ack {
                ack();
            }
        }
        carry.last_batch = Some(Instant::now());
        // Between batches (never holding an acknowledgement back): rollups and retention.
        carry.maintain(&mut maintenance, &*conn, &metrics);
    }
    if let Err(e) = carry.write(&*conn) {
        tracing::error!(error = %e, "latest values not written at stop; the next start repairs them");
    }
    tracing::info!("store writer stopped: queue closed and drained");
}

/// Under load (at least [`LINGER_FROM`] operations queued, and the writer came back within
/// [`BUSY_GAP`] of its last batch),
/// a batch takes in what keeps arriving for up to `max` ([`LINGER_MAX`]), and stops as soon as
/// nothing has come for `stall` ([`LINGER_STALL`]: the load eased, or the broker stopped sending
/// until it hears back) or it is full. Group commit, as PostgreSQL's `commit_delay` or Kafka's
/// `linger.ms`. A batch costs the writer a share that does not grow with its size (the commit
/// and its sync) and one that grows with the series it writes rather than their readings (a
/// chunk row and a page of `reading_chunks_by_series` for each), so fewer, larger batches under
/// load need less of the writer per reading (BENCHMARKS.md), leaving the CPU to decoding.
///
/// What it costs: under load, up to [`LINGER_MAX`] more before a batch is committed and
/// acknowledged, and a [`LINGER_STALL`] of idling at the end of a linger that stalls. A short
/// queue, or one that comes after a pause of [`BUSY_GAP`], is written at once.
fn linger(
    idle: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<(WriteOp, Option<Ack>)>,
    batch: &mut Vec<(WriteOp, Option<Ack>)>,
    stall: Duration,
    max: Duration,
) {
    let end = Instant::now() + max;
    while batch.len() < MAX_BATCH {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match idle.block_on(async { tokio::time::timeout(stall.min(left), rx.recv()).await }) {
            Ok(Some(op)) => batch.push(op),
            // Stalled; or closed, which the writer's next wait sees.
            Ok(None) | Err(_) => return,
        }
        take_queued(rx, batch);
    }
}

/// Adds to `batch` what is queued, up to [`MAX_BATCH`].
fn take_queued(
    rx: &mut mpsc::Receiver<(WriteOp, Option<Ack>)>,
    batch: &mut Vec<(WriteOp, Option<Ack>)>,
) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// The writer's automatic checkpoint (SQLite's default is 1,000 pages): only a safety net, should
/// the [`Checkpointer`] fall behind.
pub(super) const WRITER_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 16384";
/// How often the [`Checkpointer`] runs while commits come.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Copies committed pages from the WAL into the database file on a thread and connection of its
/// own (SQLite, `PRAGMA wal_checkpoint(PASSIVE)`), at most once per [`CHECKPOINT_EVERY`] while
/// commits come. Left to SQLite, the commit that passes 1,000 WAL pages checkpoints inside the
/// writer's time (about a tenth of it under load, `store_bench`): reading those pages back, writing
/// them into the database and syncing it. A passive checkpoint takes no lock the writer waits
/// for. Should it fall behind (a reader holding an old snapshot keeps it from finishing), the
/// writer checkpoints itself past [`WRITER_AUTOCHECKPOINT`], as before.
struct Checkpointer {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(conn: Box<dyn Sql + Send>) -> Option<Self> {
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let checkpoint = move || {
            if let Err(e) = conn.query_opt("PRAGMA wal_checkpoint(PASSIVE)", &[]) {
                tracing::warn!(error = %e, "WAL checkpoint failed; tried again after the next commit");
            }
        };
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                // A commit wakes it; the commits of the next second join that checkpoint.
                'commits: while woken.recv().is_ok() {
                    let due = Instant::now() + CHECKPOINT_EVERY;
                    loop {
                        match woken.recv_timeout(due.saturating_duration_since(Instant::now())) {
                            Ok(()) => {}
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => break 'commits,
                        }
                    }
                    checkpoint();
                }
                // The writer stopped: what it committed last goes in too.
                checkpoint();
            });
        match thread {
            Ok(thread) => Some(Self {
                wake: Some(wake),
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the checkpoint thread; the writer checkpoints itself");
                None
            }
        }
    }

    /// After a commit.
    fn nudge(&self) {
        if let Some(w) = &self.wake {
            let _ = w.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long latest values may wait for a later batch.
const CARRY_MAX: Duration = Duration::from_millis(250);
/// A batch that starts within this of the last one's end finds the hub busy.
const BUSY_GAP: Duration = Duration::from_millis(5);

/// Latest values committed with their readings in a batch but not yet written to `series`.
///
/// A batch of 100 envelopes from four gateways updates some 2,000 series rows, about a sixth of
/// the writer's time. While the hub is busy (more writes are queued, or the batch comes within
/// [`BUSY_GAP`] of the last) a batch leaves its latest values to a later one, which writes them
/// all at once; after [`CARRY_MAX`] the next batch writes them, or the writer does on its own
/// when none comes. Readers see latest values up to that much older under load, and as before
/// at light load; the readings themselves are committed as before. A batch without readings
/// carries nothing.
///
/// `rollup_state.latest_from`, committed with the first batch that carries, says which chunks
/// hold readings `series` may not show yet, so a start after a crash writes them
/// ([`repair_latest`]). Rollups, merges and retention, which move chunks, run only once nothing
/// is carried ([`Carry::maintain`]). SQLite only: PostgreSQL's writers (one per hub of a
/// cluster) write latest values with every batch.
struct Carry {
    enabled: bool,
    values: LatestMap,
    since: Option<Instant>,
    /// When the last batch was done.
    last_batch: Option<Instant>,
}

/// What a committed batch did with its latest values.
enum LatestWrite {
    Written,
    Carried(Vec<(i64, Latest)>),
}

impl Carry {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            values: LatestMap::default(),
            since: None,
            last_batch: None,
        }
    }

    /// Whether the writer came back within [`BUSY_GAP`] of its last batch.
    fn came_back_busy(&self) -> bool {
        self.last_batch.is_some_and(|t| t.elapsed() < BUSY_GAP)
    }

    /// Whether a batch may leave its latest values to a later one, the hub being `busy`.
    fn may_defer(&self, busy: bool) -> bool {
        self.enabled && busy && self.since.is_none_or(|s| s.elapsed() < CARRY_MAX)
    }

    /// How long until what is carried must be written.
    fn due(&self) -> Duration {
        match self.since {
            Some(s) => CARRY_MAX.saturating_sub(s.elapsed()),
            None => Duration::MAX,
        }
    }

    fn after_commit(&mut self, latest: LatestWrite) {
        match latest {
            LatestWrite::Written => {
                self.values.clear();
                self.since = None;
            }
            // A batch without readings carries nothing, and starts no wait.
            LatestWrite::Carried(latest) if latest.is_empty() => {}
            LatestWrite::Carried(latest) => {
                self.since.get_or_insert_with(Instant::now);
                for (id, l) in latest {
                    merge_latest(&mut self.values, id, l);
                }
            }
        }
    }

    /// In a batch's transaction, before its chunks are written, when it will carry values: the
    /// first batch that carries notes where the carried readings start (its chunks and every
    /// later one's may hold readings newer than `series` shows, until a batch writes them).
    fn mark_start(&self, tx: &dyn Sql, carries: bool) -> db::Result<()> {
        if carries && self.values.is_empty() {
            tx.execute(
                "UPDATE rollup_state SET latest_from = (SELECT COALESCE(MAX(id), 0) FROM reading_chunks)",
                &[],
            )?;
        }
        Ok(())
    }

    /// In a batch's transaction: writes the carried values with the batch's own `latest` and
    /// clears the mark, or carries `latest` too; returns what to do after the commit.
    fn in_batch(
        &self,
        tx: &dyn Sql,
        latest: Vec<(i64, Latest)>,
        defer: bool,
    ) -> db::Result<LatestWrite> {
        if defer {
            return Ok(LatestWrite::Carried(latest));
        }
        if self.values.is_empty() {
            write_latest(tx, &latest)?;
        } else {
            let mut all = self.values.clone();
            for (id, l) in latest {
                merge_latest(&mut all, id, l);
            }
            let mut all: Vec<(i64, Latest)> = all.into_iter().collect();
            all.sort_unstable_by_key(|(id, _)| *id);
            write_latest(tx, &all)?;
            tx.execute("UPDATE rollup_state SET latest_from = NULL", &[])?;
        }
        Ok(LatestWrite::Written)
    }

    /// Writes what is carried in a transaction of its own (when the writer stops).
    fn write(&mut self, conn: &dyn Sql) -> db::Result<()> {
        if self.values.is_empty() {
            self.since = None;
            return Ok(());
        }
        let tx = Tx::begin(conn, Begin::Write)?;
        let done = self.in_batch(&tx, Vec::new(), false)?;
        tx.commit()?;
        self.after_commit(done);
        Ok(())
    }

    /// [`Self::write`], logging a failure; the next try comes a [`CARRY_MAX`] later (or with the
    /// next batch), not at once.
    fn write_logged(&mut self, conn: &dyn Sql) {
        if let Err(e) = self.write(conn) {
            self.since = Some(Instant::now());
            tracing::error!(error = %e, "latest values not written; tried again shortly");
        }
    }

    /// Runs the rollups, merges and retention that are due. They move and delete chunks, and the
    /// chunks after `rollup_state.latest_from` must stay as written while values are carried (the
    /// repair reads them, and SQLite could hand a deleted top id out again): what is carried is
    /// written first, and if it cannot be, maintenance waits.
    fn maintain(
        &mut self,
        maintenance: &mut super::rollup::Maintenance,
        conn: &dyn Sql,
        metrics: &Metrics,
    ) {
        if !self.values.is_empty() {
            if !maintenance.is_due() {
                return;
            }
            self.write_logged(conn);
            if !self.values.is_empty() {
                return;
            }
        }
        maintenance.run_due(conn, metrics);
    }
}

/// After a crash while latest values were carried ([`Carry`]): writes each series' newest reading
/// among the chunks after `rollup_state.latest_from` into `series`. The receive time is not in the
/// chunks: `last_received` becomes at least the reading's time (a lower bound, with a synced
/// clock), and a series' value type is left as it was.
fn repair_latest(conn: &dyn Sql) -> db::Result<()> {
    let tx = Tx::begin(conn, Begin::Write)?;
    let from: Option<i64> = db::one(&tx, "SELECT latest_from FROM rollup_state", &[])?;
    let Some(from) = from else {
        return Ok(());
    };
    let newest = super::raw::newest_since(&tx, from)?;
    let latest: Vec<(i64, Latest)> = newest
        .into_iter()
        .map(|(id, p)| {
            let vtype = p.text.is_some().then_some("text");
            let value = (p.ts, p.value, p.text, p.quality, vtype);
            (
                id,
                Latest {
                    received: p.ts,
                    value: Some(value),
                },
            )
        })
        .collect();
    write_latest(&tx, &latest)?;
    tx.execute("UPDATE rollup_state SET latest_from = NULL", &[])?;
    tx.commit()?;
    tracing::warn!(
        series = latest.len(),
        "latest values carried at a crash written from the stored readings"
    );
    Ok(())
}

/// Puts what a committed batch stored on the live feed, in the order it came (a gateway's presence
/// before the readings it sent after it).
fn publish_live(live: &crate::live::Live, batch: &[(WriteOp, Option<Ack>)], fresh: &[usize]) {
    for (i, (op, _)) in batch.iter().enumerate() {
        match op {
            // `fresh` is in batch order.
            WriteOp::Envelope { env, .. } if fresh.binary_search(&i).is_ok() => live.envelope(env),
            WriteOp::Presence { presence, .. } => live.presence(presence),
            WriteOp::Reply { reply, .. } => live.reply(reply),
            _ => {}
        }
    }
}

/// What a batch stored, added to the metrics once it is committed (a batch tried again after a
/// failure is not counted twice).
#[derive(Debug, Default)]
struct Counts {
    envelopes: u64,
    duplicates: u64,
    readings: u64,
    events: u64,
    refused: u64,
}

impl Counts {
    /// Adds what one operation stored.
    fn add(&mut self, op: Counts) {
        self.envelopes += op.envelopes;
        self.duplicates += op.duplicates;
        self.readings += op.readings;
        self.events += op.events;
        self.refused += op.refused;
    }
}

/// Writes a batch in one transaction. First without savepoints: a savepoint makes SQLite copy every
/// page an operation touches into a sub-journal first, and an envelope of 500 series touches some
/// 500 pages, so a savepoint per operation halved the writer's rate (BENCHMARKS.md). Only if that
/// fails for a reason other than the disk or the connection (the database refusing something) is
/// the batch written again with one savepoint per operation, setting aside just what is refused.
/// A failure that is not an operation's own fails that second pass too and is retried by the
/// caller, as before.
fn write_batch(
    conn: &dyn Sql,
    series: &mut SeriesCache,
    batch: &[(WriteOp, Option<Ack>)],
    metrics: &Metrics,
    late: Late,
    carry: &Carry,
    defer: bool,
) -> db::Result<(Vec<usize>, Vec<i64>, LatestWrite)> {
    let retry = late.fresh();
    let mut counts = Counts::default();
    let done = match try_batch(conn, series, batch, late, carry, defer, false, &mut counts) {
        Err(e) if !e.is_transient() => {
            // Rolled back: ids of series created in it are gone.
            series.clear();
            tracing::debug!(error = %e, ops = batch.len(), "batch refused; writing it again an operation at a time");
            counts = Counts::default();
            // Isolated, latest values are written with the batch.
            try_batch(conn, series, batch, retry, carry, false, true, &mut counts)?
        }
        other => other?,
    };
    metrics
        .envelopes_stored
        .fetch_add(counts.envelopes, Relaxed);
    metrics
        .envelopes_duplicate
        .fetch_add(counts.duplicates, Relaxed);
    metrics.readings_stored.fetch_add(counts.readings, Relaxed);
    metrics.events_stored.fetch_add(counts.events, Relaxed);
    for _ in 0..counts.refused {
        metrics.rejected("store_refused");
    }
    Ok(done)
}

/// One attempt at a batch; with `isolate`, each operation in a savepoint of its own; with `defer`,
/// its latest values are left to a later batch ([`Carry`]).
#[allow(clippy::too_many_arguments)]
fn try_batch(
    conn: &dyn Sql,
    series: &mut SeriesCache,
    batch: &[(WriteOp, Option<Ack>)],
    mut late: Late,
    carry: &Carry,
    defer: bool,
    isolate: bool,
    counts: &mut Counts,
) -> db::Result<(Vec<usize>, Vec<i64>, LatestWrite)> {
    let tx = Tx::begin(conn, Begin::Deferred)?;
    let mut dead_letters = 0;
    // The latest value of each series written in this batch, applied once at its end: a series gets
    // one update per batch instead of one per reading. Not isolated, operations stage theirs
    // beside the batch's readings (a failure fails the batch); isolated, an operation's are kept
    // here once it succeeded.
    let mut kept = LatestMap::default();
    let mut staged = Staged::default();
    let mut fresh = Vec::new();
    for (i, (op, _)) in batch.iter().enumerate() {
        // Isolated, each operation in a savepoint: one that the database refuses is set aside as a
        // dead letter instead of failing the whole batch forever.
        if isolate {
            tx.batch("SAVEPOINT op")?;
        }
        let mut new_envelope = false;
        let mut op_counts = Counts::default();
        let result = apply(
            &tx,
            series,
            op,
            &mut staged,
            &mut new_envelope,
            &mut op_counts,
            &mut late,
        )
        // Isolated, the operation's readings go in inside its savepoint.
        .and_then(|()| match isolate {
            true => staged.readings.flush(&tx),
            false => Ok(Vec::new()),
        });
        match result {
            Ok(op_latest) => {
                if isolate {
                    tx.batch("RELEASE SAVEPOINT op")?;
                }
                counts.add(op_counts);
                if new_envelope {
                    fresh.push(i);
                }
                for (id, l) in op_latest {
                    merge_latest(&mut kept, id, l);
                }
            }
            Err(e) if e.is_transient() || !isolate => return Err(e),
            Err(e) => {
                tx.batch("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")?;
                staged.readings.clear();
                series.clear();
                tracing::warn!(error = %e, op = ?op, "write refused by the database; set aside as a dead letter");
                counts.refused += 1;
                insert_dead_letter(
                    &tx,
                    crate::now_ms(),
                    "",
                    None,
                    "store_refused",
                    &e.to_string(),
                    format!("{op:?}").as_bytes(),
                )?;
                dead_letters += 1;
            }
        }
        if let WriteOp::DeadLetter { .. } = op {
            dead_letters += 1;
        }
    }
    if dead_letters > 0 {
        tx.execute(
            "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - $1",
            args![DEAD_LETTERS_KEPT],
        )?;
    }
    carry.mark_start(&tx, defer && !staged.readings.is_empty())?;
    // All the batch's readings at once: a chunk per series and minute (see `super::raw`).
    let mut latest = staged.readings.flush(&tx)?;
    if isolate {
        latest = kept.into_iter().collect();
    }
    let touched = latest.iter().map(|(id, _)| *id).collect();
    let latest = carry.in_batch(&tx, latest, defer)?;
    super::rollup::mark_dirty(&tx, &late.minutes)?;
    tx.commit()?;
    Ok((fresh, touched, latest))
}

/// Readings of a batch that fall in minutes already rolled up (see [`super::rollup`]).
struct Late {
    watermark: i64,
    /// Older than raw retention: not kept long enough to recompute a minute from.
    raw_cutoff: i64,
    minutes: std::collections::HashSet<(i64, i64), Fast>,
}

impl Late {
    fn new(m: &super::rollup::Maintenance) -> Self {
        Self {
            watermark: m.watermark(),
            raw_cutoff: m.raw_cutoff(crate::now_ms()),
            minutes: Default::default(),
        }
    }

    /// The same bounds with nothing noted, for a batch written again.
    fn fresh(&self) -> Self {
        Self {
            watermark: self.watermark,
            raw_cutoff: self.raw_cutoff,
            minutes: Default::default(),
        }
    }

    fn note(&mut self, series: i64, ts: i64) {
        if ts < self.watermark && ts >= self.raw_cutoff {
            let minute = ts - ts.rem_euclid(super::rollup::MINUTE_MS);
            self.minutes.insert((series, minute));
        }
    }
}

/// The newest reading of a series seen in a batch, and when the batch received the series.
#[derive(Debug, Clone, Default)]
struct Latest {
    received: i64,
    /// The newest reading that has a value.
    value: Option<LatestValue>,
}

/// (ts, number, text, quality, value type) of a reading; no value type leaves the series' as it is.
type LatestValue = (
    i64,
    Option<f64>,
    Option<String>,
    Option<String>,
    Option<&'static str>,
);

type LatestMap = FastMap<i64, Latest>;

/// What an operation leaves to be written after it: its readings and beside them the latest value
/// of each series it wrote (and, unless each operation is isolated, those of the operations
/// before it).
#[derive(Default)]
struct Staged {
    readings: super::raw::Pending<Latest>,
}

impl Latest {
    /// Takes in one reading received at `received`: the reading with the larger timestamp wins,
    /// and on a tie the one written later, as row-by-row updates would.
    fn note(
        &mut self,
        received: i64,
        ts: i64,
        value: Option<f64>,
        text: Option<&str>,
        quality: Option<&str>,
        vtype: Option<&'static str>,
    ) {
        self.received = self.received.max(received);
        if let Some(vt) = vtype
            && self.value.as_ref().is_none_or(|o| o.0 <= ts)
        {
            self.value = Some((
                ts,
                value,
                text.map(str::to_owned),
                quality.map(str::to_owned),
                Some(vt),
            ));
        }
    }
}

/// Keeps the newer of two: the later receive time, and the reading with the larger timestamp
/// (on a tie, the one written later, as row-by-row updates would).
fn merge_latest(map: &mut LatestMap, id: i64, new: Latest) {
    match map.get_mut(&id) {
        None => {
            map.insert(id, new);
        }
        Some(old) => {
            old.received = old.received.max(new.received);
            if let Some(v) = new.value
                && old.value.as_ref().is_none_or(|o| o.0 <= v.0)
            {
                old.value = Some(v);
            }
        }
    }
}

fn write_latest(tx: &dyn Sql, latest: &[(i64, Latest)]) -> db::Result<()> {
    // CASE, not MAX(a, b) or GREATEST(a, b): the one spelling both engines know. $6 is 1 when the
    // batch has a value for the series.
    const UPDATE: &str = "UPDATE series SET
            last_received = CASE WHEN COALESCE(last_received, 0) > $2 THEN last_received ELSE $2 END,
            last_ts = CASE WHEN $6 = 1 AND (last_ts IS NULL OR last_ts <= $3) THEN $3 ELSE last_ts END,
            last_value = CASE WHEN $6 = 1 AND (last_ts IS NULL OR last_ts <= $3) THEN $4 ELSE last_value END,
            last_text = CASE WHEN $6 = 1 AND (last_ts IS NULL OR last_ts <= $3) THEN $5 ELSE last_text END,
            last_quality = CASE WHEN $6 = 1 AND (last_ts IS NULL OR last_ts <= $3) THEN $7 ELSE last_quality END,
            vtype = COALESCE($8, vtype)
         WHERE id = $1";
    // One statement, prepared once per batch (and on SQLite rewritten once).
    let mut params = Vec::with_capacity(8 * latest.len());
    for (id, l) in latest {
        match &l.value {
            Some((ts, value, text, quality, vtype)) => params.extend_from_slice(args![
                id, l.received, ts, value, text, 1_i64, quality, vtype
            ]),
            None => params.extend_from_slice(args![
                id,
                l.received,
                None::<i64>,
                None::<f64>,
                None::<String>,
                0_i64,
                None::<String>,
                None::<String>
            ]),
        };
    }
    tx.execute_each(UPDATE, &params, 8)?;
    Ok(())
}

fn apply(
    tx: &dyn Sql,
    series: &mut SeriesCache,
    op: &WriteOp,
    staged: &mut Staged,
    fresh: &mut bool,
    counts: &mut Counts,
    late: &mut Late,
) -> db::Result<()> {
    match op {
        WriteOp::Envelope { env, received } => {
            *fresh = write_envelope(
                tx,
                series,
                env,
                received.unix_millis(),
                staged,
                counts,
                late,
            )?;
            Ok(())
        }
        WriteOp::Presence { presence, received } => {
            write_presence(tx, presence, received.unix_millis())
        }
        WriteOp::Heartbeat {
            heartbeat,
            received,
        } => {
            let json = serde_json::to_string(heartbeat).unwrap_or_default();
            tx.execute(
                "INSERT INTO gateways (id, boot, state, clock, last_seen, last_heartbeat) VALUES ($1, $2, 'online', $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET boot = $2, clock = $3, last_seen = $4, last_heartbeat = $5,
                   state = CASE WHEN gateways.boot = $2 THEN gateways.state ELSE 'online' END",
                args![heartbeat.gateway.as_str(), heartbeat.boot.to_string(), clock_str(heartbeat.clock), received.unix_millis(), json],
            )?;
            Ok(())
        }
        WriteOp::Command {
            command,
            gateway,
            asset,
        } => {
            let action = serde_json::to_string(&command.action).unwrap_or_default();
            tx.execute(
                "INSERT INTO commands (id, gateway, device, asset, action, issued_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![
                    command.id.to_string(),
                    gateway,
                    command.device.as_str(),
                    asset,
                    action,
                    command.issued_at.unix_millis(),
                    command.expires_at.unix_millis()
                ],
            )?;
            Ok(())
        }
        WriteOp::Reply { reply, received } => {
            let outcome = serde_json::to_value(reply.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned));
            let read_back = reply
                .read_back
                .as_ref()
                .and_then(|v| serde_json::to_string(v).ok());
            // Only the gateway the command went to can answer it; a reply to a command this hub did
            // not issue (or a second reply) changes nothing.
            tx.execute(
                "UPDATE commands SET outcome = $3, detail = $4, read_back = $5, replied_at = $6
                 WHERE id = $1 AND gateway = $2 AND outcome IS NULL",
                args![
                    reply.id.to_string(),
                    reply.gateway.as_str(),
                    outcome,
                    reply.detail,
                    read_back,
                    received.unix_millis()
                ],
            )?;
            Ok(())
        }
        WriteOp::Evidence {
            sha256,
            media_type,
            bytes,
            gateway,
            received,
        } => {
            tx.execute(
                "INSERT INTO evidence (sha256, media_type, bytes, gateway, stored_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                args![sha256, media_type, *bytes, gateway, received.unix_millis()],
            )?;
            Ok(())
        }
        WriteOp::Skip => Ok(()),
        WriteOp::DeadLetter {
            received,
            topic,
            gateway,
            code,
            reason,
            payload,
        } => insert_dead_letter(
            tx,
            received.unix_millis(),
            topic,
            gateway.as_deref(),
            code,
            reason,
            payload,
        ),
    }
}

fn clock_str(c: protocol::ClockState) -> &'static str {
    match c {
        protocol::ClockState::Synced => "synced",
        protocol::ClockState::Unsynced => "unsynced",
    }
}

fn insert_dead_letter(
    tx: &dyn Sql,
    received: i64,
    topic: &str,
    gateway: Option<&str>,
    code: &str,
    reason: &str,
    payload: &[u8],
) -> db::Result<()> {
    let kept = &payload[..payload.len().min(DEAD_LETTER_PAYLOAD_MAX)];
    tx.execute(
        "INSERT INTO dead_letters (received, topic, gateway, code, reason, payload, size) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        args![received, topic, gateway, code, reason, kept, payload.len()],
    )?;
    Ok(())
}

fn write_envelope(
    tx: &dyn Sql,
    series: &mut SeriesCache,
    env: &Envelope,
    received: i64,
    staged: &mut Staged,
    counts: &mut Counts,
    late: &mut Late,
) -> db::Result<bool> {
    let gw = env.gateway.as_str();
    let fresh = tx.execute(
        "INSERT INTO envelopes (gateway, boot, seq, received, items) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
        args![gw, env.boot.to_string(), env.seq, received, env.items.len()],
    )?;
    if fresh == 0 {
        counts.duplicates += 1;
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO gateways (id, boot, state, clock, last_seen) VALUES ($1, $2, 'online', $3, $4)
         ON CONFLICT (id) DO UPDATE SET
            last_seen = CASE WHEN gateways.last_seen > excluded.last_seen THEN gateways.last_seen ELSE excluded.last_seen END",
        args![gw, env.boot.to_string(), clock_str(env.clock), received],
    )?;
    let (mut readings, mut events) = (0u64, 0u64);
    let series = series.of_gateway(gw);
    for item in &env.items {
        match item {
            Item::Reading(r) => {
                let id = series.id(
                    tx,
                    gw,
                    r.device.as_str(),
                    r.metric.as_str(),
                    r.unit.as_ref().map(|u| u.as_str()),
                )?;
                let (value, text) = match &r.value {
                    Some(Value::Text(t)) => (None, Some(t.as_str())),
                    Some(v) => (v.as_f64(), None),
                    None => (None, None),
                };
                let quality = match &r.quality {
                    Quality::Good => None,
                    Quality::Bad { reason, .. } => Some(reason.as_str()),
                };
                let ts = r.observed_at.unix_millis();
                if value.is_some() {
                    late.note(id, ts);
                }
                let vtype = r.value.as_ref().map(|v| match v {
                    Value::Bool(_) => "bool",
                    Value::Number(_) => "number",
                    Value::Text(_) => "text",
                });
                staged
                    .readings
                    .push(id, ts, value, text, quality)
                    .note(received, ts, value, text, quality, vtype);
                readings += 1;
            }
            Item::Event(e) => {
                let attributes =
                    serde_json::to_string(&e.attributes).unwrap_or_else(|_| "{}".into());
                let evidence = serde_json::to_string(&e.evidence).unwrap_or_else(|_| "[]".into());
                let phase = serde_json::to_value(e.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let inserted = tx.query_opt(
                    "INSERT INTO events (gateway, device, event, ts, phase, attributes, evidence, received)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT DO NOTHING
                     RETURNING id",
                    args![
                        gw,
                        e.device.as_str(),
                        e.event.as_str(),
                        e.observed_at.unix_millis(),
                        phase,
                        attributes,
                        evidence,
                        received
                    ],
                )?;
                if let Some(row) = inserted {
                    let event_id: i64 = row.get(0)?;
                    for (position, r) in e.evidence.iter().enumerate() {
                        tx.execute(
                            "INSERT INTO event_evidence (event_id, sha256, position, gateway, media_type, bytes)
                             VALUES ($1, $2, $3, $4, $5, $6)
                             ON CONFLICT DO NOTHING",
                            args![event_id, r.sha256, position, gw, r.media_type, r.bytes],
                        )?;
                    }
                }
                events += 1;
            }
        }
    }
    counts.readings += readings;
    counts.events += events;
    counts.envelopes += 1;
    Ok(true)
}

fn write_presence(tx: &dyn Sql, p: &Presence, received: i64) -> db::Result<()> {
    let state = match p.state {
        protocol::PresenceState::Online => "online",
        protocol::PresenceState::Offline => "offline",
    };
    let boot = p.boot.to_string();
    // A retained `offline` from an earlier boot must not mark a gateway that has since reconnected.
    tx.execute(
        "INSERT INTO gateways (id, boot, state, clock, agent, config_version, connected_at, last_seen, online_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $3 = 'online' THEN CAST($8 AS BIGINT) END)
         ON CONFLICT (id) DO UPDATE SET
            online_at = CASE WHEN $3 = 'online' THEN CAST($8 AS BIGINT) ELSE gateways.online_at END,
            state = CASE WHEN $3 = 'offline' AND gateways.boot IS DISTINCT FROM $2 THEN gateways.state ELSE $3 END,
            boot = CASE WHEN $3 = 'offline' THEN gateways.boot ELSE $2 END,
            clock = $4, agent = COALESCE($5, gateways.agent), config_version = COALESCE($6, gateways.config_version),
            connected_at = CASE WHEN $3 = 'online' THEN $7 ELSE gateways.connected_at END,
            last_seen = CASE WHEN gateways.last_seen > $8 THEN gateways.last_seen ELSE $8 END",
        args![p.gateway.as_str(), boot, state, clock_str(p.clock), p.agent, p.config_version, p.sent_at.unix_millis(), received],
    )?;
    for d in &p.devices {
        tx.execute(
        "INSERT INTO assets (id, kind, gateway, device, profile, lon, lat, road_segment, grid, zone, report_interval_s, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (id) DO UPDATE SET kind = $2, gateway = $3, device = $4, profile = $5, lon = $6, lat = $7,
            road_segment = $8, grid = $9, zone = $10, report_interval_s = $11, updated_at = $12",
        args![
            d.asset.as_str(),
            d.kind.as_str(),
            p.gateway.as_str(),
            d.device.as_str(),
            d.profile,
            d.location.map(|l| l.lon()),
            d.location.map(|l| l.lat()),
            d.road_segment.as_ref().map(|z| z.as_str()),
            d.grid.as_ref().map(|z| z.as_str()),
            d.zone.as_ref().map(|z| z.as_str()),
            d.report_interval_s,
            received
        ])?;
    }
    Ok(())
}

/// Series ids by gateway, device and metric, so a reading costs a lookup in memory, not a query
/// (nested maps so a hit needs no allocation; the gateway's looked up once per envelope).
#[derive(Default)]
struct SeriesCache {
    ids: FastMap<String, GatewaySeries>,
}

/// One gateway's series ids, by device and metric.
#[derive(Default)]
struct GatewaySeries {
    ids: FastMap<String, FastMap<String, i64>>,
}

impl SeriesCache {
    fn clear(&mut self) {
        // After a rollback, ids created inside it no longer exist.
        self.ids.clear();
    }

    fn of_gateway(&mut self, gw: &str) -> &mut GatewaySeries {
        // A key allocated per envelope (not per reading), to use the entry API.
        self.ids.entry(gw.to_owned()).or_default()
    }
}

impl GatewaySeries {
    fn id(
        &mut self,
        tx: &dyn Sql,
        gw: &str,
        device: &str,
        metric: &str,
        unit: Option<&str>,
    ) -> db::Result<i64> {
        if let Some(id) = self.ids.get(device).and_then(|m| m.get(metric)) {
            return Ok(*id);
        }
        let id = db::one(
            tx,
            "INSERT INTO series (gateway, device, metric, unit) VALUES ($1, $2, $3, $4)
             ON CONFLICT (gateway, device, metric) DO UPDATE SET unit = COALESCE($4, series.unit)
             RETURNING id",
            args![gw, device, metric, unit],
        )?;
        self.ids
            .entry(device.to_owned())
            .or_default()
            .insert(metric.to_owned(), id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn envelope(seq: u64, value: f64) -> Envelope {
        serde_json::from_value(serde_json::json!({
            "v": 1, "gateway": "gw-a", "boot": "67e55044-10b1-426f-9247-bb680e5fe0c8", "seq": seq,
            "sentAt": "2026-11-22T06:00:00.000Z", "clock": "synced",
            "items": [
                {"kind": "reading", "device": "d1", "metric": "pm10", "unit": "ug/m3", "observedAt": "2026-11-22T06:00:00.000Z", "value": value},
                {"kind": "reading", "device": "d1", "metric": "pm10", "observedAt": "2026-11-22T05:59:00.000Z", "value": 1.0},
                {"kind": "reading", "device": "d1", "metric": "lampOn", "observedAt": "2026-11-22T06:00:00.000Z", "value": true},
                {"kind": "reading", "device": "d2", "metric": "x", "observedAt": "2026-11-22T06:00:01.000Z", "quality": {"bad": {"reason": "timeout"}}},
                // The same series and millisecond again in one envelope: the later one stays.
                {"kind": "reading", "device": "d1", "metric": "pm10", "observedAt": "2026-11-22T06:00:00.000Z", "value": value + 1.0},
                {"kind": "event", "device": "cam", "event": "plate", "observedAt": "2026-11-22T06:00:02.000Z", "phase": "instant",
                 "attributes": {"plate": "苏A8HK52"},
                 "evidence": [{"sha256": "ab".repeat(32), "mediaType": "image/jpeg", "bytes": 10}]}
            ]
        }))
        .unwrap()
    }

    fn op(env: Envelope) -> (WriteOp, Option<Ack>) {
        let received = env.sent_at;
        (WriteOp::Envelope { env, received }, None)
    }

    /// The sequence numbers of a batch of envelopes.
    fn seqs(batch: &[(WriteOp, Option<Ack>)]) -> Vec<u64> {
        batch
            .iter()
            .map(|(o, _)| match o {
                WriteOp::Envelope { env, .. } => env.seq,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_lingering_batch_takes_what_comes_up_to_a_full_batch_and_stops_when_nothing_does() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(4 * MAX_BATCH);
        for seq in 0..(MAX_BATCH as u64 + 10) {
            tx.try_send(op(envelope(seq, 1.0))).unwrap();
        }
        // Full: the rest waits for the next batch.
        let mut batch = vec![rx.try_recv().unwrap()];
        linger(&rt, &mut rx, &mut batch, LINGER_STALL, LINGER_MAX);
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(seqs(&batch), (0..MAX_BATCH as u64).collect::<Vec<_>>());
        // Nothing more comes: it stops with what there is, in order (and well before
        // LINGER_MAX, which is not asserted on a shared machine).
        let mut batch = vec![rx.try_recv().unwrap()];
        linger(&rt, &mut rx, &mut batch, LINGER_STALL, LINGER_MAX);
        assert_eq!(
            seqs(&batch),
            (MAX_BATCH as u64..MAX_BATCH as u64 + 10).collect::<Vec<_>>()
        );
        // Closed: it returns, and the writer's next wait sees the end.
        tx.try_send(op(envelope(1_000, 1.0))).unwrap();
        drop(tx);
        let mut batch = Vec::new();
        linger(&rt, &mut rx, &mut batch, LINGER_STALL, LINGER_MAX);
        assert_eq!(seqs(&batch), [1_000]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_lingering_batch_waits_for_what_comes_and_not_past_a_stall() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        // One comes 20 ms into the linger, the next only after a pause longer than the stall.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.blocking_send(op(envelope(1, 1.0))).unwrap();
            std::thread::sleep(Duration::from_secs(1));
            tx.blocking_send(op(envelope(2, 1.0))).unwrap();
        });
        let mut batch = vec![op(envelope(0, 1.0))];
        linger(
            &rt,
            &mut rx,
            &mut batch,
            Duration::from_millis(500),
            Duration::from_secs(10),
        );
        assert_eq!(
            seqs(&batch),
            [0, 1],
            "waited for the second, stopped before the third"
        );
        sender.join().unwrap();
    }

    fn command(id: &str) -> (WriteOp, Option<Ack>) {
        let command: protocol::Command = serde_json::from_value(serde_json::json!({
            "v": 1, "id": id, "device": "d1",
            "issuedAt": "2026-11-22T06:00:00.000Z", "expiresAt": "2026-11-22T06:01:00.000Z",
            "action": "reset"
        }))
        .unwrap();
        (
            WriteOp::Command {
                command,
                gateway: "gw-a".into(),
                asset: None,
            },
            None,
        )
    }

    fn presence(state: &str, boot: &str, sent: &str) -> (WriteOp, Option<Ack>) {
        let presence: Presence = serde_json::from_value(serde_json::json!({
            "v": 1, "gateway": "gw-a", "boot": boot, "state": state, "sentAt": sent, "clock": "synced",
            "agent": "edge-agent 0.1.0",
            "devices": [{"device": "d1", "asset": "dm-1", "kind": "dustMonitor",
                         "location": {"type": "Point", "coordinates": [118.78, 32.04]}, "roadSegment": "hanzhong-rd-s2",
                         "reportIntervalS": 60}]
        }))
        .unwrap();
        let received = presence.sent_at;
        (WriteOp::Presence { presence, received }, None)
    }

    fn heartbeat() -> (WriteOp, Option<Ack>) {
        let heartbeat: protocol::Heartbeat = serde_json::from_value(serde_json::json!({
            "v": 1, "gateway": "gw-a", "boot": "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "sentAt": "2026-11-22T06:00:05.000Z", "clock": "synced", "uptimeS": 5
        }))
        .unwrap();
        let received = heartbeat.sent_at;
        (
            WriteOp::Heartbeat {
                heartbeat,
                received,
            },
            None,
        )
    }

    fn maintenance(c: &dyn Sql, dir: &tempfile::TempDir) -> super::super::rollup::Maintenance {
        super::super::rollup::Maintenance::load(
            c,
            super::super::Retention::default(),
            dir.path().into(),
        )
        .unwrap()
    }

    /// What the writer commits reaches the database file itself (not only the WAL) within about
    /// a second, while every connection stays open, with the writer's own checkpoint far away.
    #[test]
    fn the_checkpointer_moves_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite3");
        let db = super::super::Database::Sqlite(path.clone());
        let writer = db.connect_and_migrate().unwrap();
        writer.batch(WRITER_AUTOCHECKPOINT).unwrap();
        let reader = db.connect().unwrap();
        let checkpoints = Checkpointer::start(db.connect().unwrap()).unwrap();
        let file_has = |rows: i64| -> bool {
            // The database file alone, as a copy without its WAL.
            let copy = dir.path().join("copy.sqlite3");
            std::fs::copy(&path, &copy).unwrap();
            let c = rusqlite::Connection::open(&copy).unwrap();
            let n: i64 = c
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name = 't'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let found = n == 1
                && c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .unwrap()
                    == rows;
            drop(c);
            std::fs::remove_file(&copy).unwrap();
            found
        };
        writer.batch("CREATE TABLE t (x INTEGER)").unwrap();
        let tx = Tx::begin(&*writer, Begin::Write).unwrap();
        for i in 0..1000 {
            tx.execute("INSERT INTO t (x) VALUES ($1)", args![i])
                .unwrap();
        }
        tx.commit().unwrap();
        assert!(!file_has(1000), "still only in the WAL");
        checkpoints.nudge();
        let end = Instant::now() + Duration::from_secs(10);
        while !file_has(1000) {
            assert!(Instant::now() < end, "never checkpointed");
            std::thread::sleep(Duration::from_millis(100));
        }
        // A reader meanwhile reads as before; stopping joins the thread.
        assert_eq!(
            db::one::<i64>(&*reader, "SELECT COUNT(*) FROM t", &[]).unwrap(),
            1000
        );
        drop(checkpoints);
    }

    #[test]
    fn latest_values_carried_are_written_by_a_later_batch_or_repaired_after_a_crash() {
        for (name, c) in crate::db::testing::migrated() {
            let c = &*c;
            let dir = tempfile::tempdir().unwrap();
            let mut m = maintenance(c, &dir);
            let metrics = Metrics::default();
            let mut series = SeriesCache::default();
            let mut carry = Carry::new(true);
            let mark = || -> Option<i64> {
                db::one(c, "SELECT latest_from FROM rollup_state", &[]).unwrap()
            };
            // A busy batch without readings carries nothing: no mark, and no wait to time out
            // (the writer would wake at once, over and over, with nothing to write).
            let (_, _, latest) = write_batch(
                c,
                &mut series,
                &[heartbeat()],
                &metrics,
                Late::new(&m),
                &carry,
                true,
            )
            .unwrap();
            carry.after_commit(latest);
            assert_eq!(mark(), None, "{name}");
            assert_eq!(carry.due(), Duration::MAX, "{name}");
            carry.write(c).unwrap();
            assert_eq!(carry.due(), Duration::MAX, "{name}");
            let mut write = |carry: &mut Carry, seq: u64, value: f64, defer: bool| {
                let (_, touched, latest) = write_batch(
                    c,
                    &mut series,
                    &[op(envelope(seq, value))],
                    &metrics,
                    Late::new(&m),
                    carry,
                    defer,
                )
                .unwrap();
                assert_eq!(
                    touched.len(),
                    3,
                    "{name}: the batch's series go to the rules"
                );
                let carried = matches!(latest, LatestWrite::Carried(_));
                carry.after_commit(latest);
                carried
            };
            let latest = || -> (Option<f64>, Option<String>, Option<i64>) {
                let row = c
                    .query_opt(
                        "SELECT last_value, vtype, last_received FROM series WHERE metric = 'pm10'",
                        &[],
                    )
                    .unwrap()
                    .unwrap();
                (
                    row.get(0).unwrap(),
                    row.get(1).unwrap(),
                    row.get(2).unwrap(),
                )
            };
            // Carried: the readings are stored, `series` is not written yet, the mark is set.
            assert!(write(&mut carry, 0, 80.0, true), "{name}");
            assert_eq!(latest().0, None, "{name}");
            assert!(mark().is_some(), "{name}");
            assert_eq!(
                super::super::raw::count(c),
                4,
                "{name}: the readings are stored (four: two of one millisecond are one)"
            );
            // The next batch that does not carry writes its values and the carried ones.
            assert!(!write(&mut carry, 1, 90.0, false), "{name}");
            assert_eq!(latest().0, Some(91.0), "{name}");
            assert_eq!(latest().1.as_deref(), Some("number"), "{name}");
            assert_eq!(mark(), None, "{name}");
            assert!(carry.values.is_empty(), "{name}");
            // A crash while carrying: the next start writes the newest stored reading, and
            // keeps the value type.
            assert!(write(&mut carry, 2, 100.0, true), "{name}");
            assert_eq!(latest().0, Some(91.0), "{name}");
            carry = Carry::new(true); // the crash: what was carried is gone
            repair_latest(c).unwrap();
            let (value, vtype, received) = latest();
            assert_eq!(value, Some(101.0), "{name}");
            assert_eq!(vtype.as_deref(), Some("number"), "{name}");
            let ts = protocol::Timestamp::parse_rfc3339("2026-11-22T06:00:00.000Z")
                .unwrap()
                .unix_millis();
            assert!(received.unwrap() >= ts, "{name}");
            assert_eq!(mark(), None, "{name}");
            // Nothing carried: a start repairs nothing.
            repair_latest(c).unwrap();
            assert_eq!(latest().0, Some(101.0), "{name}");
            // Carried when rollups are due (a new store's are): written before they run, since
            // they move and delete chunks the repair would read.
            assert!(write(&mut carry, 3, 110.0, true), "{name}");
            assert!(m.is_due(), "{name}");
            carry.maintain(&mut m, c, &metrics);
            assert_eq!(latest().0, Some(111.0), "{name}");
            assert_eq!(mark(), None, "{name}");
            assert!(carry.values.is_empty(), "{name}");
        }
    }

    /// What the writer stores, on SQLite and on PostgreSQL: once per envelope however often it
    /// comes, the latest value per series, events with their evidence, and an operation the
    /// database refuses set aside as a dead letter without losing the rest of its batch.
    #[test]
    fn a_batch_is_stored_once_on_both_engines() {
        for (name, c) in crate::db::testing::migrated() {
            let c = &*c;
            let dir = tempfile::tempdir().unwrap();
            let m = maintenance(c, &dir);
            let metrics = Metrics::default();
            let mut series = SeriesCache::default();
            let id = "0b6e5a0e-7c83-4f4e-9a43-3c1c6a2b7d10";
            const BOOT: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
            let batch = vec![
                presence("online", BOOT, "2026-11-22T05:59:00.000Z"),
                // A retained offline of an earlier boot does not mark the gateway offline.
                presence(
                    "offline",
                    "11111111-10b1-426f-9247-bb680e5fe0c8",
                    "2026-11-22T05:59:01.000Z",
                ),
                heartbeat(),
                op(envelope(0, 80.0)),
                op(envelope(0, 80.0)),
                command(id),
                command(id),
                op(envelope(1, 90.0)),
            ];
            let (fresh, touched, _) = write_batch(
                c,
                &mut series,
                &batch,
                &metrics,
                Late::new(&m),
                &Carry::new(false),
                false,
            )
            .unwrap();
            assert_eq!(fresh, [3, 7], "{name}: the repeated envelope is not fresh");
            assert_eq!(touched.len(), 3, "{name}: {touched:?}");
            // The refused command made the batch go again an operation at a time; what it stored
            // is counted once.
            assert_eq!(metrics.envelopes_stored.load(Relaxed), 2, "{name}");
            assert_eq!(metrics.readings_stored.load(Relaxed), 10, "{name}");
            assert_eq!(metrics.events_stored.load(Relaxed), 2, "{name}");
            assert_eq!(metrics.rejected_total(), 1, "{name}");
            // A redelivery in a later batch (after a restart: a new series cache) is skipped too.
            let again = write_batch(
                c,
                &mut SeriesCache::default(),
                &[op(envelope(1, 90.0))],
                &metrics,
                Late::new(&m),
                &Carry::new(false),
                false,
            )
            .unwrap();
            assert!(again.0.is_empty(), "{name}");
            let n = |sql: &str| -> i64 { db::one(c, sql, &[]).unwrap() };
            let gw = c
                .query_opt(
                    "SELECT state, boot, agent, online_at, last_heartbeat IS NOT NULL FROM gateways WHERE id = 'gw-a'",
                    &[],
                )
                .unwrap()
                .unwrap();
            assert_eq!(gw.get::<String>(0).unwrap(), "online", "{name}");
            assert_eq!(gw.get::<String>(1).unwrap(), BOOT, "{name}");
            assert_eq!(gw.get::<String>(2).unwrap(), "edge-agent 0.1.0", "{name}");
            assert!(gw.get::<Option<i64>>(3).unwrap().is_some(), "{name}");
            assert!(gw.get::<bool>(4).unwrap(), "{name}");
            let asset = c
                .query_opt("SELECT kind, lat, road_segment, report_interval_s FROM assets WHERE id = 'dm-1'", &[])
                .unwrap()
                .unwrap();
            assert_eq!(asset.get::<String>(0).unwrap(), "dustMonitor", "{name}");
            assert_eq!(asset.get::<f64>(1).unwrap(), 32.04, "{name}");
            assert_eq!(asset.get::<i64>(3).unwrap(), 60, "{name}");
            assert_eq!(n("SELECT COUNT(*) FROM envelopes"), 2, "{name}");
            assert_eq!(super::super::raw::count(c), 4, "{name}");
            assert_eq!(n("SELECT COUNT(*) FROM events"), 1, "{name}");
            assert_eq!(n("SELECT COUNT(*) FROM event_evidence"), 1, "{name}");
            assert_eq!(n("SELECT COUNT(*) FROM commands"), 1, "{name}");
            let latest = c
                .query_opt(
                    "SELECT last_value, unit, vtype, last_ts FROM series WHERE metric = 'pm10'",
                    &[],
                )
                .unwrap()
                .unwrap();
            assert_eq!(latest.get::<f64>(0).unwrap(), 91.0, "{name}");
            let mut stored: Vec<f64> = super::super::raw::range_all(c, 0, i64::MAX)
                .unwrap()
                .iter()
                .flat_map(|(_, p)| p.iter().filter_map(|p| p.value))
                .filter(|v| *v > 2.0)
                .collect();
            stored.sort_by(f64::total_cmp);
            assert_eq!(
                stored,
                [91.0],
                "{name}: one reading per series and millisecond"
            );
            assert_eq!(latest.get::<String>(1).unwrap(), "ug/m3", "{name}");
            assert_eq!(latest.get::<String>(2).unwrap(), "number", "{name}");
            let refused: Vec<String> = c
                .query("SELECT code FROM dead_letters", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0).unwrap())
                .collect();
            assert_eq!(refused, ["store_refused"], "{name}: the second command");
            assert_eq!(metrics.envelopes_duplicate.load(Relaxed), 2, "{name}");
        }
    }
}
