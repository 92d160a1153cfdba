//! Snapshots in JetStream: an object store bucket holds the snapshot files, a key-value bucket
//! holds the pointer to the current one and the lease that keeps nodes from uploading at once.
//!
//! Downloads do not use the crate's `ObjectStore::get`, which reads ahead without bound: chunks
//! are pulled a few at a time from an ephemeral consumer starting at a given stream sequence, so
//! memory stays flat and a broken download resumes at the first chunk it does not have.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nats::jetstream::{
    AckPolicy, BatchOptions, ConsumerConfig, DeliverPolicy, PullSubscribeOptions, ReplayPolicy,
};
use nats::kv::Operation;
use ring::digest::{Context, SHA256};

use super::{Transport, API_TIMEOUT};
use crate::config::Config;

/// Key of the pointer to the current snapshot.
const LATEST_KEY: &str = "latest";
/// Key of the upload lease.
const LEASE_KEY: &str = "lease";
/// Chunks asked for in one pull request: the most a download holds in memory (128 KiB each).
const PULL_CHUNKS: usize = 4;
/// A chunk not seen this long after it was asked for: the pull is started again.
const CHUNK_WAIT: Duration = Duration::from_secs(5);
/// The server removes a download's ephemeral consumer idle this long (a node killed mid
/// download leaves none behind); a resume creates a new one at the next chunk.
const DOWNLOAD_CONSUMER_IDLE: Duration = Duration::from_secs(30);
/// Verified progress is written to the state file (with an fsync) this often, in chunks.
const STATE_EVERY: u64 = 8;

/// The current snapshot, as the pointer in the key-value bucket names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub object: String,
    /// Stream sequence the snapshot reflects: replay continues after it.
    pub seq: u64,
    pub node: u64,
    pub created_ms: u64,
    pub size: u64,
    pub chunks: u64,
    pub digest: String,
    /// Object-store id of this version of the object (its chunk subject).
    pub nuid: String,
    /// The snapshot before this one, kept until the next upload so a download in progress
    /// is not cut away under it.
    pub previous: Option<String>,
}

impl Pointer {
    fn encode(&self) -> String {
        format!(
            "v=1;object={};seq={};node={};created_ms={};size={};chunks={};digest={};nuid={};previous={}",
            self.object,
            self.seq,
            self.node,
            self.created_ms,
            self.size,
            self.chunks,
            self.digest,
            self.nuid,
            self.previous.as_deref().unwrap_or("")
        )
    }

    fn decode(s: &str) -> Option<Pointer> {
        let field = |k: &str| {
            s.split(';')
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
        if field("v") != Some("1") {
            return None;
        }
        Some(Pointer {
            object: field("object")?.to_string(),
            seq: num("seq")?,
            node: num("node")?,
            created_ms: num("created_ms")?,
            size: num("size")?,
            chunks: num("chunks")?,
            digest: field("digest")?.to_string(),
            nuid: field("nuid")?.to_string(),
            previous: field("previous")
                .filter(|p| !p.is_empty())
                .map(str::to_string),
        })
    }
}

/// What a download did, for the log and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Chunk bytes received over the network by this call (resumed bytes are not fetched again).
    pub bytes_fetched: u64,
    /// Bytes already on disk from an earlier, interrupted download.
    pub resumed_bytes: u64,
    /// Times the pull was started again after the link failed.
    pub restarts: u64,
}

/// The snapshot buckets of one replication group (named after its stream).
pub struct SnapStore<'a> {
    t: &'a Transport,
    objects: nats::object_store::ObjectStore,
    kv: nats::kv::Store,
    bucket: String,
}

fn nats_err(what: &str) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Transport {
    /// Opens the snapshot buckets if they exist (nothing is created by looking).
    pub fn existing_snap_store(&self, cfg: &Config) -> io::Result<Option<SnapStore<'_>>> {
        let bucket = cfg.snapshot_bucket();
        match self.js.stream_info(format!("OBJ_{bucket}")) {
            Ok(_) => self.snap_store(cfg).map(Some),
            Err(e) if e.to_string().contains("not found") => Ok(None),
            Err(e) => Err(nats_err(&format!("look up object store {bucket}"))(e)),
        }
    }

    /// Opens (creating if needed) the snapshot buckets.
    pub fn snap_store(&self, cfg: &Config) -> io::Result<SnapStore<'_>> {
        let bucket = cfg.snapshot_bucket();
        let replicas = cfg.snapshot_replicas();
        let objects = match self.js.object_store(&bucket) {
            Ok(o) => o,
            Err(_) => self
                .js
                .create_object_store(&nats::object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("HarmonyLite snapshots".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .map_err(nats_err(&format!("create object store {bucket}")))?,
        };
        let kv = match self.js.key_value(&bucket) {
            Ok(k) => k,
            Err(_) => self
                .js
                .create_key_value(&nats::kv::Config {
                    bucket: bucket.clone(),
                    description: "HarmonyLite snapshot pointer and upload lease".into(),
                    history: 1,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .map_err(nats_err(&format!("create key-value bucket {bucket}")))?,
        };
        Ok(SnapStore {
            t: self,
            objects,
            kv,
            bucket,
        })
    }
}

impl SnapStore<'_> {
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The current snapshot, if any.
    pub fn latest(&self) -> io::Result<Option<Pointer>> {
        Ok(self.latest_entry()?.map(|(p, _)| p))
    }

    fn latest_entry(&self) -> io::Result<Option<(Pointer, u64)>> {
        let Some(e) = self
            .kv
            .entry(LATEST_KEY)
            .map_err(nats_err("read the snapshot pointer"))?
        else {
            return Ok(None);
        };
        if e.operation != Operation::Put {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&e.value);
        match Pointer::decode(&text) {
            Some(p) => Ok(Some((p, e.revision))),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable snapshot pointer {text:?}"),
            )),
        }
    }

    /// Takes the upload lease for `ttl` unless another node holds it. Compare-and-set on the
    /// lease key: of two nodes trying at once, one wins.
    pub fn try_lease(&self, node: u64, ttl: Duration) -> io::Result<bool> {
        let now = crate::hlc::now_ms();
        let value = format!("node={node};until={}", now + ttl.as_millis() as u64);
        let current = self
            .kv
            .entry(LEASE_KEY)
            .map_err(nats_err("read the snapshot lease"))?;
        let result = match current {
            None => self.kv_write(|kv| kv.create(LEASE_KEY, &value)),
            Some(e) => {
                let text = String::from_utf8_lossy(&e.value).to_string();
                let field = |k: &str| {
                    text.split(';')
                        .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                let held = e.operation == Operation::Put
                    && field("until").is_some_and(|u| u > now)
                    && field("node") != Some(node);
                if held {
                    return Ok(false);
                }
                self.kv_write(|kv| kv.update(LEASE_KEY, &value, e.revision))
            }
        };
        match result {
            Ok(_) => Ok(true),
            // the bucket does not answer writes at all: not a lost race
            Err(e)
                if crate::transport::no_responders(&e) || e.kind() == io::ErrorKind::TimedOut =>
            {
                Err(nats_err("take the snapshot upload lease")(e))
            }
            // a failed compare-and-set means another node took it first
            Err(_) => Ok(false),
        }
    }

    /// A write to the snapshot key-value bucket, through the hub's domain when a leaf node
    /// is in the way (see [`Transport::kv_write`]).
    fn kv_write<T>(&self, op: impl Fn(&nats::kv::Store) -> io::Result<T>) -> io::Result<T> {
        self.t
            .kv_write(&self.kv, &format!("KV_{}", self.bucket), op)
    }

    /// Gives the lease back (best effort: it expires anyway).
    pub fn release(&self, node: u64) {
        if let Ok(Some(e)) = self.kv.entry(LEASE_KEY) {
            if String::from_utf8_lossy(&e.value).starts_with(&format!("node={node};")) {
                let _ = self.kv_write(|kv| {
                    kv.update(LEASE_KEY, format!("node={node};until=0"), e.revision)
                });
            }
        }
    }

    /// Uploads the snapshot file (read in chunks from disk), makes it current and deletes the
    /// one before the previous.
    pub fn upload(&self, file: &Path, seq: u64, node: u64) -> io::Result<Pointer> {
        let object = format!("snap-{seq}-{node}");
        let mut f = File::open(file).map_err(nats_err(&format!("open {}", file.display())))?;
        let info = self
            .objects
            .put(object.as_str(), &mut f)
            .map_err(nats_err(&format!("upload snapshot {object}")))?;
        let old = self.latest_entry().ok().flatten();
        let pointer = Pointer {
            object: object.clone(),
            seq,
            node,
            created_ms: crate::hlc::now_ms(),
            size: info.size as u64,
            chunks: info.chunks as u64,
            digest: info.digest.clone(),
            nuid: info.nuid.clone(),
            previous: old
                .as_ref()
                .map(|(p, _)| p.object.clone())
                .filter(|o| o != &object),
        };
        let stored = match &old {
            Some((_, rev)) => self.kv_write(|kv| kv.update(LATEST_KEY, pointer.encode(), *rev)),
            None => self.kv_write(|kv| kv.create(LATEST_KEY, pointer.encode())),
        };
        if let Err(e) = stored {
            // someone else published a pointer meanwhile: theirs stays, ours goes
            let _ = self.objects.delete(&object);
            return Err(io::Error::other(format!(
                "snapshot pointer changed during the upload: {e}"
            )));
        }
        if let Some(gone) = old.and_then(|(p, _)| p.previous).filter(|o| o != &object) {
            if let Err(e) = self.objects.delete(&gone) {
                log::debug!("cannot delete old snapshot {gone}: {e}");
            }
        }
        Ok(pointer)
    }

    /// Downloads `p` into `part` (a file next to the database), resuming from `part` and its
    /// state file when they hold the start of the same object, and verifies size, chunk count
    /// and SHA-256. Returns when the file is complete and verified; a mismatch deletes it.
    pub fn download(
        &self,
        p: &Pointer,
        part: &Path,
        stopped: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> io::Result<Fetched> {
        let state_file = state_path(part);
        let mut st =
            DownloadState::load(&state_file, part, p).unwrap_or_else(|| DownloadState::fresh(p));
        let mut out = Fetched {
            resumed_bytes: st.bytes,
            ..Default::default()
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(part)?;
        file.set_len(st.bytes)?;
        let mut digest = Context::new(&SHA256);
        hash_prefix(&mut file, st.bytes, &mut digest)?;
        file.seek(SeekFrom::Start(st.bytes))?;
        if st.bytes > 0 {
            log::info!(
                "snapshot {}: resuming the download at chunk {} of {} ({} bytes on disk)",
                p.object,
                st.chunks,
                p.chunks,
                st.bytes
            );
        }
        let stream = format!("OBJ_{}", self.bucket);
        let subject = format!("$O.{}.C.{}", self.bucket, p.nuid);
        let mut retry = crate::retry::SNAPSHOT_DOWNLOAD.backoff();
        while st.chunks < p.chunks {
            if stopped() {
                st.save(&state_file, &file)?;
                return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
            }
            let mut sink = Sink {
                file: &mut file,
                digest: &mut digest,
                state: &state_file,
            };
            match self.pull_chunks(
                &stream, &subject, p, &mut st, &mut sink, &mut out, stopped, progress,
            ) {
                Ok(()) => retry.reset(),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    drop(file);
                    discard(part);
                    return Err(e);
                }
                Err(e) => {
                    st.save(&state_file, &file)?;
                    out.restarts += 1;
                    let wait = retry.fail();
                    log::warn!("snapshot {}: download interrupted at chunk {} of {}: {e}; resuming in {wait:?}", p.object, st.chunks, p.chunks);
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !stopped() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        file.sync_all()?;
        let got = format!(
            "SHA-256={}",
            base64::encode_config(digest.finish(), base64::URL_SAFE)
        );
        if st.bytes != p.size || got != p.digest {
            drop(file);
            discard(part);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} is corrupt: got {} bytes with {got}, expected {} bytes with {}",
                    p.object, st.bytes, p.size, p.digest
                ),
            ));
        }
        let _ = std::fs::remove_file(&state_file);
        Ok(out)
    }

    /// Pulls chunks from `st.next_seq` on until the object is complete or the link fails.
    #[allow(clippy::too_many_arguments)]
    fn pull_chunks(
        &self,
        stream: &str,
        subject: &str,
        p: &Pointer,
        st: &mut DownloadState,
        sink: &mut Sink<'_>,
        out: &mut Fetched,
        stopped: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> io::Result<()> {
        self.t.reconnected.store(false, Ordering::Relaxed);
        let sub = self
            .t
            .js
            .pull_subscribe_with_options(
                subject,
                &PullSubscribeOptions::new()
                    .bind_stream(stream.to_string())
                    .consumer_config(ConsumerConfig {
                        deliver_policy: DeliverPolicy::ByStartSeq,
                        opt_start_seq: Some(st.next_seq.max(1)),
                        ack_policy: AckPolicy::All,
                        filter_subject: subject.to_string(),
                        replay_policy: ReplayPolicy::Instant,
                        inactive_threshold: DOWNLOAD_CONSUMER_IDLE,
                        ..Default::default()
                    }),
            )
            .map_err(nats_err("start the snapshot download"))?;
        while st.chunks < p.chunks && !stopped() {
            sub.request_batch(BatchOptions {
                batch: PULL_CHUNKS,
                expires: Some(CHUNK_WAIT.as_nanos() as usize),
                no_wait: false,
            })?;
            let mut got = 0;
            while got < PULL_CHUNKS && st.chunks < p.chunks {
                let msg = self.next_chunk(&sub)?;
                let Some(info) = msg.jetstream_message_info() else {
                    // a status message: the request expired or was cut short
                    if msg.data.is_empty() {
                        break;
                    }
                    continue;
                };
                if info.stream_seq < st.next_seq {
                    continue; // a redelivery of a chunk we have
                }
                if st.bytes + msg.data.len() as u64 > p.size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "snapshot {} is corrupt: chunk {} goes past the object's size {}",
                            p.object, st.chunks, p.size
                        ),
                    ));
                }
                sink.file.write_all(&msg.data)?;
                sink.digest.update(&msg.data);
                st.bytes += msg.data.len() as u64;
                st.chunks += 1;
                st.next_seq = info.stream_seq + 1;
                out.bytes_fetched += msg.data.len() as u64;
                got += 1;
                if st.chunks.is_multiple_of(STATE_EVERY) {
                    st.save(sink.state, sink.file).ok();
                }
                progress(st.bytes, p.size);
                if got == PULL_CHUNKS || st.chunks == p.chunks {
                    let _ = msg.ack();
                }
            }
        }
        Ok(())
    }
}

impl SnapStore<'_> {
    /// Waits for the next message of a pull, in short slices so that a reconnect (which loses
    /// the pull request on the server) restarts the pull at once rather than after a timeout.
    fn next_chunk(&self, sub: &nats::jetstream::PullSubscription) -> io::Result<nats::Message> {
        let deadline = Instant::now() + CHUNK_WAIT + API_TIMEOUT;
        loop {
            if self.t.reconnected.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the link was re-established; pulling again",
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no chunk arrived in time",
                ));
            }
            match sub.next_timeout(left.min(Duration::from_millis(200))) {
                Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                other => return other,
            }
        }
    }
}

/// The resume state of a download, kept next to the partial file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DownloadState {
    nuid: String,
    digest: String,
    /// Verified bytes and chunks in the partial file.
    bytes: u64,
    chunks: u64,
    /// Stream sequence to pull from next.
    next_seq: u64,
}

/// Where downloaded chunks go.
struct Sink<'a> {
    file: &'a mut File,
    digest: &'a mut Context,
    state: &'a Path,
}

impl DownloadState {
    fn fresh(p: &Pointer) -> DownloadState {
        DownloadState {
            nuid: p.nuid.clone(),
            digest: p.digest.clone(),
            bytes: 0,
            chunks: 0,
            next_seq: 1,
        }
    }

    /// The saved state, if it belongs to the same object and the partial file holds its bytes.
    fn load(state: &Path, part: &Path, p: &Pointer) -> Option<DownloadState> {
        let text = std::fs::read_to_string(state).ok()?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        let num = |k: &str| field(k).and_then(|v| v.trim().parse::<u64>().ok());
        let st = DownloadState {
            nuid: field("nuid")?.to_string(),
            digest: field("digest")?.to_string(),
            bytes: num("bytes")?,
            chunks: num("chunks")?,
            next_seq: num("next_seq")?,
        };
        let on_disk = std::fs::metadata(part).ok()?.len();
        (st.nuid == p.nuid && st.digest == p.digest && on_disk >= st.bytes && st.bytes <= p.size)
            .then_some(st)
    }

    /// Makes the partial file durable, then records how much of it is good.
    fn save(&self, state: &Path, file: &File) -> io::Result<()> {
        file.sync_data()?;
        let tmp = state.with_extension("state.tmp");
        std::fs::write(
            &tmp,
            format!(
                "nuid={}\ndigest={}\nbytes={}\nchunks={}\nnext_seq={}\n",
                self.nuid, self.digest, self.bytes, self.chunks, self.next_seq
            ),
        )?;
        std::fs::rename(&tmp, state)
    }
}

/// The state file of a partial download.
pub fn state_path(part: &Path) -> PathBuf {
    let mut s = part.as_os_str().to_os_string();
    s.push(".state");
    PathBuf::from(s)
}

/// The snapshot object (its nuid) a partial download kept for resuming belongs to, from its
/// state file; None when there is no state (nothing to resume).
pub fn download_object(part: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state_path(part)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("nuid="))
        .map(String::from)
}

/// Removes a partial download and its state.
pub fn discard(part: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(state_path(part));
}

/// Feeds the first `len` bytes of `file` to `digest` (a resumed download's verified part).
fn hash_prefix(file: &mut File, len: u64, digest: &mut Context) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "partial snapshot shorter than its state says",
            ));
        }
        digest.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_round_trips() {
        let p = Pointer {
            object: "snap-42-7".into(),
            seq: 42,
            node: 7,
            created_ms: 1_700_000_000_000,
            size: 1 << 20,
            chunks: 8,
            digest: "SHA-256=abc_-=".into(),
            nuid: "NUID123".into(),
            previous: Some("snap-10-3".into()),
        };
        assert_eq!(Pointer::decode(&p.encode()), Some(p.clone()));
        let none = Pointer {
            previous: None,
            ..p
        };
        assert_eq!(Pointer::decode(&none.encode()), Some(none));
        assert_eq!(Pointer::decode("v=2;object=x"), None);
    }
}
