//! Raw readings, stored in chunks: a row of `reading_chunks` holds the readings of one series, all
//! within one hour, that one write put there, encoded into a blob. A batch of envelopes under load
//! carries many readings of each series, and a row per reading cost a B-tree descent per reading
//! (most of the store writer's time, BENCHMARKS.md); a chunk costs two per series per batch. The
//! same is done by Prometheus (chunks), InfluxDB (TSM blocks) and TimescaleDB (compressed rows).
//!
//! Chunks are only ever added and, by retention, deleted whole. A reading stored again (the same
//! series and millisecond, say from a gateway that lost its boot id and sent its spool twice) is in
//! two chunks; readers keep the one written later, which is what an upsert of rows did. Readers
//! find chunks by (series, hour) and decode them here: every reader of raw readings goes through
//! [`range`] or [`range_all`].
//!
//! The blob is hand-encoded, not a serde format: it is a dozen lines, its layout must stay
//! readable across versions (a format byte leads it), and a varint timestamp delta plus a flag
//! byte is 3 to 12 bytes a reading against 30 or more in a self-describing format.
//!
//! Layout: the format byte (1), then per reading in write order: the timestamp as a zigzag varint
//! delta from the previous reading's (the first from the chunk's hour), a flag byte (1: a number
//! follows, 2: a text, 4: a bad-quality reason), the number as 8 little-endian bytes, and each text
//! as a varint length and its UTF-8 bytes.

use crate::db::{self, DbError, Sql, args};

/// The time one chunk spans: all its readings are in the same hour (UTC, from the epoch).
pub const SPAN_MS: i64 = 3_600_000;

const FORMAT: u8 = 1;
const HAS_VALUE: u8 = 1;
const HAS_TEXT: u8 = 2;
const HAS_QUALITY: u8 = 4;

/// The hour a reading's chunk starts at.
pub fn hour_of(ts: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(SPAN_MS))
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

/// A chunk being filled.
struct Open {
    /// The earliest and latest of its readings' times, and the time of the one pushed last.
    first: i64,
    last: i64,
    prev: i64,
    n: i64,
    data: Vec<u8>,
}

/// Readings waiting to be written, a chunk per (series, hour).
#[derive(Default)]
pub struct Pending {
    chunks: std::collections::HashMap<(i64, i64), Open, foldhash::fast::RandomState>,
}

impl Pending {
    pub fn push(
        &mut self,
        series: i64,
        ts: i64,
        value: Option<f64>,
        text: Option<&str>,
        quality: Option<&str>,
    ) {
        let hour = hour_of(ts);
        let c = self.chunks.entry((series, hour)).or_insert_with(|| Open {
            first: ts,
            last: ts,
            prev: hour,
            n: 0,
            data: vec![FORMAT],
        });
        put_varint(&mut c.data, zigzag(ts.wrapping_sub(c.prev)));
        c.prev = ts;
        c.first = c.first.min(ts);
        c.last = c.last.max(ts);
        c.n += 1;
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
        c.data.push(flags);
        if let Some(v) = value {
            c.data.extend_from_slice(&v.to_le_bytes());
        }
        for s in [text, quality].into_iter().flatten() {
            put_varint(&mut c.data, s.len() as u64);
            c.data.extend_from_slice(s.as_bytes());
        }
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
    }

    /// Writes the waiting chunks, in (series, hour) order, and empties this.
    pub fn flush(&mut self, tx: &dyn Sql) -> db::Result<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let mut chunks: Vec<((i64, i64), Open)> = self.chunks.drain().collect();
        chunks.sort_unstable_by_key(|(k, _)| *k);
        let mut params = Vec::with_capacity(WIDTH * chunks.len());
        for ((series, hour), c) in chunks {
            params.extend_from_slice(args![series, hour, c.first, c.last, c.n, c.data]);
        }
        if tx.engine() == db::Engine::Sqlite {
            // One row per statement: no statement journal (see the writer's notes), and no round
            // trip to pay for.
            tx.execute_each(insert_sql(1), &params, WIDTH)?;
            return Ok(());
        }
        // PostgreSQL: every statement is a round trip, so many rows per statement.
        let mut rest = &params[..];
        while !rest.is_empty() {
            let n = ROWS
                .into_iter()
                .find(|&r| WIDTH * r <= rest.len())
                .unwrap_or(1);
            let (now, tail) = rest.split_at(WIDTH * n);
            tx.execute(insert_sql(n), now)?;
            rest = tail;
        }
        Ok(())
    }
}

/// Parameters per chunk row.
const WIDTH: usize = 6;

/// Rows per multi-row insert on PostgreSQL, largest first: any count is a sum of these.
const ROWS: [usize; 4] = [64, 16, 4, 1];

/// The insert of `n` chunks (built once per size).
fn insert_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        ROWS.iter()
            .map(|&n| {
                let values = (0..n)
                    .map(|i| {
                        let p: Vec<String> =
                            (1..=WIDTH).map(|k| format!("${}", WIDTH * i + k)).collect();
                        format!("({})", p.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "INSERT INTO reading_chunks (series, hour, first_ts, last_ts, n, data) VALUES {values}"
                );
                (n, sql)
            })
            .collect()
    });
    all.iter()
        .find(|(k, _)| *k == n)
        .map_or(&all[all.len() - 1].1, |(_, sql)| sql)
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

/// Reads a chunk's blob (of the chunk starting at `hour`), appending its readings in write order.
pub fn decode(hour: i64, data: &[u8], out: &mut Vec<Point>) -> db::Result<()> {
    let mut r = Reader { data, at: 0 };
    match r.byte()? {
        FORMAT => {}
        other => return Err(corrupt(&format!("unknown format {other}"))),
    }
    let mut ts = hour;
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

/// Hours of chunks one query of [`range`] with a limit reads at a time.
const WINDOW_MS: i64 = 24 * SPAN_MS;

/// The readings of `series` with `from <= ts < to`, in time order (of two of the same millisecond,
/// the one stored later). With a limit, the earliest `limit` of them, reading no more chunks than
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
    let last_hour = hour_of(to - 1);
    let mut hour = hour_of(from);
    while hour <= last_hour {
        // The whole range at once, or a window from the next hour that has a chunk.
        let until = match limit {
            None => last_hour,
            Some(_) => {
                let next: Option<i64> = db::one(
                    c,
                    "SELECT MIN(hour) FROM reading_chunks
                     WHERE series = $1 AND hour >= $2 AND hour <= $3 AND last_ts >= $4",
                    args![series, hour, last_hour, from],
                )?;
                let Some(next) = next else { break };
                hour = next;
                next.saturating_add(WINDOW_MS - SPAN_MS).min(last_hour)
            }
        };
        // The chunks that overlap the range (`first_ts` and `last_ts` are checked before the blob,
        // the last column, is read).
        let rows = c.query(
            "SELECT hour, data FROM reading_chunks
             WHERE series = $1 AND hour >= $2 AND hour <= $3 AND last_ts >= $4 AND first_ts < $5
             ORDER BY hour, id",
            args![series, hour, until, from, to],
        )?;
        let mut points = Vec::new();
        for r in &rows {
            decode(r.get(0)?, &r.get::<Vec<u8>>(1)?, &mut points)?;
        }
        settle(&mut points, from, to);
        out.append(&mut points);
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        match until.checked_add(SPAN_MS) {
            Some(h) => hour = h,
            None => break,
        }
    }
    if let Some(l) = limit {
        out.truncate(l);
    }
    Ok(out)
}

/// The readings of every series with `from <= ts < to`, as [`range`] gives them, by series.
pub fn range_all(c: &dyn Sql, from: i64, to: i64) -> db::Result<Vec<(i64, Vec<Point>)>> {
    let mut out: Vec<(i64, Vec<Point>)> = Vec::new();
    if from >= to {
        return Ok(out);
    }
    let rows = c.query(
        "SELECT series, hour, data FROM reading_chunks
         WHERE series IN (SELECT id FROM series) AND hour >= $1 AND hour <= $2
           AND last_ts >= $3 AND first_ts < $4
         ORDER BY series, hour, id",
        args![hour_of(from), hour_of(to - 1), from, to],
    )?;
    for r in &rows {
        let series: i64 = r.get(0)?;
        if out.last().is_none_or(|(s, _)| *s != series) {
            out.push((series, Vec::new()));
        }
        let points = &mut out.last_mut().expect("pushed").1;
        decode(r.get(1)?, &r.get::<Vec<u8>>(2)?, points)?;
    }
    for (_, points) in &mut out {
        settle(points, from, to);
    }
    out.retain(|(_, p)| !p.is_empty());
    Ok(out)
}

/// Deletes the chunks of `series` that hold only readings older than `cutoff`; returns how many
/// readings they held. A chunk that also holds newer readings stays whole, so a few raw readings
/// (within the hour of `cutoff`) may be kept longer than asked.
pub fn delete_before(c: &dyn Sql, series: i64, cutoff: i64) -> db::Result<u64> {
    let rows = c.query(
        "DELETE FROM reading_chunks WHERE series = $1 AND hour <= $2 AND last_ts < $3 RETURNING n",
        args![series, hour_of(cutoff), cutoff],
    )?;
    rows.iter().map(|r| r.get::<i64>(0).map(|n| n as u64)).sum()
}

/// Merges the chunks of one series and hour into one, if there are several: the readings in time
/// order, one per millisecond (the one stored last). Returns how many chunks it merged.
///
/// At a few readings per series per batch (a town at its usual rate) a chunk holds a reading or
/// two, and a row per reading costs more than the old row did; merged once the hour is rolled up,
/// an hour of a series is one row again, smaller than rows (12 bytes or so a reading) and read
/// in one go. Chunks written after the merge read its chunks keep their place (they have larger
/// ids than those it deletes); the merged chunk's id is larger than theirs, which only matters
/// for a reading of the same millisecond stored twice by two hub processes at once.
pub fn compact(c: &dyn Sql, series: i64, hour: i64) -> db::Result<usize> {
    let rows = c.query(
        "SELECT id, data FROM reading_chunks WHERE series = $1 AND hour = $2 ORDER BY id",
        args![series, hour],
    )?;
    if rows.len() < 2 {
        return Ok(0);
    }
    let mut points = Vec::new();
    let mut newest = 0;
    for r in &rows {
        newest = r.get(0)?;
        decode(hour, &r.get::<Vec<u8>>(1)?, &mut points)?;
    }
    settle(&mut points, hour, hour + SPAN_MS);
    c.execute(
        "DELETE FROM reading_chunks WHERE series = $1 AND hour = $2 AND id <= $3",
        args![series, hour, newest],
    )?;
    insert(c, series, &points)?;
    Ok(rows.len())
}

/// The hour of the oldest chunk, if any.
pub fn oldest(c: &dyn Sql) -> db::Result<Option<i64>> {
    db::one(
        c,
        "SELECT MIN((SELECT MIN(hour) FROM reading_chunks WHERE series = s.id)) FROM series s",
        &[],
    )
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

/// Writes readings as one write would (tests and the migration from rows).
pub fn insert(c: &dyn Sql, series: i64, points: &[Point]) -> db::Result<()> {
    let mut pending = Pending::default();
    for p in points {
        pending.push(
            series,
            p.ts,
            p.value,
            p.text.as_deref(),
            p.quality.as_deref(),
        );
    }
    pending.flush(c)
}

/// A good numeric reading (tests).
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
        let mut p = Pending::default();
        for x in points {
            p.push(7, x.ts, x.value, x.text.as_deref(), x.quality.as_deref());
        }
        assert_eq!(p.chunks.len(), 1);
        let ((_, hour), c) = p.chunks.drain().next().unwrap();
        (hour, c.data)
    }

    #[test]
    fn a_chunk_reads_back_what_was_written_in_write_order() {
        let h = 1_790_000_000_000 - 1_790_000_000_000 % SPAN_MS;
        let points = vec![
            point(h + 5_000, Some(1.5), None, None),
            point(h, Some(-0.0), None, None),
            point(h + 3_599_999, None, Some("开"), None),
            point(h + 3_599_999, Some(f64::MAX), None, Some("sensor_fault")),
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
    fn readings_of_one_series_split_at_the_hour() {
        let mut p = Pending::default();
        p.push(1, SPAN_MS - 1, Some(1.0), None, None);
        p.push(1, SPAN_MS, Some(2.0), None, None);
        p.push(2, SPAN_MS, Some(3.0), None, None);
        p.push(1, -1, Some(4.0), None, None);
        let mut keys: Vec<_> = p.chunks.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, [(1, -SPAN_MS), (1, 0), (1, SPAN_MS), (2, SPAN_MS)]);
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
}
