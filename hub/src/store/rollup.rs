//! Rollups and retention of the embedded store, run by the writer thread between batches.
//!
//! - Raw readings are rolled into 1-minute buckets (count, sum, min and max of the good numeric
//!   values) once a minute is older than the horizon ([`HORIZON_MS`] behind the hub's clock), and the
//!   new minutes are added into their hours. The rollups are written in the same transaction as the
//!   watermark that says how far they go, so a crash neither skips nor doubles a minute.
//! - A reading that arrives for a minute already rolled up (a gateway replaying its spool after an
//!   outage) marks that minute dirty, in the writer's transaction; dirty minutes, and their hours,
//!   are recomputed from what is stored. This is how continuous aggregates stay right when data
//!   comes late (TimescaleDB keeps an invalidation log the same way), and the ingest path pays only
//!   for late readings.
//! - Retention deletes raw readings, minutes and hours older than their periods, a series at a time
//!   with a time budget so ingest never waits long, and evidence images after theirs (the record
//!   stays, marked expired, so the API can say why an image is gone).
//!
//! Everything here runs on the writer's connection, between batches: SQLite has one writer, and
//! this keeps maintenance from competing with ingest for the write lock.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::db::{self, Begin, Sql, Tx, args};

use crate::metrics::Metrics;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;
/// Minutes this far behind the hub's clock are rolled up; readings for them after that are late.
pub const HORIZON_MS: i64 = 2 * MINUTE_MS;
/// The most minutes one rollup step covers (a hub catching up after downtime does it in steps).
const STEP_MAX_MS: i64 = HOUR_MS;
/// Dirty minutes recomputed per step.
const DIRTY_PER_STEP: usize = 2_000;
/// How long one retention pass may hold the writer before it yields to ingest.
const RETENTION_BUDGET: Duration = Duration::from_millis(200);
/// How long one rollup step may spend merging chunks: the writer waits meanwhile.
const COMPACT_BUDGET: Duration = Duration::from_millis(50);
/// How long after the last late reading for an hour of a series its chunks are merged again: a
/// spool replayed after an outage brings an hour's readings over many batches, and merging after
/// each would rewrite the hour again and again.
const LATE_QUIET_MS: i64 = 5 * MINUTE_MS;
/// Between retention passes once everything due is deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// How long each kind of data is kept, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw readings; also how long envelope names are kept for deduplication, so it must be longer
    /// than a gateway's spool may hold data (7 days by default).
    pub raw_days: u32,
    /// 1-minute rollups.
    pub minute_days: u32,
    /// 1-hour rollups.
    pub hour_days: u32,
    /// Evidence images (camera captures); their records stay, marked expired.
    pub evidence_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            raw_days: 30,
            minute_days: 90,
            hour_days: 5 * 366,
            evidence_days: 90,
        }
    }
}

impl Retention {
    /// Checks the periods make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.raw_days < 8 {
            return Err(format!(
                "raw readings must be kept at least 8 days (got {}): a gateway's spool holds up to 7 days, and replayed data is recognised by what is kept",
                self.raw_days
            ));
        }
        if self.minute_days < self.raw_days || self.hour_days < self.minute_days {
            return Err(format!(
                "rollups must be kept at least as long as what they summarise (raw {} ≤ 1-minute {} ≤ 1-hour {} days)",
                self.raw_days, self.minute_days, self.hour_days
            ));
        }
        if self.evidence_days == 0 {
            return Err("evidence must be kept at least 1 day".into());
        }
        Ok(())
    }
}

pub(super) fn floor(ms: i64, unit: i64) -> i64 {
    ms.saturating_sub(ms.rem_euclid(unit))
}

/// The rollup and retention state the writer thread keeps.
pub(super) struct Maintenance {
    retention: Retention,
    /// Minutes before this are rolled up.
    watermark: i64,
    next_rollup: Instant,
    next_retention: Instant,
    /// The series a retention pass continues from.
    retention_cursor: i64,
    /// The hour being compacted and the series it continues after.
    compact_cursor: (i64, i64),
    /// Whether the last rollup step left only merging to do.
    only_merging: bool,
    evidence_dir: PathBuf,
}

impl Maintenance {
    pub fn load(conn: &dyn Sql, retention: Retention, evidence_dir: PathBuf) -> db::Result<Self> {
        let stored: i64 = db::one(conn, "SELECT watermark FROM rollup_state", &[])?;
        let watermark = if stored > 0 {
            stored
        } else {
            // A new store (or one from before rollups): start at the oldest reading.
            // (The hour of the oldest chunk: minutes before its first reading roll up empty.)
            let oldest = super::raw::oldest(conn)?;
            let start = oldest.unwrap_or_else(|| crate::now_ms() - HORIZON_MS);
            let start = floor(start, MINUTE_MS);
            conn.execute("UPDATE rollup_state SET watermark = $1", args![start])?;
            start
        };
        Ok(Self {
            retention,
            watermark,
            next_rollup: Instant::now(),
            next_retention: Instant::now(),
            retention_cursor: 0,
            compact_cursor: (0, 0),
            only_merging: false,
            evidence_dir,
        })
    }

    /// Readings older than this belong to minutes already rolled up.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The oldest reading time that is still kept raw (older ones are not rolled up when they come late).
    pub fn raw_cutoff(&self, now_ms: i64) -> i64 {
        now_ms - i64::from(self.retention.raw_days) * DAY_MS
    }

    /// How long until something is due.
    pub fn next_due(&self) -> Duration {
        self.next_rollup
            .min(self.next_retention)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10))
    }

    /// Whether [`Self::run_due`] would do something now.
    pub fn is_due(&self) -> bool {
        let now = Instant::now();
        now >= self.next_rollup || now >= self.next_retention
    }

    /// Runs what is due; called by the writer between batches.
    pub fn run_due(&mut self, conn: &dyn Sql, metrics: &Metrics) {
        let now = Instant::now();
        if now >= self.next_rollup {
            let started = Instant::now();
            match self.rollup_step(conn, crate::now_ms()) {
                Ok(more) => {
                    metrics
                        .rollup_micros
                        .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                    // Catching up: another step soon, but let a batch or two through first. Only
                    // merging left: at a slower pace (ingest first; nothing waits on merges).
                    self.next_rollup = now
                        + match (more, self.only_merging) {
                            (true, false) => Duration::from_millis(50),
                            (true, true) => Duration::from_millis(500),
                            (false, _) => Duration::from_secs(5),
                        };
                }
                Err(e) => {
                    metrics.store_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "rollup step failed; retrying in 30 s");
                    self.next_rollup = now + Duration::from_secs(30);
                }
            }
        }
        if now >= self.next_retention {
            match self.retention_pass(conn, crate::now_ms(), metrics) {
                Ok(done) => {
                    self.next_retention = now
                        + if done {
                            RETENTION_EVERY
                        } else {
                            Duration::from_millis(200)
                        };
                }
                Err(e) => {
                    metrics.store_errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "retention pass failed; retrying in 60 s");
                    self.next_retention = now + Duration::from_secs(60);
                }
            }
        }
    }

    /// Rolls up the next minutes that passed the horizon and recomputes dirty minutes. Returns
    /// whether more work is waiting.
    pub fn rollup_step(&mut self, conn: &dyn Sql, now_ms: i64) -> db::Result<bool> {
        let horizon = floor(now_ms - HORIZON_MS, MINUTE_MS);
        let tx = Tx::begin(conn, Begin::Deferred)?;
        if tx.engine() == db::Engine::Postgres {
            // Hub processes sharing the database roll up one at a time, each from the
            // watermark as stored (another may have moved it): hours are added to, so a
            // minute rolled up twice would count twice.
            tx.batch("SELECT pg_advisory_xact_lock(7263002)")?;
            let stored: i64 = db::one(&tx, "SELECT watermark FROM rollup_state", &[])?;
            self.watermark = self.watermark.max(stored);
        }
        let to = horizon.min(self.watermark + STEP_MAX_MS);
        if to > self.watermark {
            roll_new_minutes(&tx, self.watermark, to)?;
            tx.execute("UPDATE rollup_state SET watermark = $1", args![to])?;
        }
        let watermark = self.watermark.max(to);
        let compacted: i64 = db::one(&tx, "SELECT compacted FROM rollup_state", &[])?;
        let dirty_left = recompute_dirty(&tx, watermark, compacted, now_ms)?;
        // The merge cursor moves on only with the transaction that did the work.
        let mut cursor = self.compact_cursor;
        let compact_left = compact_step(
            &tx,
            &mut cursor,
            compacted,
            floor(watermark, HOUR_MS),
            now_ms,
        )?;
        tx.commit()?;
        self.compact_cursor = cursor;
        self.watermark = watermark;
        let behind = self.watermark < horizon || dirty_left;
        self.only_merging = compact_left && !behind;
        Ok(behind || compact_left)
    }

    /// Deletes what is past its period, within the time budget. Returns whether it finished.
    pub fn retention_pass(
        &mut self,
        conn: &dyn Sql,
        now_ms: i64,
        metrics: &Metrics,
    ) -> db::Result<bool> {
        let started = Instant::now();
        let r = self.retention;
        let days = |d: u32| now_ms - i64::from(d) * DAY_MS;
        // Raw readings go only once they are rolled up.
        let raw_cutoff = days(r.raw_days).min(self.watermark);
        let minute_cutoff = floor(days(r.minute_days), MINUTE_MS);
        let hour_cutoff = floor(days(r.hour_days), HOUR_MS);
        let tx = Tx::begin(conn, Begin::Deferred)?;
        let mut done = true;
        {
            let ids: Vec<i64> = tx
                .query(
                    "SELECT id FROM series WHERE id > $1 ORDER BY id",
                    args![self.retention_cursor],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect::<db::Result<_>>()?;
            for id in ids {
                let n = super::raw::delete_before(&tx, id, raw_cutoff)?;
                metrics.retention_deleted("reading", n);
                let n = tx.execute(
                    "DELETE FROM rollup_1m WHERE series = $1 AND ts < $2",
                    args![id, minute_cutoff],
                )?;
                metrics.retention_deleted("minute", n as u64);
                let n = tx.execute(
                    "DELETE FROM rollup_1h WHERE series = $1 AND ts < $2",
                    args![id, hour_cutoff],
                )?;
                metrics.retention_deleted("hour", n as u64);
                self.retention_cursor = id;
                if started.elapsed() > RETENTION_BUDGET {
                    done = false;
                    break;
                }
            }
        }
        if done {
            // Envelope names (deduplication) are kept as long as raw readings.
            let n = tx.execute(
                "DELETE FROM envelopes WHERE (gateway, boot, seq) IN
                   (SELECT gateway, boot, seq FROM envelopes WHERE received < $1 LIMIT 50000)",
                args![days(r.raw_days)],
            )?;
            metrics.retention_deleted("envelope", n as u64);
            done = n < 50_000;
            let expired = self.expire_evidence(&tx, days(r.evidence_days), now_ms)?;
            metrics.retention_deleted("evidence", expired as u64);
            done &= expired < 500;
        }
        tx.commit()?;
        if done {
            self.retention_cursor = 0;
        }
        Ok(done)
    }

    /// Deletes the images stored before `cutoff` and marks their records expired.
    fn expire_evidence(&self, tx: &dyn Sql, cutoff: i64, now_ms: i64) -> db::Result<usize> {
        let shas: Vec<String> = tx
            .query(
                "SELECT sha256 FROM evidence WHERE stored_at < $1 AND expired_at IS NULL LIMIT 500",
                args![cutoff],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect::<db::Result<_>>()?;
        for sha in &shas {
            if sha.len() < 2 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let path = self.evidence_dir.join(&sha[..2]).join(sha);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Not marked: tried again next pass.
                    tracing::error!(error = %e, path = %path.display(), "cannot delete expired evidence");
                    continue;
                }
            }
            tx.execute(
                "UPDATE evidence SET expired_at = $2 WHERE sha256 = $1",
                args![sha, now_ms],
            )?;
        }
        Ok(shas.len())
    }
}

/// Merges the chunks of each series in the hours before `until` (rolled up: few readings
/// still come for them) into one per hour (see [`super::raw::compact`]), from the hour
/// `compacted` on, and again those that late readings came for once none have come for
/// [`LATE_QUIET_MS`]; within [`COMPACT_BUDGET`]. Returns whether work is left.
fn compact_step(
    tx: &dyn Sql,
    cursor: &mut (i64, i64),
    compacted: i64,
    until: i64,
    now_ms: i64,
) -> db::Result<bool> {
    let started = Instant::now();
    let quiet: Vec<(i64, i64)> = tx
        .query(
            "SELECT series, hour FROM chunks_late WHERE touched < $1 ORDER BY touched LIMIT 500",
            args![now_ms - LATE_QUIET_MS],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<db::Result<_>>()?;
    for &(series, hour) in &quiet {
        super::raw::compact(tx, series, hour)?;
        tx.execute(
            "DELETE FROM chunks_late WHERE series = $1 AND hour = $2",
            args![series, hour],
        )?;
        if started.elapsed() > COMPACT_BUDGET {
            return Ok(true);
        }
    }
    let mut hour = match compacted {
        0 => super::raw::oldest(tx)?.unwrap_or(until).min(until),
        h => h,
    };
    if cursor.0 != hour {
        *cursor = (hour, 0);
    }
    let mut left = quiet.len() == 500;
    'hours: while hour < until {
        // The series that have chunks in this hour (one index seek per series).
        let ids: Vec<i64> = tx
            .query(
                "SELECT DISTINCT series FROM reading_chunks
                 WHERE series IN (SELECT id FROM series WHERE id > $1)
                   AND minute >= $2 AND minute < $3
                 ORDER BY series",
                args![cursor.1, hour, hour + HOUR_MS],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect::<db::Result<_>>()?;
        for id in ids {
            super::raw::compact(tx, id, hour)?;
            cursor.1 = id;
            if started.elapsed() > COMPACT_BUDGET {
                left = true;
                break 'hours;
            }
        }
        hour += HOUR_MS;
        *cursor = (hour, 0);
    }
    if hour != compacted {
        tx.execute("UPDATE rollup_state SET compacted = $1", args![hour])?;
    }
    Ok(left)
}

/// Rolls the minutes in `[from, to)` up from the raw readings, and adds them into their hours.
/// Those minutes were never rolled up before (they were past the watermark), so adding is right.
fn roll_new_minutes(tx: &dyn Sql, from: i64, to: i64) -> db::Result<()> {
    super::raw::for_each_series(tx, from, to, |series, points| {
        let mut rows = Vec::new();
        for (ts, n, sum, min, max) in super::raw::buckets(&points, MINUTE_MS) {
            rows.extend_from_slice(args![series, ts, n, sum, min, max]);
        }
        db::insert_rows(
            tx,
            "INSERT INTO rollup_1m (series, ts, n, sum, min, max)",
            6,
            "ON CONFLICT (series, ts) DO UPDATE SET
                n = excluded.n, sum = excluded.sum, min = excluded.min, max = excluded.max",
            &rows,
        )
    })?;
    tx.execute(
        "INSERT INTO rollup_1h (series, ts, n, sum, min, max)
         SELECT series, ts - ts % 3600000, SUM(n), SUM(sum), MIN(min), MAX(max)
         FROM rollup_1m
         WHERE series IN (SELECT id FROM series) AND ts >= $1 AND ts < $2
         GROUP BY series, ts - ts % 3600000
         ON CONFLICT (series, ts) DO UPDATE SET
            n = rollup_1h.n + excluded.n, sum = rollup_1h.sum + excluded.sum,
            min = CASE WHEN excluded.min < rollup_1h.min THEN excluded.min ELSE rollup_1h.min END,
            max = CASE WHEN excluded.max > rollup_1h.max THEN excluded.max ELSE rollup_1h.max END",
        args![from, to],
    )?;
    Ok(())
}

/// Recomputes up to [`DIRTY_PER_STEP`] dirty minutes and their hours from what is stored.
/// Returns whether dirty minutes are left. A minute at or past the watermark is not rolled up
/// yet (its hour will be added to when it is), so it is only unmarked.
///
/// The late readings are in chunks of their own; hours already compacted (before `compacted`) are
/// noted in `chunks_late`, to be merged again once late readings stop coming for them.
fn recompute_dirty(tx: &dyn Sql, watermark: i64, compacted: i64, now_ms: i64) -> db::Result<bool> {
    let dirty: Vec<(i64, i64)> = tx
        .query(
            "SELECT series, ts FROM rollup_dirty ORDER BY series, ts LIMIT $1",
            args![DIRTY_PER_STEP + 1],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<db::Result<_>>()?;
    let more = dirty.len() > DIRTY_PER_STEP;
    // The dirty minutes of a series in one hour are read in one go (a replayed hour would
    // otherwise read its hour row once per minute).
    let mut hours: std::collections::BTreeMap<(i64, i64), Vec<i64>> = Default::default();
    for &(series, ts) in dirty.iter().take(DIRTY_PER_STEP) {
        tx.execute(
            "DELETE FROM rollup_dirty WHERE series = $1 AND ts = $2",
            args![series, ts],
        )?;
        if ts < watermark {
            hours
                .entry((series, floor(ts, HOUR_MS)))
                .or_default()
                .push(ts);
        }
    }
    for (&(series, _), minutes) in &hours {
        let (first, last) = (minutes[0], minutes[minutes.len() - 1]);
        let points = super::raw::range(tx, series, first, last + MINUTE_MS, None)?;
        let buckets = super::raw::buckets(&points, MINUTE_MS);
        for &ts in minutes {
            tx.execute(
                "DELETE FROM rollup_1m WHERE series = $1 AND ts = $2",
                args![series, ts],
            )?;
            if let Ok(i) = buckets.binary_search_by_key(&ts, |b| b.0) {
                let (ts, n, sum, min, max) = buckets[i];
                tx.execute(
                    "INSERT INTO rollup_1m (series, ts, n, sum, min, max) VALUES ($1, $2, $3, $4, $5, $6)",
                    args![series, ts, n, sum, min, max],
                )?;
            }
        }
    }
    let hours: BTreeSet<(i64, i64)> = hours.into_keys().collect();
    for (series, ts) in hours {
        // `<=`: the hour being merged may have passed this series already.
        if ts <= compacted {
            tx.execute(
                "INSERT INTO chunks_late (series, hour, touched) VALUES ($1, $2, $3)
                 ON CONFLICT (series, hour) DO UPDATE SET touched = excluded.touched",
                args![series, ts, now_ms],
            )?;
        }
        tx.execute(
            "DELETE FROM rollup_1h WHERE series = $1 AND ts = $2",
            args![series, ts],
        )?;
        tx.execute(
            "INSERT INTO rollup_1h (series, ts, n, sum, min, max)
             SELECT CAST($1 AS BIGINT), CAST($2 AS BIGINT), SUM(n), SUM(sum), MIN(min), MAX(max)
             FROM rollup_1m WHERE series = $1 AND ts >= $2 AND ts < CAST($2 AS BIGINT) + 3600000
             HAVING COUNT(*) > 0",
            args![series, ts],
        )?;
    }
    Ok(more)
}

/// Records that these (series, minute) rollups must be recomputed; called in the writer's
/// transaction for readings that came in behind the watermark.
pub(super) fn mark_dirty<S>(
    tx: &dyn Sql,
    minutes: &std::collections::HashSet<(i64, i64), S>,
) -> db::Result<()> {
    for (series, ts) in minutes {
        tx.execute(
            "INSERT INTO rollup_dirty (series, ts) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            args![series, ts],
        )?;
    }
    Ok(())
}

/// One bucket of a series: how many good numeric readings, and their sum, minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub ts: i64,
    pub n: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Bucket {
    fn merge(&mut self, o: &Bucket) {
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Which stored resolution answers a query with buckets of `step_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Raw,
    Minute,
    Hour,
}

impl Source {
    /// The coarsest resolution that divides `step_ms`.
    pub fn for_step(step_ms: i64) -> Source {
        if step_ms % HOUR_MS == 0 {
            Source::Hour
        } else if step_ms % MINUTE_MS == 0 {
            Source::Minute
        } else {
            Source::Raw
        }
    }
}

/// The buckets of `step_ms` (aligned to the epoch, so the same query gives the same buckets) of
/// one series in `[from, to]`. Minutes and hours come from the rollups up to the watermark and
/// from the raw readings after it, so the newest buckets are complete too.
pub(super) fn buckets(
    c: &dyn crate::db::Sql,
    series: i64,
    from: i64,
    to: i64,
    step_ms: i64,
) -> crate::db::Result<Vec<Bucket>> {
    let source = Source::for_step(step_ms);
    let watermark: i64 = match c.query_opt("SELECT watermark FROM rollup_state", &[])? {
        Some(r) => r.get(0)?,
        None => 0,
    };
    // Align the range to the step so no bucket is half counted.
    let from = floor(from, step_ms);
    let end = to + 1; // `to` is inclusive
    let mut parts: Vec<Bucket> = Vec::new();
    let raw_from = match source {
        Source::Raw => from,
        // Rolled-up buckets cover [from, watermark): a bucket of `step` that straddles the
        // watermark takes its first part from the rollup and the rest from raw.
        Source::Minute | Source::Hour => {
            let (table, unit) = match source {
                Source::Hour => ("rollup_1h", HOUR_MS),
                _ => ("rollup_1m", MINUTE_MS),
            };
            // Hours are complete only up to the watermark's hour; the rest comes from minutes.
            let rolled_to = floor(watermark, unit).min(end);
            if rolled_to > from {
                rollup_rows(c, table, series, from, rolled_to, step_ms, &mut parts)?;
            }
            let mut raw_from = rolled_to.max(from);
            if source == Source::Hour && watermark > raw_from {
                let minute_to = watermark.min(end);
                rollup_rows(
                    c,
                    "rollup_1m",
                    series,
                    raw_from,
                    minute_to,
                    step_ms,
                    &mut parts,
                )?;
                raw_from = minute_to;
            }
            raw_from
        }
    };
    if end > raw_from {
        let points = super::raw::range(c, series, raw_from, end, None)?;
        for (ts, n, sum, min, max) in super::raw::buckets(&points, step_ms) {
            parts.push(Bucket {
                ts,
                n,
                sum,
                min,
                max,
            });
        }
    }
    // Parts arrive in time order per source; merge those of the same bucket.
    parts.sort_by_key(|b| b.ts);
    let mut out: Vec<Bucket> = Vec::with_capacity(parts.len());
    for b in parts {
        match out.last_mut() {
            Some(last) if last.ts == b.ts => last.merge(&b),
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// A bucket from a row of (ts, n, sum, min, max).
fn bucket_row(r: &crate::db::Row) -> crate::db::Result<Bucket> {
    Ok(Bucket {
        ts: r.get(0)?,
        n: r.get(1)?,
        sum: r.get(2)?,
        min: r.get(3)?,
        max: r.get(4)?,
    })
}

fn rollup_rows(
    c: &dyn crate::db::Sql,
    table: &str,
    series: i64,
    from: i64,
    to: i64,
    step_ms: i64,
    out: &mut Vec<Bucket>,
) -> crate::db::Result<()> {
    // CAST: PostgreSQL sums integers as NUMERIC.
    let rows = c.query(
        &format!(
            "SELECT (ts / $4) * $4, CAST(SUM(n) AS BIGINT), SUM(sum), MIN(min), MAX(max) FROM {table}
             WHERE series = $1 AND ts >= $2 AND ts < $3 GROUP BY 1 ORDER BY 1"
        ),
        crate::db::args![series, from, to, step_ms],
    )?;
    for r in &rows {
        out.push(bucket_row(r)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use super::*;

    const T0: i64 = 1_790_000_000_000 - 1_790_000_000_000 % DAY_MS; // a midnight, UTC

    /// The store with two series, on each engine this run reaches.
    fn dbs() -> Vec<(&'static str, Box<dyn Sql>)> {
        let v = crate::db::testing::migrated();
        for (_, c) in &v {
            c.batch(
                "INSERT INTO series (id, gateway, device, metric) VALUES (1, 'gw', 'd1', 'level'), (2, 'gw', 'd2', 'level');",
            )
            .unwrap();
        }
        v
    }

    /// A reading as the writer stores it, marking its minute dirty when it is late.
    fn put(c: &dyn Sql, m: &Maintenance, series: i64, ts: i64, v: f64, bad: bool) {
        let point = super::super::raw::Point {
            quality: bad.then(|| "out_of_range".to_owned()),
            ..super::super::raw::good(ts, v)
        };
        super::super::raw::insert(c, series, &[point]).unwrap();
        if ts < m.watermark() {
            let mut set = HashSet::new();
            set.insert((series, floor(ts, MINUTE_MS)));
            mark_dirty(c, &set).unwrap();
        }
    }

    /// The buckets computed the slow way, from a list of (series, ts, value, bad).
    fn expected(
        data: &[(i64, i64, f64, bool)],
        series: i64,
        from: i64,
        to: i64,
        step: i64,
    ) -> Vec<Bucket> {
        let mut map = std::collections::BTreeMap::<i64, Bucket>::new();
        // The last write of a (series, ts) wins, as in the table.
        let mut last = std::collections::BTreeMap::new();
        for &(s, ts, v, bad) in data {
            last.insert((s, ts), (v, bad));
        }
        for (&(s, ts), &(v, bad)) in &last {
            if s != series || bad || ts < floor(from, step) || ts > to {
                continue;
            }
            let b = map.entry(floor(ts, step)).or_insert(Bucket {
                ts: floor(ts, step),
                n: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            });
            b.n += 1;
            b.sum += v;
            b.min = b.min.min(v);
            b.max = b.max.max(v);
        }
        map.into_values().collect()
    }

    fn same(a: &[Bucket], b: &[Bucket]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.ts == y.ts
                    && x.n == y.n
                    && (x.sum - y.sum).abs() < 1e-6
                    && x.min == y.min
                    && x.max == y.max
            })
    }

    /// xorshift: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn rollups_answer_like_the_raw_readings_with_late_data_and_restarts() {
        for (name, c) in dbs() {
            let c = &*c;
            let dir = tempfile::tempdir().unwrap();
            let mut m = Maintenance::load(c, Retention::default(), dir.path().into()).unwrap();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut data = Vec::new();
            // Six hours of readings arriving in time order, with some late ones (replays) and a
            // restart of the writer now and then; the rollups advance as the clock does.
            let mut now = T0;
            while now < T0 + 6 * HOUR_MS {
                now += 20_000 + rng.below(40_000) as i64;
                for series in [1, 2] {
                    let on_time = now - rng.below(5_000) as i64;
                    let late = rng.below(10) == 0;
                    let ts = if late {
                        T0 + rng.below((now - T0) as u64) as i64
                    } else {
                        on_time
                    };
                    let v = (rng.below(1000) as f64) / 10.0;
                    let bad = rng.below(20) == 0;
                    put(c, &m, series, ts, v, bad);
                    data.push((series, ts, v, bad));
                }
                m.rollup_step(c, now).unwrap();
                if rng.below(50) == 0 {
                    m = Maintenance::load(c, Retention::default(), dir.path().into()).unwrap();
                }
            }
            assert!(
                m.watermark() > T0 + 5 * HOUR_MS,
                "{name}: the rollups kept up"
            );
            let dirty: i64 = db::one(c, "SELECT COUNT(*) FROM rollup_dirty", &[]).unwrap();
            assert_eq!(dirty, 0, "{name}: late minutes were recomputed");
            for step in [
                1_000,
                30_000,
                MINUTE_MS,
                5 * MINUTE_MS,
                HOUR_MS,
                2 * HOUR_MS,
                DAY_MS,
            ] {
                for (from, to) in [
                    (T0, now),
                    (T0 + 17 * MINUTE_MS + 5, now - 7),
                    (T0 + 2 * HOUR_MS, T0 + 3 * HOUR_MS - 1),
                    (now - 10 * MINUTE_MS, now),
                ] {
                    for series in [1, 2] {
                        let got = buckets(c, series, from, to, step).unwrap();
                        let want = expected(&data, series, from, to, step);
                        assert!(
                            same(&got, &want),
                            "{name}: series {series} step {step} range {from}..{to}:\n got {got:?}\nwant {want:?}"
                        );
                    }
                }
            }
            // The hours come from the hour table (not recomputed from raw).
            let hours: i64 = db::one(c, "SELECT COUNT(*) FROM rollup_1h", &[]).unwrap();
            assert!(hours >= 10, "{name}: {hours}");
            // Every reading was a chunk of its own; the rolled-up hours are one chunk per series,
            // late readings included once none came for a while, and hold what was stored (the
            // later of two of a millisecond).
            let late: i64 = db::one(c, "SELECT COUNT(*) FROM chunks_late", &[]).unwrap();
            assert!(late > 0, "{name}: late readings into merged hours wait");
            let quiet = now + LATE_QUIET_MS + MINUTE_MS;
            while m.rollup_step(c, quiet).unwrap() {}
            let late: i64 = db::one(c, "SELECT COUNT(*) FROM chunks_late", &[]).unwrap();
            assert_eq!(late, 0, "{name}");
            let until = floor(m.watermark(), HOUR_MS);
            let left: i64 = db::one(
                c,
                "SELECT COUNT(*) FROM reading_chunks WHERE minute < $1",
                args![until],
            )
            .unwrap();
            assert_eq!(left, 0, "{name}: chunks left in rolled-up hours");
            let merged: i64 = db::one(
                c,
                "SELECT COUNT(*) FROM reading_hours WHERE hour < $1",
                args![until],
            )
            .unwrap();
            let hours: HashSet<(i64, i64)> = data
                .iter()
                .map(|&(s, ts, _, _)| (s, floor(ts, HOUR_MS)))
                .filter(|&(_, h)| h < until)
                .collect();
            assert_eq!(merged, hours.len() as i64, "{name}");
            for series in [1, 2] {
                let mut want = std::collections::BTreeMap::new();
                for &(s, ts, v, bad) in &data {
                    if s == series {
                        want.insert(ts, (v, bad));
                    }
                }
                let got: Vec<_> = super::super::raw::range(c, series, T0, now + 1, None)
                    .unwrap()
                    .into_iter()
                    .map(|p| (p.ts, (p.value.unwrap(), p.quality.is_some())))
                    .collect();
                assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{name}");
            }
        }
    }

    #[test]
    fn retention_deletes_raw_after_rollup_and_keeps_the_history_in_rollups() {
        for (name, c) in dbs() {
            let c = &*c;
            let dir = tempfile::tempdir().unwrap();
            let retention = Retention {
                raw_days: 8,
                minute_days: 9,
                hour_days: 10,
                evidence_days: 1,
            };
            c.execute("UPDATE rollup_state SET watermark = 0", &[])
                .unwrap();
            let m = Maintenance::load(c, retention, dir.path().into()).unwrap();
            c.execute("UPDATE rollup_state SET watermark = 0", &[])
                .unwrap();
            // One reading every 10 minutes for 12 days.
            let mut ts = T0;
            let mut n = 0;
            while ts < T0 + 12 * DAY_MS {
                put(c, &m, 1, ts, 1.0 + (n % 3) as f64, false);
                ts += 10 * MINUTE_MS;
                n += 1;
            }
            // Opened on this store, the rollups start at its oldest reading.
            let mut m = Maintenance::load(c, retention, dir.path().into()).unwrap();
            assert_eq!(m.watermark(), T0, "{name}");
            let now = T0 + 12 * DAY_MS;
            let metrics = Metrics::default();
            // Before the rollups caught up, retention keeps raw readings that are not rolled up yet.
            m.retention_pass(c, now, &metrics).unwrap();
            let raw = super::super::raw::count(c);
            assert_eq!(raw, n, "{name}: nothing deleted before it was rolled up");
            while m.rollup_step(c, now).unwrap() {}
            while !m.retention_pass(c, now, &metrics).unwrap() {}
            let count = |sql: &str| -> i64 { db::one(c, sql, &[]).unwrap() };
            let oldest = super::super::raw::range(c, 1, 0, now, Some(1)).unwrap();
            assert_eq!(oldest[0].ts, now - 8 * DAY_MS, "raw from 8 days back");
            assert_eq!(count("SELECT MIN(ts) FROM rollup_1m"), now - 9 * DAY_MS);
            assert_eq!(count("SELECT MIN(ts) FROM rollup_1h"), now - 10 * DAY_MS);
            // A query over the whole period still answers from the hours.
            let b = buckets(c, 1, T0, now, DAY_MS).unwrap();
            assert_eq!(b.len(), 10, "{name}: {b:?}");
            assert_eq!(b[9].n, 144, "{name}: a day of readings every 10 minutes");
            let text = metrics.render();
            assert!(
                text.contains("hub_retention_deleted_total{kind=\"reading\"} "),
                "{text}"
            );
        }
    }

    #[test]
    fn evidence_images_are_deleted_after_their_period_and_marked_expired() {
        for (name, c) in dbs() {
            let c = &*c;
            let dir = tempfile::tempdir().unwrap();
            let retention = Retention {
                evidence_days: 1,
                ..Retention::default()
            };
            let mut m = Maintenance::load(c, retention, dir.path().into()).unwrap();
            let (old, new) = ("ab".repeat(32), "cd".repeat(32));
            for (sha, at) in [(&old, T0), (&new, T0 + DAY_MS + 1)] {
                std::fs::create_dir_all(dir.path().join(&sha[..2])).unwrap();
                std::fs::write(dir.path().join(&sha[..2]).join(sha), b"jpeg").unwrap();
                c.execute(
                "INSERT INTO evidence (sha256, media_type, bytes, gateway, stored_at) VALUES ($1, 'image/jpeg', 4, 'gw', $2)",
                args![sha, at],
            )
            .unwrap();
            }
            m.retention_pass(c, T0 + DAY_MS + 10, &Metrics::default())
                .unwrap();
            assert!(!dir.path().join("ab").join(&old).exists());
            assert!(dir.path().join("cd").join(&new).exists());
            let expired: Vec<Option<i64>> = c
                .query("SELECT expired_at FROM evidence ORDER BY sha256", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0).unwrap())
                .collect();
            assert_eq!(expired, vec![Some(T0 + DAY_MS + 10), None], "{name}");
        }
    }

    #[test]
    fn retention_periods_are_checked() {
        assert!(Retention::default().validate().is_ok());
        let short = Retention {
            raw_days: 3,
            ..Retention::default()
        };
        assert!(short.validate().unwrap_err().contains("7 days"));
        let upside_down = Retention {
            minute_days: 400,
            hour_days: 100,
            ..Retention::default()
        };
        assert!(upside_down.validate().is_err());
    }
}
