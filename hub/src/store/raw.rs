//! Raw readings, stored in chunks. A row of `reading_chunks` holds the readings of one series in
//! one minute that one write brought, encoded into a blob; once an hour is rolled up, its chunks
//! are merged into one row of `reading_hours` per series. A batch of envelopes under load carries
//! many readings of each series, and a row per reading cost a B-tree descent per reading (most of
//! the store writer's time, BENCHMARKS.md); a chunk costs two per series per batch. Prometheus
//! (head chunks, then blocks), InfluxDB (the cache, then TSM blocks) and TimescaleDB (rows, then
//! compressed batches) store recent and settled data the same two ways.
//!
//! A chunk spans at most a minute, so a query of a few minutes (a rollup, a recomputed minute, the
//! rules) reads only the chunks of those minutes, however many small ones a slow series or a
//! replayed spool left. An hour row spans its hour.
//!
//! Rows are only ever added, merged and, by retention, deleted whole. A reading stored again (the
//! same series and millisecond, say from a gateway that lost its boot id and sent its spool twice)
//! can be in two places; readers keep the one written later, which is what an upsert of rows did:
//! an hour row holds what was written before any chunk of its hour, and chunks are in write order
//! (their ids). On PostgreSQL with several hub processes ids are handed out at insert, not at
//! commit, so two processes writing the same series and millisecond at the same moment may be
//! ordered either way; a gateway's series are written by one process at a time. Every reader of
//! raw readings goes through [`range`] or [`for_each_series`], each window in one statement (one
//! snapshot), so a merge committing meanwhile cannot hide readings.
//!
//! The blob is hand-encoded, not a serde format: it is a dozen lines, its layout must stay
//! readable across versions (a format byte leads it), and a varint timestamp delta plus a flag
//! byte is 3 to 12 bytes a reading against 30 or more in a self-describing format.
//!
//! Layout: the format byte (1), then per reading in write order: the timestamp as a zigzag varint
//! delta from the previous reading's (the first from the start of the row's minute or hour), a flag
//! byte (1: a number follows, 2: a text, 4: a bad-quality reason), the number as 8 little-endian
//! bytes, and each text as a varint length and its UTF-8 bytes.

use crate::db::{self, DbError, Sql, args};

use super::rollup::floor;

/// The time an hour row spans (UTC, from the epoch): the rollups' hour.
pub const SPAN_MS: i64 = super::rollup::HOUR_MS;
/// The time a chunk spans at most: the rollups' minute.
pub const CHUNK_MS: i64 = super::rollup::MINUTE_MS;

const FORMAT: u8 = 1;
const HAS_VALUE: u8 = 1;
const HAS_TEXT: u8 = 2;
const HAS_QUALITY: u8 = 4;

/// The hour a reading's hour row starts at.
pub fn hour_of(ts: i64) -> i64 {
    floor(ts, SPAN_MS)
}

fn minute_of(ts: i64) -> i64 {
    floor(ts, CHUNK_MS)
}

/// One stored reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub ts: i64,
    pub value: Option<f64>,
    pub text: Option<String>,
    /// The reason of a bad-quality reading; none for a good one.
    pub quality: Option<String>,
}

impl Point {
    /// The value, if this is a good numeric reading (what rollups and rules count).
    pub fn good(&self) -> Option<f64> {
        self.quality.is_none().then_some(self.value).flatten()
    }
}

/// A blob being written: readings appended in write order.
struct Blob {
    prev: i64,
    n: i64,
    data: Vec<u8>,
}

impl Blob {
    /// An empty blob for the row starting at `base`.
    fn new(base: i64) -> Self {
        // Room for a few readings at once: growing from one byte reallocated each blob some eight
        // times (3 % of the writer's samples with four gateways).
        let mut data = Vec::with_capacity(64);
        data.push(FORMAT);
        Self {
            prev: base,
            n: 0,
            data,
        }
    }

    fn push(&mut self, ts: i64, value: Option<f64>, text: Option<&str>, quality: Option<&str>) {
        put_varint(&mut self.data, zigzag(ts.wrapping_sub(self.prev)));
        self.prev = ts;
        self.n += 1;
        let mut flags = 0;
        if value.is_some() {
            flags |= HAS_VALUE;
        }
        if text.is_some() {
            flags |= HAS_TEXT;
        }
        if quality.is_some() {
            flags |= HAS_QUALITY;
        }
        self.data.push(flags);
        if let Some(v) = value {
            self.data.extend_from_slice(&v.to_le_bytes());
        }
        for s in [text, quality].into_iter().flatten() {
            put_varint(&mut self.data, s.len() as u64);
            self.data.extend_from_slice(s.as_bytes());
        }
    }

    fn of(base: i64, points: &[Point]) -> Self {
        let mut b = Self::new(base);
        for p in points {
            b.push(p.ts, p.value, p.text.as_deref(), p.quality.as_deref());
        }
        b
    }
}

/// Readings waiting to be written: per series a chunk per minute, and beside them what the
/// caller keeps per series (`T`; the writer keeps the series' latest value there), so that a
/// reading costs one lookup.
pub struct Pending<T = ()> {
    series: super::writer::FastMap<i64, Waiting<T>>,
}

#[derive(Default)]
struct Waiting<T> {
    /// (minute, its chunk); nearly always one.
    chunks: Vec<(i64, Blob)>,
    kept: T,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self {
            series: Default::default(),
        }
    }
}

impl<T: Default> Pending<T> {
    /// Adds a reading; returns what is kept beside the series' readings.
    pub fn push(
        &mut self,
        series: i64,
        ts: i64,
        value: Option<f64>,
        text: Option<&str>,
        quality: Option<&str>,
    ) -> &mut T {
        let minute = minute_of(ts);
        let w = self.series.entry(series).or_default();
        let at = match w.chunks.iter().rposition(|(m, _)| *m == minute) {
            Some(at) => at,
            None => {
                w.chunks.push((minute, Blob::new(minute)));
                w.chunks.len() - 1
            }
        };
        w.chunks[at].1.push(ts, value, text, quality);
        &mut w.kept
    }

    pub fn clear(&mut self) {
        self.series.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Writes the waiting chunks, in (series, minute) order, and empties this; returns what was
    /// kept per series, in series order.
    pub fn flush(&mut self, tx: &dyn Sql) -> db::Result<Vec<(i64, T)>> {
        if self.series.is_empty() {
            return Ok(Vec::new());
        }
        let mut series: Vec<(i64, Waiting<T>)> = self.series.drain().collect();
        series.sort_unstable_by_key(|(id, _)| *id);
        let mut params = Vec::with_capacity(4 * series.len());
        let mut kept = Vec::with_capacity(series.len());
        for (id, mut w) in series {
            w.chunks.sort_unstable_by_key(|(minute, _)| *minute);
            for (minute, c) in w.chunks {
                params.extend_from_slice(args![id, minute, c.n, c.data]);
            }
            kept.push((id, w.kept));
        }
        db::insert_rows(
            tx,
            "INSERT INTO reading_chunks (series, minute, n, data)",
            4,
            "",
            &params,
        )?;
        Ok(kept)
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn corrupt(what: &str) -> DbError {
    DbError::Other(format!("a stored reading chunk is corrupt: {what}"))
}

/// Reads a blob (of the row starting at `base`), appending its readings in write order.
fn decode(base: i64, data: &[u8], out: &mut Vec<Point>) -> db::Result<()> {
    let mut r = Reader { data, at: 0 };
    match r.byte()? {
        FORMAT => {}
        other => return Err(corrupt(&format!("unknown format {other}"))),
    }
    let mut ts = base;
    while r.at < data.len() {
        ts = ts.wrapping_add(unzigzag(r.varint()?));
        let flags = r.byte()?;
        let value = if flags & HAS_VALUE != 0 {
            let b = r.take(8)?;
            Some(f64::from_le_bytes(b.try_into().expect("8 bytes")))
        } else {
            None
        };
        let text = (flags & HAS_TEXT != 0).then(|| r.text()).transpose()?;
        let quality = (flags & HAS_QUALITY != 0).then(|| r.text()).transpose()?;
        out.push(Point {
            ts,
            value,
            text,
            quality,
        });
    }
    Ok(())
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> db::Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| corrupt("it ends inside a reading"))?;
        let b = &self.data[self.at..end];
        self.at = end;
        Ok(b)
    }

    fn byte(&mut self) -> db::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> db::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("a number longer than 64 bits"))
    }

    fn text(&mut self) -> db::Result<String> {
        let n = self.varint()?;
        let b = self.take(usize::try_from(n).map_err(|_| corrupt("a text too long"))?)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("a text that is not UTF-8"))
    }
}

/// Puts readings decoded in write order into time order, keeping of several of the same
/// millisecond the one written last, and only those in `[from, to)`.
fn settle(points: &mut Vec<Point>, from: i64, to: i64) {
    points.retain(|p| p.ts >= from && p.ts < to);
    // Stable: readings of one millisecond stay in write order, and the last one is kept.
    points.sort_by_key(|p| p.ts);
    let mut keep = 0;
    for i in 0..points.len() {
        if keep > 0 && points[keep - 1].ts == points[i].ts {
            points.swap(keep - 1, i);
        } else {
            points.swap(keep, i);
            keep += 1;
        }
    }
    points.truncate(keep);
}

/// `$from, …` for `n` parameters from `$from` on: an `IN` list.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes one stored row into `out`; a corrupt one is logged and left out (its readings are
/// lost either way, and one bad row must not stop every rollup and query of its series).
fn decode_row(series: i64, base: i64, data: &[u8], out: &mut Vec<Point>) {
    let before = out.len();
    if let Err(e) = decode(base, data, out) {
        out.truncate(before);
        tracing::error!(series, base, error = %e, "a stored row of raw readings is corrupt; left out");
    }
}

/// The newest reading with a value (a number or a text) of each series among the chunks written
/// after chunk `after`, in series order; of two with the same time, the later written. On SQLite
/// a new chunk's id is one more than the largest: ids grow with each write as long as nothing
/// deletes the newest chunks meanwhile (the writer runs no maintenance while it carries values).
pub fn newest_since(c: &dyn Sql, after: i64) -> db::Result<Vec<(i64, Point)>> {
    let mut newest: std::collections::BTreeMap<i64, Point> = Default::default();
    let mut points = Vec::new();
    for row in c.query(
        "SELECT series, minute, data FROM reading_chunks WHERE id > $1 ORDER BY id",
        args![after],
    )? {
        let series: i64 = row.get(0)?;
        points.clear();
        decode_row(series, row.get(1)?, &row.get::<Vec<u8>>(2)?, &mut points);
        for p in points.drain(..) {
            if p.value.is_none() && p.text.is_none() {
                continue;
            }
            match newest.get(&series) {
                Some(n) if n.ts > p.ts => {}
                _ => {
                    newest.insert(series, p);
                }
            }
        }
    }
    Ok(newest.into_iter().collect())
}

/// The readings of the series in `ids` in the hour rows and chunks covering `[from, to)`, in write
/// order per series: the hour rows, then the chunks by (minute, id). One statement, so one
/// snapshot: a merge committing meanwhile cannot hide the chunks it moved.
fn read_rows(
    c: &dyn Sql,
    ids: &[i64],
    from: i64,
    to: i64,
) -> db::Result<std::collections::BTreeMap<i64, Vec<Point>>> {
    let mut by: std::collections::BTreeMap<i64, Vec<Point>> = Default::default();
    if ids.is_empty() || from >= to {
        return Ok(by);
    }
    let list = placeholders(5, ids.len());
    let sql = format!(
        "SELECT series, 0 AS src, hour AS base, 0 AS id, data FROM reading_hours
         WHERE series IN ({list}) AND hour >= $1 AND hour <= $2
         UNION ALL
         SELECT series, 1 AS src, minute AS base, id, data FROM reading_chunks
         WHERE series IN ({list}) AND minute >= $3 AND minute <= $4
         ORDER BY 1, 2, 3, 4"
    );
    let mut params = args![
        hour_of(from),
        hour_of(to - 1),
        minute_of(from),
        minute_of(to - 1)
    ]
    .to_vec();
    params.extend(ids.iter().map(db::ToValue::to_value));
    for r in &c.query(&sql, &params)? {
        let series: i64 = r.get(0)?;
        decode_row(
            series,
            r.get(2)?,
            &r.get::<Vec<u8>>(4)?,
            by.entry(series).or_default(),
        );
    }
    Ok(by)
}

/// Hours one query of [`range`] with a limit reads at a time.
const WINDOW_MS: i64 = 24 * SPAN_MS;

/// The readings of `series` with `from <= ts < to`, in time order (of two of the same millisecond,
/// the one stored later). With a limit, the earliest `limit` of them, reading no more rows than
/// it takes.
pub fn range(
    c: &dyn Sql,
    series: i64,
    from: i64,
    to: i64,
    limit: Option<usize>,
) -> db::Result<Vec<Point>> {
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    let last = to - 1;
    let mut at = from;
    while at <= last {
        // The whole range at once, or a window from the next hour that has readings.
        let until = match limit {
            None => last,
            Some(_) => {
                let next: Option<i64> = db::one(
                    c,
                    "SELECT MIN(x) FROM (
                        SELECT MIN(hour) AS x FROM reading_hours
                        WHERE series = $1 AND hour >= $2 AND hour <= $4
                        UNION ALL
                        SELECT MIN(minute) AS x FROM reading_chunks
                        WHERE series = $1 AND minute >= $3 AND minute <= $5
                    ) AS t",
                    args![
                        series,
                        hour_of(at),
                        minute_of(at),
                        hour_of(last),
                        minute_of(last)
                    ],
                )?;
                let Some(next) = next else { break };
                at = at.max(next);
                (hour_of(at).saturating_add(WINDOW_MS) - 1).min(last)
            }
        };
        let end = until.saturating_add(1);
        let mut points = read_rows(c, &[series], at, end)?
            .remove(&series)
            .unwrap_or_default();
        settle(&mut points, at, end);
        out.append(&mut points);
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        match until.checked_add(1) {
            Some(next) => at = next,
            None => break,
        }
    }
    if let Some(l) = limit {
        out.truncate(l);
    }
    Ok(out)
}

/// Series read at once by [`for_each_series`]: what it holds in memory is their readings.
const SERIES_AT_ONCE: usize = 128;

/// Calls `f` with the readings of each series with `from <= ts < to`, as [`range`] gives them, a
/// few series at a time (a rollup step of a busy town holds millions of readings).
pub fn for_each_series(
    c: &dyn Sql,
    from: i64,
    to: i64,
    mut f: impl FnMut(i64, Vec<Point>) -> db::Result<()>,
) -> db::Result<()> {
    if from >= to {
        return Ok(());
    }
    let ids: Vec<i64> = c
        .query("SELECT id FROM series ORDER BY id", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect::<db::Result<_>>()?;
    for group in ids.chunks(SERIES_AT_ONCE) {
        for (series, mut points) in read_rows(c, group, from, to)? {
            settle(&mut points, from, to);
            if !points.is_empty() {
                f(series, points)?;
            }
        }
    }
    Ok(())
}

/// [`for_each_series`], collected (tests).
#[cfg(test)]
pub fn range_all(c: &dyn Sql, from: i64, to: i64) -> db::Result<Vec<(i64, Vec<Point>)>> {
    let mut out = Vec::new();
    for_each_series(c, from, to, |s, p| {
        out.push((s, p));
        Ok(())
    })?;
    Ok(out)
}

/// Deletes the rows of `series` that hold only readings older than `cutoff`; returns how many
/// readings they held. The hour row of the hour `cutoff` is in stays whole until the hour has
/// passed, so raw readings of that hour may be kept longer than asked.
pub fn delete_before(c: &dyn Sql, series: i64, cutoff: i64) -> db::Result<u64> {
    let mut n = 0;
    for (sql, span) in [
        (
            "DELETE FROM reading_hours WHERE series = $1 AND hour <= $2 RETURNING n",
            SPAN_MS,
        ),
        (
            "DELETE FROM reading_chunks WHERE series = $1 AND minute <= $2 RETURNING n",
            CHUNK_MS,
        ),
    ] {
        for r in &c.query(sql, args![series, cutoff.saturating_sub(span)])? {
            n += r.get::<i64>(0)? as u64;
        }
    }
    Ok(n)
}

/// Merges the chunks of one series in one hour into its hour row: the readings in time order, one
/// per millisecond (the one stored last). Returns how many chunks it merged.
///
/// At a few readings per series per batch (a town at its usual rate) a chunk holds a reading or
/// two, and a row per reading costs more than the old row did; merged once the hour is rolled up,
/// an hour of a series is one row again (10 to 12 bytes a numeric reading), read in one go. Only
/// the chunks read are deleted: one another process commits meanwhile stays, to be merged later.
pub fn compact(c: &dyn Sql, series: i64, hour: i64) -> db::Result<usize> {
    let chunks = c.query(
        "SELECT id, minute, data FROM reading_chunks
         WHERE series = $1 AND minute >= $2 AND minute < $3 ORDER BY minute, id",
        args![series, hour, hour + SPAN_MS],
    )?;
    if chunks.is_empty() {
        return Ok(0);
    }
    let mut points = Vec::new();
    if let Some(r) = c.query_opt(
        "SELECT data FROM reading_hours WHERE series = $1 AND hour = $2",
        args![series, hour],
    )? && let Err(e) = decode(hour, &r.get::<Vec<u8>>(0)?, &mut points)
    {
        tracing::error!(series, hour, error = %e, "an hour of raw readings is corrupt; not merged");
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(chunks.len());
    for r in &chunks {
        ids.push(r.get::<i64>(0)?);
        // A corrupt row stops the merge of this hour (it stays as it is, left out by readers).
        if let Err(e) = decode(r.get(1)?, &r.get::<Vec<u8>>(2)?, &mut points) {
            tracing::error!(series, hour, error = %e, "a chunk of raw readings is corrupt; its hour is not merged");
            return Ok(0);
        }
    }
    settle(&mut points, hour, hour + SPAN_MS);
    // Exactly the chunks read: on PostgreSQL another hub process may commit a chunk of this hour
    // meanwhile, with any id; it stays, to be merged later.
    for group in ids.chunks(256) {
        c.execute(
            &format!(
                "DELETE FROM reading_chunks WHERE id IN ({})",
                placeholders(1, group.len())
            ),
            &group.iter().map(db::ToValue::to_value).collect::<Vec<_>>(),
        )?;
    }
    write_hour(c, series, hour, &points)?;
    Ok(chunks.len())
}

/// Puts `points` (in time order, one per millisecond) as the hour row of `series` at `hour`.
fn write_hour(c: &dyn Sql, series: i64, hour: i64, points: &[Point]) -> db::Result<()> {
    let blob = Blob::of(hour, points);
    c.execute(
        "INSERT INTO reading_hours (series, hour, n, data) VALUES ($1, $2, $3, $4)
         ON CONFLICT (series, hour) DO UPDATE SET n = excluded.n, data = excluded.data",
        args![series, hour, blob.n, blob.data],
    )?;
    Ok(())
}

/// Adds readings (of `series`, in time order) to its hour rows directly (the migration from rows).
pub fn merge_into_hours(c: &dyn Sql, series: i64, points: &[Point]) -> db::Result<()> {
    for group in points.chunk_by(|a, b| hour_of(a.ts) == hour_of(b.ts)) {
        let hour = hour_of(group[0].ts);
        let mut all = Vec::new();
        if let Some(r) = c.query_opt(
            "SELECT data FROM reading_hours WHERE series = $1 AND hour = $2",
            args![series, hour],
        )? {
            decode(hour, &r.get::<Vec<u8>>(0)?, &mut all)?;
        }
        all.extend_from_slice(group);
        settle(&mut all, hour, hour + SPAN_MS);
        write_hour(c, series, hour, &all)?;
    }
    Ok(())
}

/// The start of the oldest hour that has readings, if any.
pub fn oldest(c: &dyn Sql) -> db::Result<Option<i64>> {
    let oldest: Option<i64> = db::one(
        c,
        "SELECT MIN(x) FROM (
            SELECT (SELECT MIN(hour) FROM reading_hours WHERE series = s.id) AS x FROM series s
            UNION ALL
            SELECT (SELECT MIN(minute) FROM reading_chunks WHERE series = s.id) AS x FROM series s
        ) AS t",
        &[],
    )?;
    Ok(oldest.map(hour_of))
}

/// Aggregates of the good numeric readings in buckets of `step` ms aligned to the epoch: (bucket
/// start, count, sum, min, max), in time order.
pub fn buckets(points: &[Point], step: i64) -> Vec<(i64, i64, f64, f64, f64)> {
    let mut out: Vec<(i64, i64, f64, f64, f64)> = Vec::new();
    for p in points {
        let Some(v) = p.good() else { continue };
        let b = p.ts - p.ts.rem_euclid(step);
        match out.last_mut() {
            Some(last) if last.0 == b => {
                last.1 += 1;
                last.2 += v;
                last.3 = last.3.min(v);
                last.4 = last.4.max(v);
            }
            _ => out.push((b, 1, v, v, v)),
        }
    }
    out
}

/// Writes readings as one write would (tests).
#[cfg(test)]
pub fn insert(c: &dyn Sql, series: i64, points: &[Point]) -> db::Result<()> {
    let mut pending = Pending::<()>::default();
    for p in points {
        pending.push(
            series,
            p.ts,
            p.value,
            p.text.as_deref(),
            p.quality.as_deref(),
        );
    }
    pending.flush(c).map(drop)
}

#[cfg(test)]
pub fn good(ts: i64, value: f64) -> Point {
    Point {
        ts,
        value: Some(value),
        text: None,
        quality: None,
    }
}

/// How many readings are stored, counting one stored twice once (tests).
#[cfg(test)]
pub fn count(c: &dyn Sql) -> i64 {
    range_all(c, i64::MIN / 2, i64::MAX / 2)
        .unwrap()
        .iter()
        .map(|(_, p)| p.len() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(ts: i64, value: Option<f64>, text: Option<&str>, quality: Option<&str>) -> Point {
        Point {
            ts,
            value,
            text: text.map(str::to_owned),
            quality: quality.map(str::to_owned),
        }
    }

    fn encode(points: &[Point]) -> (i64, Vec<u8>) {
        let mut p = Pending::<()>::default();
        for x in points {
            p.push(7, x.ts, x.value, x.text.as_deref(), x.quality.as_deref());
        }
        let mut chunks = p.series.remove(&7).unwrap().chunks;
        assert_eq!(chunks.len(), 1);
        let (minute, c) = chunks.pop().unwrap();
        (minute, c.data)
    }

    #[test]
    fn a_chunk_reads_back_what_was_written_in_write_order() {
        let h = 1_790_000_000_000 - 1_790_000_000_000 % SPAN_MS;
        let points = vec![
            point(h + 5_000, Some(1.5), None, None),
            point(h, Some(-0.0), None, None),
            point(h + 59_999, None, Some("开"), None),
            point(h + 59_999, Some(f64::MAX), None, Some("sensor_fault")),
            point(h + 1, None, None, None),
            point(h + 2, Some(f64::NAN), Some(""), Some("")),
        ];
        let (hour, data) = encode(&points);
        assert_eq!(hour, h);
        let mut back = Vec::new();
        decode(hour, &data, &mut back).unwrap();
        assert_eq!(back.len(), points.len());
        for (a, b) in back.iter().zip(&points) {
            assert_eq!(a.ts, b.ts);
            assert_eq!(a.value.map(f64::to_bits), b.value.map(f64::to_bits));
            assert_eq!((&a.text, &a.quality), (&b.text, &b.quality));
        }
        // 3-byte delta, flag, 8-byte value: about 12 bytes a reading.
        assert!(data.len() < 100, "{}", data.len());
    }

    #[test]
    fn readings_of_one_series_split_at_the_minute() {
        let mut p = Pending::<()>::default();
        p.push(1, CHUNK_MS - 1, Some(1.0), None, None);
        p.push(1, CHUNK_MS, Some(2.0), None, None);
        p.push(2, CHUNK_MS, Some(3.0), None, None);
        p.push(1, -1, Some(4.0), None, None);
        let mut keys: Vec<_> = p
            .series
            .iter()
            .flat_map(|(s, w)| w.chunks.iter().map(|(m, _)| (*s, *m)))
            .collect();
        keys.sort();
        assert_eq!(keys, [(1, -CHUNK_MS), (1, 0), (1, CHUNK_MS), (2, CHUNK_MS)]);
    }

    #[test]
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let (hour, data) = encode(&[
            point(10, Some(1.0), Some("abc"), None),
            point(20, Some(2.0), None, Some("x")),
        ]);
        let mut whole = Vec::new();
        decode(hour, &data, &mut whole).unwrap();
        let mut prefixes = 0;
        for cut in 0..data.len() {
            let mut out = Vec::new();
            match decode(hour, &data[..cut], &mut out) {
                // Cut between two readings: what is there is whole.
                Ok(()) => {
                    assert_eq!(out[..], whole[..out.len()], "{cut}");
                    prefixes += 1;
                }
                Err(e) => assert!(e.to_string().contains("corrupt"), "{cut}: {e}"),
            }
        }
        // Only the cuts after the format byte and after the first reading decode.
        assert_eq!(prefixes, 2);
        assert!(decode(hour, &[], &mut Vec::new()).is_err());
        assert!(decode(hour, &[9], &mut Vec::new()).is_err());
        let mut bad = data.clone();
        bad.extend_from_slice(&[0xff; 11]);
        assert!(decode(hour, &bad, &mut Vec::new()).is_err());
    }

    #[test]
    fn the_later_of_two_readings_of_one_millisecond_is_kept() {
        let mut p = vec![
            point(3, Some(1.0), None, None),
            point(1, Some(2.0), None, None),
            point(3, Some(3.0), None, None),
            point(2, Some(4.0), None, None),
            point(3, Some(5.0), None, None),
            point(9, Some(6.0), None, None),
        ];
        settle(&mut p, 0, 9);
        let got: Vec<_> = p.iter().map(|p| (p.ts, p.value.unwrap())).collect();
        assert_eq!(got, [(1, 2.0), (2, 4.0), (3, 5.0)]);
    }

    #[test]
    fn buckets_count_good_numbers_only() {
        let p = vec![
            point(0, Some(1.0), None, None),
            point(59_999, Some(3.0), None, None),
            point(60_000, Some(5.0), None, Some("bad")),
            point(60_001, None, Some("t"), None),
            point(120_000, Some(-1.0), None, None),
        ];
        assert_eq!(
            buckets(&p, 60_000),
            [(0, 2, 4.0, 1.0, 3.0), (120_000, 1, -1.0, -1.0, -1.0)]
        );
    }

    /// Readings in hour rows and chunks, with a gap of days and readings stored twice, read back
    /// whole, by windows with a limit, for all series, and deleted by retention, on both engines.
    #[test]
    fn ranges_read_hours_and_chunks_as_one_series() {
        for (name, c) in crate::db::testing::migrated() {
            let c = &*c;
            c.batch("INSERT INTO series (id, gateway, device, metric) VALUES (1, 'gw', 'd', 'a'), (2, 'gw', 'd', 'b');")
                .unwrap();
            let t0 = 1_790_000_000_000 - 1_790_000_000_000 % SPAN_MS;
            let day = 24 * SPAN_MS;
            // Day 0 in hour rows (as a migration writes them), day 3 in chunks, a few written twice.
            let old: Vec<Point> = (0..200).map(|i| good(t0 + i * 37_000, i as f64)).collect();
            merge_into_hours(c, 1, &old).unwrap();
            let new: Vec<Point> = (0..200)
                .map(|i| good(t0 + 3 * day + i * 41_000, 1000.0 + i as f64))
                .collect();
            insert(c, 1, &new).unwrap();
            let again: Vec<Point> = [5, 150].iter().map(|&i| good(new[i].ts, -1.0)).collect();
            insert(c, 1, &again).unwrap();
            insert(c, 2, &[good(t0 + day, 7.0)]).unwrap();
            // A merged hour then gets a chunk that rewrites one of its readings.
            insert(c, 1, &[good(old[3].ts, -3.0)]).unwrap();
            let mut want: Vec<(i64, f64)> = old
                .iter()
                .chain(&new)
                .map(|p| (p.ts, p.value.unwrap()))
                .collect();
            want[3].1 = -3.0;
            want[200 + 5].1 = -1.0;
            want[200 + 150].1 = -1.0;
            let got = |from, to, limit| -> Vec<(i64, f64)> {
                range(c, 1, from, to, limit)
                    .unwrap()
                    .iter()
                    .map(|p| (p.ts, p.value.unwrap()))
                    .collect()
            };
            assert_eq!(got(0, i64::MAX / 2, None), want, "{name}");
            for limit in [1, 2, 199, 200, 201, 399, 400, 401] {
                let n = limit.min(want.len());
                assert_eq!(
                    got(0, i64::MAX / 2, Some(limit)),
                    want[..n],
                    "{name} {limit}"
                );
            }
            // From inside a minute and an hour, to the millisecond before a reading.
            let (from, to) = (want[10].0 - 1, want[300].0);
            let inside: Vec<_> = want
                .iter()
                .filter(|w| w.0 >= from && w.0 < to)
                .copied()
                .collect();
            assert_eq!(got(from, to, None), inside, "{name}");
            assert_eq!(got(from, to, Some(50)), inside[..50], "{name}");
            let all = range_all(c, 0, i64::MAX / 2).unwrap();
            assert_eq!(all.len(), 2, "{name}");
            assert_eq!(all[0].1.len(), want.len(), "{name}");
            assert_eq!(all[1].1[0].value, Some(7.0), "{name}");
            // Retention: the whole of day 0 goes; rows are counted by what they held.
            let gone = delete_before(c, 1, t0 + day).unwrap();
            assert_eq!(gone, 201, "{name}: 200 in hour rows and the chunk of one");
            assert_eq!(got(0, i64::MAX / 2, None), want[200..], "{name}");
        }
    }

    /// A corrupt row is left out of reads and not merged; the rest of its series reads on.
    #[test]
    fn a_corrupt_row_is_left_out_not_fatal() {
        for (name, c) in crate::db::testing::migrated() {
            let c = &*c;
            c.batch("INSERT INTO series (id, gateway, device, metric) VALUES (1, 'gw', 'd', 'a');")
                .unwrap();
            let t0 = 1_790_000_000_000 - 1_790_000_000_000 % SPAN_MS;
            insert(c, 1, &[good(t0 + 1, 1.0), good(t0 + 120_001, 2.0)]).unwrap();
            c.execute(
                "INSERT INTO reading_chunks (series, minute, n, data) VALUES (1, $1, 1, $2)",
                args![t0 + 60_000, vec![FORMAT, 0x80]],
            )
            .unwrap();
            let got = range(c, 1, t0, t0 + SPAN_MS, None).unwrap();
            assert_eq!(
                got.iter().map(|p| p.ts).collect::<Vec<_>>(),
                [t0 + 1, t0 + 120_001],
                "{name}"
            );
            assert_eq!(compact(c, 1, t0).unwrap(), 0, "{name}: not merged");
            let chunks: i64 = db::one(c, "SELECT COUNT(*) FROM reading_chunks", &[]).unwrap();
            assert_eq!(chunks, 3, "{name}");
        }
    }
}
