//! The gateway's evidence store: camera images kept on the SD card, named by their SHA-256, and
//! uploaded to the hub with retries.
//!
//! ```text
//! <dir>/pending/<sha256>.jpg   written (temp file, fsync, rename) before the event is published
//! <dir>/sent/<sha256>.jpg      moved here once the hub has stored it (and verified the hash)
//! <dir>/tmp/                   half-written files; emptied at start
//! ```
//! The store is bounded in bytes. When an image does not fit, images already uploaded are deleted
//! first (the hub has them), then the oldest not yet uploaded (counted as dropped, and logged).
//!
//! The hub accepts an upload only for an image that a stored event of this gateway references, so an
//! upload can arrive "too early" (the event is still in the MQTT pipeline): the hub answers 409 and
//! the image is retried later without holding up the others.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use protocol::{EvidenceRef, EvidenceStats, GatewayId};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn extension(media_type: &str) -> Option<&'static str> {
    match media_type {
        "image/jpeg" => Some("jpg"),
        "image/png" => Some("png"),
        _ => None,
    }
}

fn media_type(ext: &str) -> Option<&'static str> {
    match ext {
        "jpg" => Some("image/jpeg"),
        "png" => Some("image/png"),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Entry {
    media_type: &'static str,
    bytes: u64,
    pending: bool,
    /// Age order (insertion, or file time at start).
    order: u64,
    /// Not offered for upload before this (after the hub answered "not yet").
    not_before: Option<Instant>,
    /// Consecutive "not yet" answers, for the per-image backoff.
    deferrals: u32,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    by_age: BTreeMap<u64, String>,
    next_order: u64,
    stored_bytes: u64,
    pending_bytes: u64,
    pending: u64,
}

/// The bounded, content-addressed image store.
#[derive(Debug)]
pub struct EvidenceStore {
    dir: PathBuf,
    max_bytes: u64,
    /// A new image is first offered for upload this long after it was kept, so that its event (which
    /// goes by MQTT, batched) usually reaches the hub first.
    first_upload_after: Duration,
    index: Mutex<Index>,
    /// Woken when an image is added.
    pub added: Notify,
    uploaded: AtomicU64,
    dropped: AtomicU64,
    corrupt: AtomicU64,
}

/// An image waiting for upload.
#[derive(Debug, Clone)]
pub struct PendingImage {
    pub sha256: String,
    pub media_type: &'static str,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image of {bytes} bytes is larger than the whole evidence store ({max} bytes)")]
    TooLarge { bytes: u64, max: u64 },
    #[error("media type {0} is not kept as evidence")]
    MediaType(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_owned(),
        source,
    }
}

impl EvidenceStore {
    /// Opens (creating) the store at `dir`, indexing what an earlier run left.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        first_upload_after: Duration,
    ) -> Result<EvidenceStore, EvidenceError> {
        for sub in ["pending", "sent", "tmp"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let tmp = dir.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let mut found = Vec::new();
        for (sub, pending) in [("pending", true), ("sent", false)] {
            let d = dir.join(sub);
            for e in std::fs::read_dir(&d).map_err(io(&d))?.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                let parsed = name
                    .split_once('.')
                    .filter(|(sha, _)| {
                        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())
                    })
                    .and_then(|(sha, ext)| Some((sha.to_owned(), media_type(ext)?)));
                let Some((sha, mt)) = parsed else {
                    tracing::warn!(file = %path.display(), "not an evidence file; left alone");
                    continue;
                };
                let Ok(meta) = e.metadata() else { continue };
                let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((mtime, sha, mt, meta.len(), pending));
            }
        }
        found.sort_by_key(|f| f.0);
        let mut index = Index::default();
        for (_, sha, mt, bytes, pending) in found {
            index.insert(sha, mt, bytes, pending);
        }
        let store = EvidenceStore {
            dir: dir.to_owned(),
            max_bytes,
            first_upload_after,
            index: Mutex::new(index),
            added: Notify::new(),
            uploaded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        };
        let s = store.stats();
        tracing::info!(dir = %dir.display(), pending = s.pending, stored_bytes = s.stored_bytes, "evidence store open");
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, sha: &str, e: &Entry) -> PathBuf {
        let sub = if e.pending { "pending" } else { "sent" };
        let ext = extension(e.media_type).unwrap_or("bin");
        self.dir.join(sub).join(format!("{sha}.{ext}"))
    }

    /// Keeps `bytes` (durably: synced to disk before this returns) and returns its reference. An
    /// image already held is not written again.
    pub fn put(&self, bytes: &[u8], media_type: &str) -> Result<EvidenceRef, EvidenceError> {
        let ext =
            extension(media_type).ok_or_else(|| EvidenceError::MediaType(media_type.into()))?;
        let mt = self::media_type(ext).unwrap_or("image/jpeg");
        let len = bytes.len() as u64;
        if len > self.max_bytes {
            return Err(EvidenceError::TooLarge {
                bytes: len,
                max: self.max_bytes,
            });
        }
        let sha = sha256_hex(bytes);
        let reference = EvidenceRef {
            sha256: sha.clone(),
            media_type: mt.into(),
            bytes: len,
        };
        let mut index = self.lock();
        if index.entries.contains_key(&sha) {
            return Ok(reference);
        }
        self.make_room(&mut index, len);
        let tmp = self.dir.join("tmp").join(format!("{sha}.{ext}"));
        let dest = self.dir.join("pending").join(format!("{sha}.{ext}"));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        sync_dir(&self.dir.join("pending"));
        let not_before = Instant::now() + self.first_upload_after;
        index.insert(sha.clone(), mt, len, true);
        if let Some(e) = index.entries.get_mut(&sha) {
            e.not_before = Some(not_before);
        }
        drop(index);
        self.added.notify_one();
        Ok(reference)
    }

    /// Deletes old images until `incoming` more bytes fit: uploaded ones first, then the oldest
    /// pending ones (dropped, counted).
    fn make_room(&self, index: &mut Index, incoming: u64) {
        while index.stored_bytes + incoming > self.max_bytes {
            let victim = index
                .by_age
                .values()
                .find(|sha| index.entries.get(*sha).is_some_and(|e| !e.pending))
                .or_else(|| index.by_age.values().next())
                .cloned();
            let Some(sha) = victim else { break };
            let Some(e) = index.entries.get(&sha).cloned() else {
                break;
            };
            let path = self.path_of(&sha, &e);
            if let Err(err) = std::fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(file = %path.display(), error = %err, "cannot delete evidence to make room");
                break;
            }
            if e.pending {
                self.dropped.fetch_add(1, Relaxed);
                tracing::warn!(sha256 = %sha, "evidence store full: dropped an image never uploaded");
            }
            index.remove(&sha);
        }
    }

    /// The oldest image due for upload, or how long until one is due (`Err(None)`: none pending).
    pub fn next_pending(&self) -> Result<PendingImage, Option<Duration>> {
        let index = self.lock();
        let now = Instant::now();
        let mut soonest: Option<Duration> = None;
        for sha in index.by_age.values() {
            let Some(e) = index.entries.get(sha) else {
                continue;
            };
            if !e.pending {
                continue;
            }
            match e.not_before {
                Some(t) if t > now => {
                    let wait = t - now;
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
                _ => {
                    return Ok(PendingImage {
                        sha256: sha.clone(),
                        media_type: e.media_type,
                        path: self.path_of(sha, e),
                    });
                }
            }
        }
        Err(soonest)
    }

    /// The hub has the image: move it to `sent/`.
    pub fn mark_sent(&self, sha: &str) {
        let mut index = self.lock();
        let Some(e) = index.entries.get(sha).cloned() else {
            return;
        };
        if !e.pending {
            return;
        }
        let from = self.path_of(sha, &e);
        let sent = Entry {
            pending: false,
            ..e.clone()
        };
        let to = self.path_of(sha, &sent);
        if let Err(err) = std::fs::rename(&from, &to) {
            tracing::error!(file = %from.display(), error = %err, "cannot move uploaded evidence");
            return;
        }
        index.set_pending(sha, false);
        self.uploaded.fetch_add(1, Relaxed);
    }

    /// The hub does not want the image yet (its event has not arrived): try again later, backing off
    /// per image from 2 s to 2 min.
    pub fn defer(&self, sha: &str) {
        let mut index = self.lock();
        if let Some(e) = index.entries.get_mut(sha) {
            e.deferrals = e.deferrals.saturating_add(1);
            let secs = (1u64 << e.deferrals.min(7)).min(120);
            e.not_before = Some(Instant::now() + Duration::from_secs(secs));
        }
    }

    /// The file does not hash to its name (SD card corruption): delete it, count it.
    pub fn discard_corrupt(&self, sha: &str) {
        let mut index = self.lock();
        if let Some(e) = index.entries.get(sha).cloned() {
            let _ = std::fs::remove_file(self.path_of(sha, &e));
            index.remove(sha);
            self.corrupt.fetch_add(1, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn stats(&self) -> EvidenceStats {
        let index = self.lock();
        EvidenceStats {
            pending: index.pending,
            pending_bytes: index.pending_bytes,
            stored_bytes: index.stored_bytes,
            uploaded: self.uploaded.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            rejected_requests: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the image is held now, if it is.
    pub fn path(&self, sha: &str) -> Option<PathBuf> {
        let index = self.lock();
        index.entries.get(sha).map(|e| self.path_of(sha, e))
    }
}

impl Index {
    fn insert(&mut self, sha: String, media_type: &'static str, bytes: u64, pending: bool) {
        if self.entries.contains_key(&sha) {
            return;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.by_age.insert(order, sha.clone());
        self.stored_bytes += bytes;
        if pending {
            self.pending += 1;
            self.pending_bytes += bytes;
        }
        self.entries.insert(
            sha,
            Entry {
                media_type,
                bytes,
                pending,
                order,
                not_before: None,
                deferrals: 0,
            },
        );
    }

    fn remove(&mut self, sha: &str) {
        if let Some(e) = self.entries.remove(sha) {
            self.by_age.remove(&e.order);
            self.stored_bytes -= e.bytes;
            if e.pending {
                self.pending -= 1;
                self.pending_bytes -= e.bytes;
            }
        }
    }

    fn set_pending(&mut self, sha: &str, pending: bool) {
        if let Some(e) = self.entries.get_mut(sha)
            && e.pending != pending
        {
            e.pending = pending;
            if pending {
                self.pending += 1;
                self.pending_bytes += e.bytes;
            } else {
                self.pending -= 1;
                self.pending_bytes -= e.bytes;
            }
        }
    }
}

fn sync_dir(dir: &Path) {
    // A rename is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// What the hub said to one upload.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Stored,
    NotYet(String),
    HashMismatch(String),
    /// Refused for a reason a retry will not fix; retried slowly all the same (the operator may
    /// fix the hub), and logged.
    Refused(u16, String),
}

/// Uploads pending images to `<hub_url>/api/v1/evidence/<sha256>` until `shutdown`.
pub async fn upload(
    store: std::sync::Arc<EvidenceStore>,
    hub_url: String,
    gateway: GatewayId,
    key: Option<protocol::auth::Key>,
    shutdown: CancellationToken,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut failures = 0u32;
    loop {
        let next = store.next_pending();
        let image = match next {
            Ok(image) => image,
            Err(wait) => {
                let wait = wait.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = store.added.notified() => continue,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let url = format!("{hub_url}/api/v1/evidence/{}", image.sha256);
        let (agent2, gw, img, key2) = (agent.clone(), gateway.clone(), image.clone(), key.clone());
        let result = tokio::task::spawn_blocking(move || {
            upload_one(&agent2, &url, gw.as_str(), key2.as_ref(), &img)
        })
        .await;
        let outcome = match result {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                failures += 1;
                let wait = protocol::reconnect::delay(failures, fastrand::f64());
                tracing::warn!(error = %e, sha256 = %image.sha256, "evidence upload failed; retrying in {wait:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            Err(_) => return,
        };
        failures = 0;
        match outcome {
            Outcome::Stored => {
                tracing::debug!(sha256 = %image.sha256, "evidence uploaded");
                store.mark_sent(&image.sha256);
            }
            Outcome::NotYet(why) => {
                tracing::debug!(sha256 = %image.sha256, %why, "hub does not take the image yet");
                store.defer(&image.sha256);
            }
            Outcome::HashMismatch(why) => {
                // Check our copy: a file that no longer matches its name is corrupt here.
                let path = image.path.clone();
                let sha = image.sha256.clone();
                let ours = tokio::task::spawn_blocking(move || {
                    std::fs::read(&path).map(|b| sha256_hex(&b) == sha)
                })
                .await;
                if matches!(ours, Ok(Ok(false)) | Ok(Err(_))) {
                    tracing::error!(sha256 = %image.sha256, "evidence file is corrupt on the gateway; discarded");
                    store.discard_corrupt(&image.sha256);
                } else {
                    tracing::warn!(sha256 = %image.sha256, %why, "hub saw a different hash (damaged in transit?); retrying");
                    store.defer(&image.sha256);
                }
            }
            Outcome::Refused(status, why) => {
                tracing::error!(sha256 = %image.sha256, status, %why, "hub refused the image");
                store.defer(&image.sha256);
            }
        }
    }
}

fn upload_one(
    agent: &ureq::Agent,
    url: &str,
    gateway: &str,
    key: Option<&protocol::auth::Key>,
    image: &PendingImage,
) -> anyhow::Result<Outcome> {
    let bytes = std::fs::read(&image.path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", image.path.display()))?;
    let mut req = agent
        .put(url)
        .header("content-type", image.media_type)
        .header("x-gateway", gateway);
    if let Some(k) = key {
        req = req.header("x-gateway-key", k.id.as_str()).header(
            "x-gateway-mac",
            protocol::auth::evidence_mac(k, gateway, &image.sha256),
        );
    }
    let mut resp = req.send(&bytes[..])?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(16 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Ok(match status {
        200..=299 => Outcome::Stored,
        409 => Outcome::NotYet(body),
        422 => Outcome::HashMismatch(body),
        500..=599 => anyhow::bail!("hub answered {status}: {body}"),
        s => Outcome::Refused(s, body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(n: usize, fill: u8) -> Vec<u8> {
        let mut v = vec![0xff, 0xd8, 0xff, 0xe0];
        v.resize(n, fill);
        v
    }

    #[test]
    fn put_is_content_addressed_durable_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(dir.path(), 1 << 20, Duration::ZERO).unwrap();
        let a = store.put(&jpeg(1000, 1), "image/jpeg").unwrap();
        let again = store.put(&jpeg(1000, 1), "image/jpeg").unwrap();
        assert_eq!(a, again);
        assert_eq!(a.sha256, sha256_hex(&jpeg(1000, 1)));
        let path = dir.path().join("pending").join(format!("{}.jpg", a.sha256));
        assert_eq!(std::fs::read(&path).unwrap(), jpeg(1000, 1));
        assert_eq!(store.stats().pending, 1);
        drop(store);
        let store = EvidenceStore::open(dir.path(), 1 << 20, Duration::ZERO).unwrap();
        let s = store.stats();
        assert_eq!(
            (s.pending, s.pending_bytes, s.stored_bytes),
            (1, 1000, 1000)
        );
        assert_eq!(store.next_pending().unwrap().sha256, a.sha256);
        store.mark_sent(&a.sha256);
        assert!(store.next_pending().is_err());
        assert!(
            dir.path()
                .join("sent")
                .join(format!("{}.jpg", a.sha256))
                .exists()
        );
    }

    #[test]
    fn full_store_deletes_uploaded_first_then_oldest_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(dir.path(), 3000, Duration::ZERO).unwrap();
        let a = store.put(&jpeg(1000, 1), "image/jpeg").unwrap();
        let b = store.put(&jpeg(1000, 2), "image/jpeg").unwrap();
        let c = store.put(&jpeg(1000, 3), "image/jpeg").unwrap();
        store.mark_sent(&b.sha256);
        // Room for d: b (uploaded) goes, although a is older.
        let d = store.put(&jpeg(1000, 4), "image/jpeg").unwrap();
        assert!(store.path(&b.sha256).is_none());
        assert!(store.path(&a.sha256).is_some());
        assert_eq!(store.stats().dropped, 0);
        // Room for e: nothing uploaded left, so the oldest pending (a) is dropped and counted.
        let _e = store.put(&jpeg(1000, 5), "image/jpeg").unwrap();
        assert!(store.path(&a.sha256).is_none());
        assert!(store.path(&c.sha256).is_some() && store.path(&d.sha256).is_some());
        let s = store.stats();
        assert_eq!((s.dropped, s.stored_bytes, s.pending), (1, 3000, 3));
        assert!(matches!(
            store.put(&jpeg(4000, 6), "image/jpeg"),
            Err(EvidenceError::TooLarge { .. })
        ));
    }

    #[test]
    fn deferred_images_let_others_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(dir.path(), 1 << 20, Duration::ZERO).unwrap();
        let a = store.put(&jpeg(100, 1), "image/jpeg").unwrap();
        assert!(matches!(
            store.put(&jpeg(100, 2), "image/gif"),
            Err(EvidenceError::MediaType(_))
        ));
        let b = store.put(&jpeg(100, 2), "image/jpeg").unwrap();
        store.defer(&a.sha256);
        assert_eq!(store.next_pending().unwrap().sha256, b.sha256);
        store.defer(&b.sha256);
        match store.next_pending() {
            Err(Some(wait)) => assert!(wait <= Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stray_and_half_written_files_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("pending")).unwrap();
        std::fs::write(dir.path().join("tmp").join("x.jpg"), b"half").unwrap();
        std::fs::write(dir.path().join("pending").join("notes.txt"), b"hi").unwrap();
        let store = EvidenceStore::open(dir.path(), 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(store.stats().pending, 0);
        assert!(!dir.path().join("tmp").join("x.jpg").exists());
        assert!(dir.path().join("pending").join("notes.txt").exists());
    }
}
