//! The store-and-forward spool: every envelope is written here before it is published, and leaves
//! only when the broker has acknowledged it (QoS 1 PUBACK). Survives `kill -9` and power cuts.
//!
//! Two classes with their own budgets: `bulk` (readings) and `event` (camera captures, alarms, device
//! up/down). Each class is a directory of segment files written append-only:
//!
//! ```text
//! <data_dir>/spool/bulk/00000000000000000001.seg   records 1..
//! <data_dir>/spool/bulk/acked                      "all ids below N are acknowledged" (a hint)
//! record = "SPR1" | len u32 | items u32 | id u64 | spooled_at_ms i64 | crc32 u32 | payload (len bytes)
//! ```
//! All integers little-endian; the CRC covers items, id, time and payload. At start every segment is
//! scanned: a torn or corrupt record is skipped (counted) and scanning resumes at the next record
//! marker; the last segment is cut back to its last good record so appends continue cleanly.
//!
//! Durability: event records are synced (fdatasync) before [`Spool::append`]'s caller hears they are
//! accepted; bulk records are written at once (page cache) and synced by [`Spool::sync`], which the
//! uplink calls about once a second, so at most about a second of readings is at risk in a power cut
//! and there is one write per envelope, never one per reading.
//!
//! Budgets: when a class exceeds its bytes or its oldest segment exceeds the age limit, its oldest
//! segment is deleted and its unacknowledged items are counted as dropped.
//!
//! The acknowledgement mark is written only now and then; after a crash the records acknowledged since
//! are sent again, and the hub's dedupe on (gateway, boot, seq) stores them once.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAGIC: &[u8; 4] = b"SPR1";
const HEADER: usize = 4 + 4 + 4 + 8 + 8 + 4;
/// Largest record payload accepted (the protocol's envelope limit, with room).
pub const MAX_RECORD: usize = 1024 * 1024;

/// The two classes of data, with separate budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Bulk,
    Event,
}

impl Class {
    pub const ALL: [Class; 2] = [Class::Event, Class::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Bulk => "bulk",
            Class::Event => "event",
        }
    }

    fn index(self) -> usize {
        match self {
            Class::Event => 0,
            Class::Bulk => 1,
        }
    }
}

/// Budgets of one class.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_bytes: u64,
    pub max_age: Duration,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    id: u64,
    offset: u64,
    len: u32,
    items: u32,
    at_ms: i64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    records: Vec<Loc>,
    /// File length (bytes written, including headers).
    bytes: u64,
}

impl Segment {
    fn first_id(&self) -> Option<u64> {
        self.records.first().map(|r| r.id)
    }

    fn last_id(&self) -> Option<u64> {
        self.records.last().map(|r| r.id)
    }
}

#[derive(Debug)]
struct ClassSpool {
    class: Class,
    dir: PathBuf,
    budget: Budget,
    /// Oldest first; the last one takes appends.
    segments: VecDeque<Segment>,
    next_id: u64,
    /// Every id below this is acknowledged.
    acked_below: u64,
    /// Acknowledged ids at or above `acked_below` (acknowledgements arrive out of order).
    acked_above: BTreeSet<u64>,
    acked_mark_written: u64,
    dirty: bool,
    dropped_items: u64,
    dropped_records: u64,
}

/// What the spool holds, for the heartbeat and `edge-agent status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolFigures {
    /// Records (envelopes) not yet acknowledged, and the items in them.
    pub depth: u64,
    pub items: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Age of the oldest unacknowledged record, seconds.
    pub oldest_age_s: Option<u64>,
    /// Items deleted unsent (budget full, too old) since start.
    pub dropped_items: u64,
    /// Bytes skipped at start because they were torn or corrupt.
    pub corrupt_bytes: u64,
    pub corrupt_records: u64,
}

/// The spool of one agent.
#[derive(Debug)]
pub struct Spool {
    classes: [ClassSpool; 2],
    corrupt_bytes: u64,
    corrupt_records: u64,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub items: u32,
    pub spooled_at_ms: i64,
    pub payload: Vec<u8>,
}

impl Spool {
    /// Opens (creating) the spool under `dir`, recovering what an earlier run left.
    pub fn open(dir: &Path, event: Budget, bulk: Budget) -> std::io::Result<Spool> {
        let mut corrupt = (0u64, 0u64);
        let ev = ClassSpool::open(Class::Event, &dir.join("event"), event, &mut corrupt)?;
        let bu = ClassSpool::open(Class::Bulk, &dir.join("bulk"), bulk, &mut corrupt)?;
        if corrupt.0 > 0 {
            tracing::warn!(
                bytes = corrupt.0,
                records = corrupt.1,
                "spool: skipped torn or corrupt data at start"
            );
        }
        Ok(Spool {
            classes: [ev, bu],
            corrupt_bytes: corrupt.0,
            corrupt_records: corrupt.1,
        })
    }

    fn class(&mut self, c: Class) -> &mut ClassSpool {
        &mut self.classes[c.index()]
    }

    /// Appends a record; for events also syncs it. Returns its id.
    pub fn append(
        &mut self,
        class: Class,
        payload: &[u8],
        items: u32,
        at_ms: i64,
    ) -> std::io::Result<u64> {
        let id = loop {
            match self.class(class).append(payload, items, at_ms) {
                Ok(id) => break id,
                // The disk is full before the budget is (an SD card shared with logs, a budget
                // set too large): make room by dropping the oldest unsent readings, then the
                // oldest events, rather than losing what is new.
                Err(e) if is_disk_full(&e) => {
                    let freed = [Class::Bulk, Class::Event]
                        .iter()
                        .any(|&c| self.class(c).drop_oldest("disk full"));
                    if !freed {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let c = self.class(class);
        if class == Class::Event {
            c.sync()?;
        }
        c.enforce_budget(at_ms);
        Ok(id)
    }

    /// Syncs what was written since the last sync, and writes the acknowledgement marks.
    pub fn sync(&mut self) -> std::io::Result<()> {
        for c in &mut self.classes {
            c.sync()?;
            c.write_mark();
        }
        Ok(())
    }

    /// The broker acknowledged record `id` of `class`.
    pub fn ack(&mut self, class: Class, id: u64) {
        self.class(class).ack(id);
    }

    /// The first unacknowledged record of `class` with id >= `from`, if any.
    pub fn next_unacked(&self, class: Class, from: u64) -> Option<u64> {
        self.classes[class.index()].next_unacked(from)
    }

    /// The id the next appended record of `class` will get.
    pub fn next_id(&self, class: Class) -> u64 {
        self.classes[class.index()].next_id
    }

    pub fn is_acked(&self, class: Class, id: u64) -> bool {
        self.classes[class.index()].is_acked(id)
    }

    /// Reads record `id` of `class` (`None`: dropped or never written).
    pub fn read(&self, class: Class, id: u64) -> std::io::Result<Option<Record>> {
        self.classes[class.index()].read(id)
    }

    pub fn figures(&self, now_ms: i64) -> SpoolFigures {
        let mut f = SpoolFigures {
            corrupt_bytes: self.corrupt_bytes,
            corrupt_records: self.corrupt_records,
            ..Default::default()
        };
        for c in &self.classes {
            let mut oldest: Option<i64> = None;
            for s in &c.segments {
                f.bytes += s.bytes;
                for r in &s.records {
                    if !c.is_acked(r.id) {
                        f.depth += 1;
                        f.items += u64::from(r.items);
                        oldest = Some(oldest.map_or(r.at_ms, |o| o.min(r.at_ms)));
                    }
                }
            }
            if let Some(o) = oldest {
                let age = ((now_ms - o).max(0) / 1000) as u64;
                f.oldest_age_s = Some(f.oldest_age_s.map_or(age, |a| a.max(age)));
            }
            f.dropped_items += c.dropped_items;
        }
        f
    }

    /// Figures of one class: (unacknowledged records, items).
    pub fn depth(&self, class: Class) -> (u64, u64) {
        let c = &self.classes[class.index()];
        let mut out = (0, 0);
        for s in &c.segments {
            for r in &s.records {
                if !c.is_acked(r.id) {
                    out.0 += 1;
                    out.1 += u64::from(r.items);
                }
            }
        }
        out
    }
}

fn segment_name(first_id: u64) -> String {
    format!("{first_id:020}.seg")
}

impl ClassSpool {
    fn open(
        class: Class,
        dir: &Path,
        budget: Budget,
        corrupt: &mut (u64, u64),
    ) -> std::io::Result<ClassSpool> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        names.sort();
        let acked_below = std::fs::read_to_string(dir.join("acked"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut segments = VecDeque::new();
        let mut max_id = 0u64;
        let n = names.len();
        for (i, path) in names.into_iter().enumerate() {
            let mut file = OpenOptions::new().read(true).append(true).open(&path)?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            let (records, good_end, bad) = scan(&data);
            corrupt.0 += bad.0;
            corrupt.1 += bad.1;
            if bad.0 > 0 {
                tracing::warn!(file = %path.display(), skipped_bytes = bad.0, "spool segment had torn or corrupt records");
            }
            let is_last = i + 1 == n;
            let mut bytes = data.len() as u64;
            if is_last && good_end < data.len() as u64 {
                // Cut a torn tail so new records follow the last good one.
                file.set_len(good_end)?;
                bytes = good_end;
            }
            if let Some(last) = records.last() {
                max_id = max_id.max(last.id);
            }
            let seg = Segment {
                path,
                file,
                records,
                bytes,
            };
            let fully_acked = seg.last_id().is_none_or(|l| l < acked_below);
            if fully_acked && !is_last {
                let _ = std::fs::remove_file(&seg.path);
                continue;
            }
            segments.push_back(seg);
        }
        let next_id = (max_id + 1).max(acked_below).max(1);
        let c = ClassSpool {
            class,
            dir: dir.to_owned(),
            budget,
            segments,
            next_id,
            acked_below,
            acked_above: BTreeSet::new(),
            acked_mark_written: acked_below,
            dirty: false,
            dropped_items: 0,
            dropped_records: 0,
        };
        Ok(c)
    }

    fn roll(&mut self) -> std::io::Result<()> {
        if let Some(last) = self.segments.back_mut()
            && self.dirty
        {
            last.file.sync_data()?;
        }
        let path = self.dir.join(segment_name(self.next_id));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.segments.push_back(Segment {
            path,
            file,
            records: Vec::new(),
            bytes: 0,
        });
        Ok(())
    }

    fn append(&mut self, payload: &[u8], items: u32, at_ms: i64) -> std::io::Result<u64> {
        if payload.len() > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("record of {} bytes exceeds {MAX_RECORD}", payload.len()),
            ));
        }
        let need_roll = self
            .segments
            .back()
            .is_none_or(|s| s.bytes >= self.budget.segment_bytes);
        if need_roll {
            self.roll()?;
        }
        let id = self.next_id;
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        let body_start = buf.len();
        buf.extend_from_slice(&items.to_le_bytes());
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&at_ms.to_le_bytes());
        crc.update(&buf[body_start..]);
        crc.update(payload);
        buf.extend_from_slice(&crc.finalize().to_le_bytes());
        buf.extend_from_slice(payload);
        let Some(seg) = self.segments.back_mut() else {
            return Err(std::io::Error::other("no segment"));
        };
        let offset = seg.bytes;
        if let Err(e) = seg.file.write_all(&buf) {
            // A partial write (disk full) must not stay in front of the next record.
            let _ = seg.file.set_len(offset);
            return Err(e);
        }
        seg.bytes += buf.len() as u64;
        seg.records.push(Loc {
            id,
            offset,
            len: payload.len() as u32,
            items,
            at_ms,
        });
        self.next_id += 1;
        self.dirty = true;
        Ok(id)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            if let Some(s) = self.segments.back() {
                s.file.sync_data()?;
            }
            self.dirty = false;
        }
        Ok(())
    }

    fn write_mark(&mut self) {
        if self.acked_below == self.acked_mark_written {
            return;
        }
        let tmp = self.dir.join("acked.tmp");
        let ok = std::fs::write(&tmp, format!("{}\n", self.acked_below))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join("acked")));
        if ok.is_ok() {
            self.acked_mark_written = self.acked_below;
        }
    }

    fn is_acked(&self, id: u64) -> bool {
        id < self.acked_below || self.acked_above.contains(&id)
    }

    fn ack(&mut self, id: u64) {
        if self.is_acked(id) {
            return;
        }
        self.acked_above.insert(id);
        // Advance the low-water mark over acknowledged ids and ids that no longer exist (dropped).
        loop {
            if self.acked_above.remove(&self.acked_below) {
                self.acked_below += 1;
                continue;
            }
            match self.next_existing(self.acked_below) {
                Some(next) if next > self.acked_below => {
                    self.acked_below = next;
                }
                None if self.acked_below < self.next_id => {
                    self.acked_below = self.next_id;
                }
                _ => break,
            }
        }
        // Delete segments that are wholly acknowledged (never the one taking appends).
        while self.segments.len() > 1 {
            let done = self.segments[0]
                .last_id()
                .is_none_or(|l| l < self.acked_below);
            if !done {
                break;
            }
            if let Some(s) = self.segments.pop_front() {
                let _ = std::fs::remove_file(&s.path);
            }
        }
    }

    /// The smallest existing record id >= `from`.
    fn next_existing(&self, from: u64) -> Option<u64> {
        for s in &self.segments {
            if s.last_id().is_some_and(|l| l >= from) {
                let i = s.records.partition_point(|r| r.id < from);
                return s.records.get(i).map(|r| r.id);
            }
        }
        None
    }

    fn next_unacked(&self, from: u64) -> Option<u64> {
        let mut at = from.max(self.acked_below);
        loop {
            let id = self.next_existing(at)?;
            if !self.acked_above.contains(&id) {
                return Some(id);
            }
            at = id + 1;
        }
    }

    fn locate(&self, id: u64) -> Option<(&Segment, Loc)> {
        for s in &self.segments {
            if s.first_id().is_some_and(|f| f <= id) && s.last_id().is_some_and(|l| l >= id) {
                let i = s.records.partition_point(|r| r.id < id);
                return s.records.get(i).filter(|r| r.id == id).map(|r| (s, *r));
            }
        }
        None
    }

    fn read(&self, id: u64) -> std::io::Result<Option<Record>> {
        let Some((seg, loc)) = self.locate(id) else {
            return Ok(None);
        };
        let mut payload = vec![0u8; loc.len as usize];
        seg.file
            .read_exact_at(&mut payload, loc.offset + HEADER as u64)?;
        Ok(Some(Record {
            id,
            items: loc.items,
            spooled_at_ms: loc.at_ms,
            payload,
        }))
    }

    /// Deletes the oldest segments while the class is over its bytes or age budget.
    fn enforce_budget(&mut self, now_ms: i64) {
        let max_age_ms = i64::try_from(self.budget.max_age.as_millis()).unwrap_or(i64::MAX);
        loop {
            let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
            let Some(oldest) = self.segments.front() else {
                return;
            };
            let too_big = total > self.budget.max_bytes;
            let too_old = oldest
                .records
                .last()
                .is_some_and(|r| now_ms.saturating_sub(r.at_ms) > max_age_ms);
            // The segment taking appends goes only when it is alone and over budget by itself.
            if !too_big && (!too_old || self.segments.len() == 1) {
                return;
            }
            if !self.drop_oldest(if too_big { "bytes budget" } else { "age limit" }) {
                return;
            }
        }
    }

    /// Deletes the oldest segment (starting a fresh one first when it is the only one), counting
    /// its unsent records as dropped. False when there was nothing to delete or no fresh segment
    /// could be started.
    fn drop_oldest(&mut self, reason: &str) -> bool {
        if self.segments.is_empty() {
            return false;
        }
        if self.segments.len() == 1 {
            // A segment with nothing in it frees nothing.
            if self.segments.front().is_some_and(|s| s.bytes == 0) {
                return false;
            }
            // Start a fresh segment so the full one can go.
            if self.roll().is_err() {
                return false;
            }
        }
        let Some(s) = self.segments.pop_front() else {
            return false;
        };
        let (mut recs, mut items) = (0u64, 0u64);
        for r in &s.records {
            if !self.is_acked(r.id) {
                recs += 1;
                items += u64::from(r.items);
            }
            self.acked_above.remove(&r.id);
        }
        if let Some(l) = s.last_id() {
            self.acked_below = self.acked_below.max(l + 1);
        }
        let _ = std::fs::remove_file(&s.path);
        if recs > 0 {
            self.dropped_items += items;
            self.dropped_records += recs;
            tracing::warn!(
                class = self.class.as_str(),
                records = recs,
                items,
                reason,
                "spool full: dropped the oldest unsent data"
            );
        }
        true
    }
}

/// ENOSPC (or a quota): no room on the spool's filesystem.
fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || e.raw_os_error() == Some(28)
}

/// Parses the records of one segment's bytes: the good records, where the last good one ends, and
/// (bytes, records) skipped as torn or corrupt.
fn scan(data: &[u8]) -> (Vec<Loc>, u64, (u64, u64)) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut good_end = 0u64;
    let mut skipped = (0u64, 0u64);
    let mut in_bad_run = false;
    while pos < data.len() {
        match parse_at(data, pos) {
            Some(loc) => {
                let end = pos + HEADER + loc.len as usize;
                out.push(loc);
                pos = end;
                good_end = end as u64;
                in_bad_run = false;
            }
            None => {
                if !in_bad_run {
                    skipped.1 += 1;
                    in_bad_run = true;
                }
                // Resume at the next record marker.
                let next = data[pos + 1..]
                    .windows(4)
                    .position(|w| w == MAGIC)
                    .map(|i| pos + 1 + i)
                    .unwrap_or(data.len());
                skipped.0 += (next - pos) as u64;
                pos = next;
            }
        }
    }
    // Ids must rise; a record out of order is corrupt even if its CRC matches (a stale copy).
    let mut last = 0u64;
    out.retain(|r| {
        let ok = r.id > last;
        if ok {
            last = r.id;
        }
        ok
    });
    (out, good_end, skipped)
}

fn parse_at(data: &[u8], pos: usize) -> Option<Loc> {
    let h = data.get(pos..pos + HEADER)?;
    if &h[0..4] != MAGIC {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let len = u32_at(4);
    if len as usize > MAX_RECORD {
        return None;
    }
    let items = u32_at(8);
    let id = u64_at(12);
    let at_ms = u64_at(20) as i64;
    let crc = u32_at(28);
    let payload = data.get(pos + HEADER..pos + HEADER + len as usize)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[8..28]);
    hasher.update(payload);
    (hasher.finalize() == crc).then_some(Loc {
        id,
        offset: pos as u64,
        len,
        items,
        at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_bytes: u64, segment_bytes: u64) -> Budget {
        Budget {
            max_bytes,
            max_age: Duration::from_secs(3600),
            segment_bytes,
        }
    }

    fn open(dir: &Path) -> Spool {
        Spool::open(dir, budget(1 << 20, 4096), budget(1 << 20, 4096)).unwrap()
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("{{\"envelope\":{i},\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes()
    }

    #[test]
    fn append_read_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let ids: Vec<u64> = (0..50)
            .map(|i| {
                s.append(Class::Bulk, &payload(i), 10, 1000 + i as i64)
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, (1..=50).collect::<Vec<_>>());
        assert!(
            std::fs::read_dir(dir.path().join("bulk")).unwrap().count() > 2,
            "rolled segments"
        );
        assert_eq!(s.read(Class::Bulk, 7).unwrap().unwrap().payload, payload(6));
        // Out-of-order acknowledgements.
        for id in [2, 1, 3, 5] {
            s.ack(Class::Bulk, id);
        }
        assert_eq!(s.next_unacked(Class::Bulk, 0), Some(4));
        assert_eq!(s.next_unacked(Class::Bulk, 5), Some(6));
        assert_eq!(s.depth(Class::Bulk), (46, 460));
        s.sync().unwrap();
        drop(s);
        let mut s = open(dir.path());
        // The mark says "below 4"; 5 was acknowledged after it and is sent again (at least once).
        assert_eq!(s.next_unacked(Class::Bulk, 0), Some(4));
        assert_eq!(s.depth(Class::Bulk), (47, 470));
        for id in 4..=50 {
            s.ack(Class::Bulk, id);
        }
        assert_eq!(s.next_unacked(Class::Bulk, 0), None);
        let id = s.append(Class::Bulk, b"after", 1, 5000).unwrap();
        assert_eq!(id, 51, "ids keep rising across restarts");
        assert_eq!(
            std::fs::read_dir(dir.path().join("bulk"))
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg"))
                .count(),
            1,
            "acknowledged segments are deleted"
        );
    }

    #[test]
    fn torn_tail_and_garbage_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(
            dir.path(),
            budget(1 << 20, 1 << 20),
            budget(1 << 20, 1 << 20),
        )
        .unwrap();
        for i in 0..10 {
            s.append(Class::Bulk, &payload(i), 1, 1000).unwrap();
        }
        s.sync().unwrap();
        drop(s);
        let seg = dir.path().join("bulk").join(segment_name(1));
        let mut data = std::fs::read(&seg).unwrap();
        let rec = HEADER + payload(0).len();
        // Garble record 3's payload, and tear the last record in half.
        data[2 * rec + HEADER + 5] ^= 0xff;
        data.truncate(data.len() - rec / 2);
        std::fs::write(&seg, &data).unwrap();
        let mut s = Spool::open(
            dir.path(),
            budget(1 << 20, 1 << 20),
            budget(1 << 20, 1 << 20),
        )
        .unwrap();
        let f = s.figures(1000);
        assert_eq!(f.depth, 8, "records 1, 2, 4..=9 survive");
        assert_eq!(f.corrupt_records, 2);
        assert!(f.corrupt_bytes >= rec as u64);
        assert!(s.read(Class::Bulk, 3).unwrap().is_none());
        assert_eq!(s.read(Class::Bulk, 9).unwrap().unwrap().payload, payload(8));
        // Appends continue after the last good record.
        let id = s.append(Class::Bulk, b"next", 1, 2000).unwrap();
        assert_eq!(id, 10);
        s.sync().unwrap();
        drop(s);
        let s = Spool::open(
            dir.path(),
            budget(1 << 20, 1 << 20),
            budget(1 << 20, 1 << 20),
        )
        .unwrap();
        assert_eq!(s.read(Class::Bulk, 10).unwrap().unwrap().payload, b"next");
        assert_eq!(
            s.figures(2000).corrupt_records,
            1,
            "only the garbled record remains"
        );
    }

    #[test]
    fn budgets_drop_oldest_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let seg = 4 * (HEADER + payload(0).len()) as u64;
        let mut s =
            Spool::open(dir.path(), budget(1 << 20, 1 << 20), budget(3 * seg, seg)).unwrap();
        for i in 0..40 {
            s.append(Class::Bulk, &payload(i), 5, 1000).unwrap();
        }
        let f = s.figures(1000);
        assert!(f.bytes <= 3 * seg + seg, "{f:?}");
        assert!(f.dropped_items >= 5 * 20, "{f:?}");
        assert_eq!(
            f.depth * 5 + f.dropped_items,
            200,
            "every item is either held or counted"
        );
        // The oldest left is the first of a kept segment; reading from 0 starts there.
        let first = s.next_unacked(Class::Bulk, 0).unwrap();
        assert!(first > 1);
        assert_eq!(
            s.read(Class::Bulk, first).unwrap().unwrap().payload,
            payload(first - 1)
        );
        // Events are untouched by the bulk budget; age drops them.
        s.append(Class::Event, b"door", 1, 1000).unwrap();
        s.append(Class::Event, b"door2", 1, 1000 + 7_200_000)
            .unwrap();
        s.append(Class::Event, b"door3", 1, 1000 + 7_200_000)
            .unwrap();
        assert_eq!(
            s.depth(Class::Event).0,
            3,
            "one segment: the age limit waits for a roll"
        );
    }
}
