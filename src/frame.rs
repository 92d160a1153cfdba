//! Frames: the postcard-encoded unit on the wire. No I/O here, and no panic on any input.
//!
//! Wire layout: `b"HL"`, a version byte, the postcard encoding of [`Frame`], then a CRC-32 (IEEE,
//! little endian) of everything before it. A frame holds many row changes, bounded in bytes by
//! [`FrameBuilder`]; a change too large for one frame is encoded alone and cut into
//! [`Fragment`]s that the receiver reassembles.
//!
//! A compressed frame ([`compress`], `[replication_log] compress`) sets [`COMPRESSED`] in the
//! version byte, and its body is the length of the postcard encoding (a LEB128 varint, at most
//! [`MAX_BODY`]) followed by that encoding as a raw deflate stream; the CRC-32 covers the bytes
//! sent (magic, version byte, length, deflate stream). Every build since reads both, so a fleet
//! can switch compression one node at a time. A frame that would not shrink is sent raw.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 2] = b"HL";
/// The frame format this build writes. Version 2 added [`Op::Insert`]; version 1 frames (from
/// older builds) are still read, and `[replication_log] frame_version = 1` writes them, for a
/// fleet part of which runs an older build (see the README's upgrade notes).
pub const VERSION: u8 = 2;
/// The oldest frame format this build reads.
pub const OLDEST_VERSION: u8 = 1;
/// The format of [`Frame::Repair`] (`harmonylite verify --repair`), the newest this build
/// reads. Only repair frames are written in it: a build that predates it skips them with
/// "unknown frame version 3 ... upgrade this node", and every other frame stays readable.
pub const REPAIR_VERSION: u8 = 3;
/// Set in the version byte of a frame whose body is compressed (any format version).
pub const COMPRESSED: u8 = 0x80;
/// The largest postcard body a compressed frame may carry, and so the most a frame can make a
/// receiver allocate by decompression (the largest `max_frame_bytes`). Larger encodings (a
/// fragmented row over 64 MiB) are sent raw.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Deflate level: 6 (miniz's default) is measured in BENCHMARKS.md ("Frame compression").
const DEFLATE_LEVEL: u8 = 6;
/// A body over 4 times this is compressed only if its first `PROBE` bytes shrink by a tenth:
/// a large random blob is not deflated in full for nothing.
const PROBE: usize = 256 * 1024;
/// Magic, version and checksum.
const ENVELOPE: usize = 2 + 1 + 4;
/// Upper bound of what a Changes frame adds around its tables and changes: variant tag,
/// origin varint, two sequence lengths.
const CHANGES_OVERHEAD: usize = 1 + 10 + 5 + 5;
/// Upper bound of what a Fragment frame adds around its data.
const FRAGMENT_OVERHEAD: usize = 1 + 10 + 10 + 5 + 5 + 5;

/// One SQLite value, storage class and bits preserved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    /// Text as SQLite stored it (not necessarily valid UTF-8).
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) | (Value::Blob(a), Value::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    /// Bytes held, for batching decisions.
    pub fn weight(&self) -> usize {
        match self {
            Value::Text(b) | Value::Blob(b) => b.len() + 5,
            _ => 9,
        }
    }
}

/// A table as the sender sees it: its name, its columns and which of them form the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableHeader {
    pub name: String,
    pub columns: Vec<String>,
    /// Indices into `columns` of the primary key, in key order.
    pub pk: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Values of every header column, in header order.
    Upsert(Vec<Value>),
    /// Primary-key values, in key order.
    Delete(Vec<Value>),
    /// Like `Upsert`, and the origin had no version of this key when its application wrote
    /// the row: a new row, not a change of one it knew. A receiver already holding the key
    /// from another node has met a primary-key collision (two nodes created the same key).
    /// Frame version 2; a version-1 writer sends it as `Upsert`.
    Insert(Vec<Value>),
}

impl Op {
    /// The row image of an upsert or insert; None for a delete.
    pub fn row(&self) -> Option<&Vec<Value>> {
        match self {
            Op::Upsert(v) | Op::Insert(v) => Some(v),
            Op::Delete(_) => None,
        }
    }

    /// The same change as frame version `version` carries it.
    fn for_version(self, version: u8) -> Op {
        match self {
            Op::Insert(v) if version < 2 => Op::Upsert(v),
            op => op,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Index into the frame's tables.
    pub table: u16,
    /// HLC stamp given by the origin node.
    pub version: u64,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub origin: u64,
    pub tables: Vec<TableHeader>,
    pub changes: Vec<Change>,
}

/// A piece of one encoded frame too large to travel whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fragment {
    pub origin: u64,
    /// Unique per origin: the version of the change it carries.
    pub id: u64,
    pub index: u32,
    pub count: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Changes(Changes),
    Fragment(Fragment),
    /// Rows re-announced by `verify --repair` with the version and origin they hold on the
    /// sender: `changes.origin` is the sender (its subject's node), `origins[i]` the node that
    /// wrote `changes.changes[i]`, so receivers compare on the row's own (version, origin).
    /// Upserts and deletes only, never [`Op::Insert`]: a re-announced row is not a new one.
    Repair(Repair),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    pub changes: Changes,
    pub origins: Vec<u64>,
}

/// On the wire a change carries its version as the difference from the previous change's
/// (zigzag varint): consecutive HLC stamps differ by little, which saves ~6 bytes a row.
#[derive(Serialize, Deserialize)]
struct WireChange {
    table: u16,
    version_delta: i64,
    op: Op,
}

#[derive(Serialize, Deserialize)]
struct WireChanges {
    origin: u64,
    tables: Vec<TableHeader>,
    changes: Vec<WireChange>,
}

#[derive(Serialize, Deserialize)]
enum WireFrame {
    Changes(WireChanges),
    Fragment(Fragment),
    Repair(WireChanges, Vec<u64>),
}

fn delta(prev: u64, version: u64) -> i64 {
    version.wrapping_sub(prev) as i64
}

impl Frame {
    fn to_wire(&self) -> WireFrame {
        match self {
            Frame::Fragment(f) => WireFrame::Fragment(f.clone()),
            Frame::Repair(r) => match Frame::Changes(r.changes.clone()).to_wire() {
                WireFrame::Changes(c) => WireFrame::Repair(c, r.origins.clone()),
                _ => unreachable!("changes encode as changes"),
            },
            Frame::Changes(c) => {
                let mut prev = 0;
                let changes = c
                    .changes
                    .iter()
                    .map(|ch| {
                        let d = delta(prev, ch.version);
                        prev = ch.version;
                        WireChange {
                            table: ch.table,
                            version_delta: d,
                            op: ch.op.clone(),
                        }
                    })
                    .collect();
                WireFrame::Changes(WireChanges {
                    origin: c.origin,
                    tables: c.tables.clone(),
                    changes,
                })
            }
        }
    }

    fn from_wire(w: WireFrame) -> Frame {
        match w {
            WireFrame::Fragment(f) => Frame::Fragment(f),
            WireFrame::Repair(c, origins) => match Frame::from_wire(WireFrame::Changes(c)) {
                Frame::Changes(changes) => Frame::Repair(Repair { changes, origins }),
                _ => unreachable!("changes decode as changes"),
            },
            WireFrame::Changes(c) => {
                let mut prev = 0u64;
                let changes = c
                    .changes
                    .into_iter()
                    .map(|ch| {
                        prev = prev.wrapping_add(ch.version_delta as u64);
                        Change {
                            table: ch.table,
                            version: prev,
                            op: ch.op,
                        }
                    })
                    .collect();
                Frame::Changes(Changes {
                    origin: c.origin,
                    tables: c.tables,
                    changes,
                })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    TooShort(usize),
    BadMagic,
    UnknownVersion(u8),
    Checksum,
    Decode(String),
    TrailingBytes(usize),
    Invalid(&'static str),
    /// A compressed body that does not decompress to the length it declares (at most
    /// [`MAX_BODY`]).
    Decompress(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort(n) => write!(f, "too short ({n} bytes)"),
            FrameError::BadMagic => write!(f, "not a HarmonyLite frame (bad magic)"),
            FrameError::UnknownVersion(v) => write!(
                f,
                "unknown frame version {v} (this build reads {OLDEST_VERSION} to {REPAIR_VERSION}): upgrade this node"
            ),
            FrameError::Checksum => write!(f, "checksum mismatch"),
            FrameError::Decode(e) => write!(f, "does not decode: {e}"),
            FrameError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the frame"),
            FrameError::Invalid(why) => write!(f, "invalid: {why}"),
            FrameError::Decompress(why) => write!(f, "compressed body does not decompress: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Wraps a postcard body in the envelope.
fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn envelope_start(capacity: usize, version: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + ENVELOPE);
    out.extend_from_slice(MAGIC);
    out.push(version);
    out
}

/// Encodes a whole frame (used for fragments and tests; batches go through [`FrameBuilder`]).
pub fn encode(frame: &Frame) -> Vec<u8> {
    encode_as(frame, VERSION)
}

/// Encodes a repair frame, in format [`REPAIR_VERSION`].
pub fn encode_repair(r: Repair) -> Vec<u8> {
    encode_as(&Frame::Repair(r), REPAIR_VERSION)
}

/// Encodes a whole frame in format `version` (at most [`VERSION`]).
pub fn encode_as(frame: &Frame, version: u8) -> Vec<u8> {
    let out = envelope_start(64, version);
    let wire = match frame.to_wire() {
        WireFrame::Changes(mut c) => {
            for ch in &mut c.changes {
                let op = std::mem::replace(&mut ch.op, Op::Delete(Vec::new()));
                ch.op = op.for_version(version);
            }
            WireFrame::Changes(c)
        }
        w => w,
    };
    seal(postcard::to_extend(&wire, out).expect("encoding into a Vec cannot fail"))
}

/// Decodes and checks a frame, raw or compressed. Never panics, whatever the input, and a
/// compressed body never makes it allocate more than [`MAX_BODY`] bytes.
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    if bytes.len() < ENVELOPE {
        return Err(FrameError::TooShort(bytes.len()));
    }
    if &bytes[..2] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let version = bytes[2] & !COMPRESSED;
    if !(OLDEST_VERSION..=REPAIR_VERSION).contains(&version) {
        return Err(FrameError::UnknownVersion(bytes[2]));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32(body).to_le_bytes() != crc {
        return Err(FrameError::Checksum);
    }
    let inflated;
    let body = if bytes[2] & COMPRESSED != 0 {
        inflated = decompress(&body[3..])?;
        &inflated[..]
    } else {
        &body[3..]
    };
    let (wire, rest) = postcard::take_from_bytes::<WireFrame>(body)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    let frame = Frame::from_wire(wire);
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    validate(&frame)?;
    Ok(frame)
}

/// The same frame with its body compressed, when that makes it smaller; otherwise `frame`
/// itself (also for a frame already compressed, not a frame, or with a body over
/// [`MAX_BODY`]).
pub fn compress(frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < ENVELOPE || &frame[..2] != MAGIC || frame[2] & COMPRESSED != 0 {
        return frame;
    }
    let body = &frame[3..frame.len() - 4];
    if body.len() > MAX_BODY {
        return frame;
    }
    if body.len() > 4 * PROBE {
        let probe = miniz_oxide::deflate::compress_to_vec(&body[..PROBE], DEFLATE_LEVEL);
        if probe.len() > PROBE - PROBE / 10 {
            return frame;
        }
    }
    let deflated = miniz_oxide::deflate::compress_to_vec(body, DEFLATE_LEVEL);
    let mut out = envelope_start(deflated.len() + 5, frame[2] | COMPRESSED);
    let mut n = body.len();
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(&deflated);
    if out.len() + 4 >= frame.len() {
        return frame;
    }
    seal(out)
}

/// A compressed body (declared length, deflate stream) back to its postcard encoding.
fn decompress(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut len = 0usize;
    let mut used = 0;
    loop {
        let Some(&b) = body.get(used) else {
            return Err(FrameError::Decompress("truncated length".into()));
        };
        if used == 4 && b > 0x0f {
            return Err(FrameError::Decompress("length over 4 GiB".into()));
        }
        len |= ((b & 0x7f) as usize) << (7 * used);
        used += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if len > MAX_BODY {
        return Err(FrameError::Decompress(format!(
            "declares {len} bytes, more than the limit of {MAX_BODY}"
        )));
    }
    // inflating stops at the declared length: a bomb allocates no more than that
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(&body[used..], len).map_err(
        |e| match e.status {
            miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                FrameError::Decompress(format!("more than the {len} bytes it declares"))
            }
            _ => FrameError::Decompress(format!("deflate stream: {e}")),
        },
    )?;
    if out.len() != len {
        return Err(FrameError::Decompress(format!(
            "{} bytes, not the {len} it declares",
            out.len()
        )));
    }
    Ok(out)
}

/// Structural checks so that the apply code can index without panicking.
fn validate(frame: &Frame) -> Result<(), FrameError> {
    match frame {
        Frame::Repair(r) => {
            if r.origins.len() != r.changes.changes.len() {
                return Err(FrameError::Invalid(
                    "repair origins do not match its changes",
                ));
            }
            if r.changes
                .changes
                .iter()
                .any(|c| matches!(c.op, Op::Insert(_)))
            {
                return Err(FrameError::Invalid("a repair frame carries an insert"));
            }
            validate_changes(&r.changes)?;
        }
        Frame::Changes(c) => validate_changes(c)?,
        Frame::Fragment(f) => {
            if f.count == 0 || f.index >= f.count {
                return Err(FrameError::Invalid("fragment index out of range"));
            }
        }
    }
    Ok(())
}

fn validate_changes(c: &Changes) -> Result<(), FrameError> {
    for t in &c.tables {
        if t.pk.is_empty() {
            return Err(FrameError::Invalid("table without a primary key"));
        }
        if t.pk.iter().any(|&i| i as usize >= t.columns.len()) {
            return Err(FrameError::Invalid("primary key index out of range"));
        }
    }
    for ch in &c.changes {
        let t = c
            .tables
            .get(ch.table as usize)
            .ok_or(FrameError::Invalid("table index out of range"))?;
        let ok = match &ch.op {
            Op::Upsert(v) | Op::Insert(v) => v.len() == t.columns.len(),
            Op::Delete(k) => k.len() == t.pk.len(),
        };
        if !ok {
            return Err(FrameError::Invalid(
                "value count does not match the table header",
            ));
        }
    }
    Ok(())
}

/// Splits an encoded frame into fragment frames, each at most `max_frame` bytes.
/// The fragments are written in format `version`, like the frame they carry.
pub fn fragment(
    origin: u64,
    id: u64,
    encoded: &[u8],
    max_frame: usize,
    version: u8,
) -> Vec<Vec<u8>> {
    let chunk = max_frame
        .saturating_sub(ENVELOPE + FRAGMENT_OVERHEAD)
        .max(1);
    let count = encoded.len().div_ceil(chunk) as u32;
    encoded
        .chunks(chunk)
        .enumerate()
        .map(|(i, data)| {
            encode_as(
                &Frame::Fragment(Fragment {
                    origin,
                    id,
                    index: i as u32,
                    count,
                    data: data.to_vec(),
                }),
                version,
            )
        })
        .collect()
}

/// Accumulates changes into one frame without passing `max_frame` bytes.
pub struct FrameBuilder {
    origin: u64,
    max_frame: usize,
    /// The frame format written ([`VERSION`] unless an older one was asked for).
    version: u8,
    tables: Vec<TableHeader>,
    table_index: HashMap<String, u16>,
    table_lens: Vec<usize>,
    tables_bytes: usize,
    body: Vec<u8>,
    count: usize,
    prev_version: u64,
}

/// What [`FrameBuilder::push`] did with a change.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Added,
    /// The frame is full: finish it and push again into a new one.
    Full,
    /// The change alone is larger than a frame: send it as fragments.
    TooLarge,
}

impl FrameBuilder {
    pub fn new(origin: u64, max_frame: usize) -> FrameBuilder {
        FrameBuilder::with_version(origin, max_frame, VERSION)
    }

    /// A builder writing frame format `version` (at most [`VERSION`]).
    pub fn with_version(origin: u64, max_frame: usize, version: u8) -> FrameBuilder {
        FrameBuilder {
            origin,
            max_frame,
            version: version.min(VERSION),
            tables: Vec::new(),
            table_index: HashMap::new(),
            table_lens: Vec::new(),
            tables_bytes: 0,
            body: Vec::new(),
            count: 0,
            prev_version: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Adds one change of `table` if it fits.
    pub fn push(&mut self, table: &TableHeader, version: u64, op: Op) -> Pushed {
        let (index, header_len, is_new) = match self.table_index.get(&table.name) {
            Some(&i) => (i, self.table_lens[i as usize], false),
            None => (self.tables.len() as u16, encoded_len(table), true),
        };
        let new_table_bytes = if is_new { header_len } else { 0 };
        let start = self.body.len();
        let change = WireChange {
            table: index,
            version_delta: delta(self.prev_version, version),
            op: op.for_version(self.version),
        };
        self.body = postcard::to_extend(&change, std::mem::take(&mut self.body)).expect("Vec");
        let change_len = self.body.len() - start;
        if ENVELOPE + CHANGES_OVERHEAD + header_len + change_len > self.max_frame {
            self.body.truncate(start);
            return Pushed::TooLarge;
        }
        if ENVELOPE + CHANGES_OVERHEAD + self.tables_bytes + new_table_bytes + self.body.len()
            > self.max_frame
        {
            self.body.truncate(start);
            return Pushed::Full;
        }
        if is_new {
            self.table_index.insert(table.name.clone(), index);
            self.table_lens.push(header_len);
            self.tables.push(table.clone());
            self.tables_bytes += new_table_bytes;
        }
        self.count += 1;
        self.prev_version = version;
        Pushed::Added
    }

    /// The sealed frame; the builder is empty again.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = envelope_start(
            self.tables_bytes + self.body.len() + CHANGES_OVERHEAD,
            self.version,
        );
        out.push(0); // Frame::Changes
        out = postcard::to_extend(&self.origin, out).expect("Vec");
        out = postcard::to_extend(&self.tables, out).expect("Vec");
        out = postcard::to_extend(&(self.count as u64), out).expect("Vec");
        out.extend_from_slice(&self.body);
        self.tables.clear();
        self.table_index.clear();
        self.table_lens.clear();
        self.tables_bytes = 0;
        self.body.clear();
        self.count = 0;
        self.prev_version = 0;
        seal(out)
    }
}

/// Encodes one change alone in a frame of format `frame_version`, for fragmenting and parking.
pub fn encode_single(
    origin: u64,
    table: &TableHeader,
    version: u64,
    op: Op,
    frame_version: u8,
) -> Vec<u8> {
    encode_as(
        &Frame::Changes(Changes {
            origin,
            tables: vec![table.clone()],
            changes: vec![Change {
                table: 0,
                version,
                op,
            }],
        }),
        frame_version,
    )
}

fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::to_stdvec(value).map_or(usize::MAX / 4, |v| v.len())
}

/// CRC-32 (IEEE 802.3), table-driven.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// 64-bit FNV-1a, for deterministic message ids.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> TableHeader {
        TableHeader {
            name: "t".into(),
            columns: vec!["id".into(), "v".into()],
            pk: vec![0],
        }
    }

    fn all_values() -> Vec<Value> {
        vec![
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Real(-0.0),
            Value::Real(f64::MIN_POSITIVE / 2.0),
            Value::Real(f64::NAN),
            Value::Text("héllo ✓ 🚀".as_bytes().to_vec()),
            Value::Text(vec![0xff, 0x00]),
            Value::Blob(vec![]),
            Value::Blob(vec![0, 1, 2, 255]),
        ]
    }

    #[test]
    fn round_trip_keeps_every_value_exactly() {
        let mut b = FrameBuilder::new(7, 1 << 20);
        for (i, v) in all_values().into_iter().enumerate() {
            assert_eq!(
                b.push(
                    &header(),
                    100 + i as u64,
                    Op::Upsert(vec![Value::Integer(i as i64), v])
                ),
                Pushed::Added
            );
        }
        b.push(&header(), 200, Op::Delete(vec![Value::Integer(3)]));
        let bytes = b.finish();
        let Frame::Changes(c) = decode(&bytes).unwrap() else {
            panic!("not changes")
        };
        assert_eq!(c.origin, 7);
        assert_eq!(c.tables, vec![header()]);
        assert_eq!(c.changes.len(), 11);
        for (i, v) in all_values().into_iter().enumerate() {
            assert_eq!(c.changes[i].version, 100 + i as u64);
            assert_eq!(
                c.changes[i].op,
                Op::Upsert(vec![Value::Integer(i as i64), v])
            );
        }
        assert_eq!(c.changes[10].op, Op::Delete(vec![Value::Integer(3)]));
        // the hand-assembled frame is exactly postcard's encoding of the same struct
        assert_eq!(encode(&Frame::Changes(c)), bytes);
    }

    #[test]
    fn versions_survive_delta_encoding_in_any_order() {
        let versions = [u64::MAX >> 1, 1, 7 << 16, (7 << 16) + 1, 3, u64::MAX >> 1];
        let mut b = FrameBuilder::new(2, 1 << 16);
        for v in versions {
            assert_eq!(
                b.push(&header(), v, Op::Delete(vec![Value::Integer(1)])),
                Pushed::Added
            );
        }
        let Frame::Changes(c) = decode(&b.finish()).unwrap() else {
            panic!()
        };
        let got: Vec<u64> = c.changes.iter().map(|c| c.version).collect();
        assert_eq!(got, versions);
    }

    #[test]
    fn real_bits_are_kept() {
        assert_ne!(Value::Real(0.0), Value::Real(-0.0));
        assert_eq!(Value::Real(f64::NAN), Value::Real(f64::NAN));
    }

    #[test]
    fn frames_stay_within_the_bound() {
        let max = 4096;
        let mut b = FrameBuilder::new(1, max);
        let mut frames = Vec::new();
        let mut n = 0;
        for i in 0..1000i64 {
            let op = || {
                Op::Upsert(vec![
                    Value::Integer(i),
                    Value::Text(vec![b'x'; (i % 97) as usize]),
                ])
            };
            match b.push(&header(), i as u64, op()) {
                Pushed::Added => {}
                Pushed::Full => {
                    frames.push(b.finish());
                    assert_eq!(b.push(&header(), i as u64, op()), Pushed::Added);
                }
                Pushed::TooLarge => panic!("small row reported too large"),
            }
        }
        frames.push(b.finish());
        for f in &frames {
            assert!(f.len() <= max, "frame of {} bytes over {max}", f.len());
            let Frame::Changes(c) = decode(f).unwrap() else {
                panic!()
            };
            n += c.changes.len();
        }
        assert_eq!(n, 1000);
        assert!(frames.len() > 5);
        // frames are not mostly empty: the bound is used
        assert!(frames[0].len() > max - 200, "{}", frames[0].len());
    }

    #[test]
    fn oversized_row_is_reported_then_fragmented_and_reassembled() {
        let max = 2048;
        let big = Op::Upsert(vec![
            Value::Integer(1),
            Value::Blob((0..10_000u32).map(|i| i as u8).collect()),
        ]);
        let mut b = FrameBuilder::new(1, max);
        assert_eq!(b.push(&header(), 5, big.clone()), Pushed::TooLarge);
        assert!(b.is_empty());
        let whole = encode_single(1, &header(), 5, big.clone(), VERSION);
        let parts = fragment(1, 5, &whole, max, VERSION);
        assert!(parts.len() >= 5);
        let mut joined = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.len() <= max);
            let Frame::Fragment(f) = decode(p).unwrap() else {
                panic!()
            };
            assert_eq!(
                (f.index as usize, f.count as usize, f.id),
                (i, parts.len(), 5)
            );
            joined.extend_from_slice(&f.data);
        }
        let Frame::Changes(c) = decode(&joined).unwrap() else {
            panic!()
        };
        assert_eq!(c.changes[0].op, big);
    }

    #[test]
    fn repair_frames_round_trip_in_format_3_compressed_or_not() {
        let changes = Changes {
            origin: 9,
            tables: vec![header()],
            changes: vec![
                Change {
                    table: 0,
                    version: 50,
                    op: Op::Upsert(vec![Value::Integer(2), Value::Text(b"b".repeat(300))]),
                },
                Change {
                    table: 0,
                    version: 7,
                    op: Op::Delete(vec![Value::Integer(1)]),
                },
            ],
        };
        let r = Repair {
            changes,
            origins: vec![3, 7],
        };
        let bytes = encode_repair(r.clone());
        assert_eq!(bytes[2], REPAIR_VERSION);
        assert_eq!(decode(&bytes), Ok(Frame::Repair(r.clone())));
        let small = compress(bytes.clone());
        assert!(small.len() < bytes.len());
        assert_eq!(decode(&small), Ok(Frame::Repair(r.clone())));
        // origins must match the changes, and a repair never carries an insert
        let short = Repair {
            origins: vec![3],
            ..r.clone()
        };
        assert!(matches!(
            decode(&encode_repair(short)),
            Err(FrameError::Invalid(_))
        ));
        let mut insert = r;
        insert.changes.changes[0].op = Op::Insert(vec![Value::Integer(2), Value::Null]);
        assert!(matches!(
            decode(&encode_repair(insert)),
            Err(FrameError::Invalid(_))
        ));
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let mut b = FrameBuilder::new(1, 4096);
        b.push(
            &header(),
            1,
            Op::Upsert(vec![Value::Integer(1), Value::Null]),
        );
        let good = b.finish();
        assert_eq!(decode(b"garbage"), Err(FrameError::BadMagic));
        assert_eq!(decode(b"HL"), Err(FrameError::TooShort(2)));
        let mut v2 = good.clone();
        v2[2] = 9;
        assert_eq!(decode(&v2), Err(FrameError::UnknownVersion(9)));
        let mut flipped = good.clone();
        flipped[5] ^= 0x40;
        assert_eq!(decode(&flipped), Err(FrameError::Checksum));
        // truncated at every length: never a panic, always an error
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err());
        }
        // a body that passes the checksum but claims a huge sequence
        let forged = seal({
            let mut o = envelope_start(16, VERSION);
            o.extend_from_slice(&[0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]);
            o
        });
        assert!(matches!(decode(&forged), Err(FrameError::Decode(_))));
        // a structurally wrong frame: change refers to a missing table
        let bad = encode(&Frame::Changes(Changes {
            origin: 1,
            tables: vec![],
            changes: vec![Change {
                table: 3,
                version: 1,
                op: Op::Delete(vec![]),
            }],
        }));
        assert!(matches!(decode(&bad), Err(FrameError::Invalid(_))));
    }

    /// Telemetry-like rows: a device id, a timestamp and a JSON payload whose values drift.
    fn telemetry(b: &mut FrameBuilder, rows: i64) {
        let h = TableHeader {
            name: "readings".into(),
            columns: vec!["id".into(), "device".into(), "ts".into(), "payload".into()],
            pk: vec![0],
        };
        for i in 0..rows {
            let payload = format!(
                "{{\"temperature\":{:.2},\"humidity\":{:.1},\"pressure\":{:.1},\"voltage\":{:.1}}}",
                21.0 + (i % 13) as f64 * 0.07,
                48.0 + (i % 7) as f64 * 0.3,
                1013.0 + (i % 5) as f64 * 0.1,
                229.0 + (i % 11) as f64 * 0.2
            );
            let op = Op::Upsert(vec![
                Value::Integer(i),
                Value::Text(format!("gw-0017-sensor-{:02}", i % 8).into_bytes()),
                Value::Integer(1_764_500_000_000 + i * 1000),
                Value::Text(payload.into_bytes()),
            ]);
            assert_eq!(b.push(&h, 1000 + i as u64, op), Pushed::Added);
        }
    }

    /// A compressed frame with `body` as its (already deflated) stream after `declared`.
    fn forge_compressed(declared: &[u8], stream: &[u8]) -> Vec<u8> {
        let mut o = envelope_start(16, VERSION | COMPRESSED);
        o.extend_from_slice(declared);
        o.extend_from_slice(stream);
        seal(o)
    }

    #[test]
    fn compressed_frames_round_trip_and_decode_like_raw_ones() {
        let mut b = FrameBuilder::new(9, 1 << 20);
        telemetry(&mut b, 200);
        for (i, v) in all_values().into_iter().enumerate() {
            b.push(
                &header(),
                5000 + i as u64,
                Op::Insert(vec![Value::Integer(i as i64), v]),
            );
        }
        let raw = b.finish();
        let packed = compress(raw.clone());
        assert_eq!(&packed[..2], MAGIC);
        assert_eq!(packed[2], VERSION | COMPRESSED);
        assert!(
            packed.len() * 3 < raw.len(),
            "{} of {}",
            packed.len(),
            raw.len()
        );
        let (a, c) = (decode(&raw).unwrap(), decode(&packed).unwrap());
        assert_eq!(a, c);
        let Frame::Changes(c) = c else { panic!() };
        assert_eq!(c.changes.len(), 210);
        // compressing twice changes nothing; the CRC covers the bytes sent
        assert_eq!(compress(packed.clone()), packed);
        let mut flipped = packed.clone();
        let at = packed.len() / 2;
        flipped[at] ^= 0x01;
        assert_eq!(decode(&flipped), Err(FrameError::Checksum));
        // format 1 compresses too (the node does not write it compressed; readers would not know it)
        let mut b1 = FrameBuilder::with_version(9, 1 << 20, 1);
        telemetry(&mut b1, 50);
        let v1 = compress(b1.finish());
        assert_eq!(v1[2], 1 | COMPRESSED);
        assert!(matches!(decode(&v1), Ok(Frame::Changes(c)) if c.changes.len() == 50));
    }

    #[test]
    fn a_frame_that_does_not_shrink_is_sent_raw() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut b = FrameBuilder::new(1, 1 << 16);
        b.push(
            &header(),
            1,
            Op::Upsert(vec![Value::Integer(1), Value::Blob(noise)]),
        );
        let raw = b.finish();
        assert_eq!(compress(raw.clone()), raw);
        // a large one too (found out from its first 256 KiB)
        let noise: Vec<u8> = (0..5 * PROBE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let raw = encode_single(
            1,
            &header(),
            2,
            Op::Upsert(vec![Value::Integer(2), Value::Blob(noise)]),
            VERSION,
        );
        assert_eq!(compress(raw.clone()), raw);
        // so is a frame too small to gain, and anything that is not a frame
        let mut b = FrameBuilder::new(1, 1 << 16);
        b.push(&header(), 1, Op::Delete(vec![Value::Integer(1)]));
        let tiny = b.finish();
        assert_eq!(compress(tiny.clone()), tiny);
        assert_eq!(compress(b"HL".to_vec()), b"HL".to_vec());
        assert_eq!(
            compress(b"not a frame at all".to_vec()),
            b"not a frame at all".to_vec()
        );
    }

    #[test]
    fn bombs_and_garbage_in_a_compressed_body_are_clear_errors() {
        let decompress_err = |bytes: &[u8]| match decode(bytes) {
            Err(FrameError::Decompress(why)) => why,
            other => panic!("expected a decompression error, got {other:?}"),
        };
        // a length over the limit is refused before inflating anything
        let mut over = Vec::new();
        let mut n = MAX_BODY + 1;
        while n >= 0x80 {
            over.push(n as u8 | 0x80);
            n >>= 7;
        }
        over.push(n as u8);
        let why = decompress_err(&forge_compressed(&over, &[0x03, 0x00]));
        assert!(why.contains("more than the limit"), "{why}");
        assert!(decompress_err(&forge_compressed(&[0xff; 6], &[])).contains("4 GiB"));
        assert!(decompress_err(&forge_compressed(&[0x80], &[])).contains("truncated length"));
        // a bomb: 4 MiB of zeros deflated to ~4 KiB, declaring 100 bytes, stops at 100
        let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; 4 << 20], 6);
        assert!(bomb.len() < 16 << 10);
        let why = decompress_err(&forge_compressed(&[100], &bomb));
        assert!(why.contains("more than the 100 bytes it declares"), "{why}");
        // ... and declaring all of it passes inflation, then fails as a frame, not a panic
        let mut declared = Vec::new();
        let mut n = 4usize << 20;
        while n >= 0x80 {
            declared.push(n as u8 | 0x80);
            n >>= 7;
        }
        declared.push(n as u8);
        assert!(decode(&forge_compressed(&declared, &bomb)).is_err());
        // fewer bytes than declared, and streams that are not deflate
        let short = miniz_oxide::deflate::compress_to_vec(b"abc", 6);
        assert!(decompress_err(&forge_compressed(&[10], &short)).contains("not the 10"));
        assert!(decompress_err(&forge_compressed(&[10], &[0xff; 12])).contains("deflate stream"));
        assert!(decompress_err(&forge_compressed(&[10], &[])).contains("deflate stream"));
        let text = FrameError::Decompress("x".into()).to_string();
        assert_eq!(text, "compressed body does not decompress: x");
    }

    #[test]
    fn truncated_compressed_frames_are_errors_not_panics() {
        let mut b = FrameBuilder::new(3, 1 << 16);
        telemetry(&mut b, 40);
        let packed = compress(b.finish());
        assert_ne!(packed[2] & COMPRESSED, 0);
        for n in 0..packed.len() {
            assert!(decode(&packed[..n]).is_err());
            // cut, then sealed again: the checksum passes and the deflate stream ends early
            if n > 3 && n < packed.len() - 4 {
                let resealed = seal(packed[..n].to_vec());
                assert!(decode(&resealed).is_err(), "cut at {n}");
            }
        }
    }

    #[test]
    fn a_large_compressible_row_is_compressed_then_fragmented() {
        let max = 2048;
        // words drawn at random from a small vocabulary: compressible, not trivially
        let words = [
            "telemetry ",
            "été ",
            "✓ ",
            "sensor ",
            "42.5 ",
            "日本 ",
            "ok ",
            "drift ",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut text = Vec::new();
        while text.len() < 200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.extend_from_slice(words[(x % 8) as usize].as_bytes());
        }
        let big = Op::Upsert(vec![Value::Integer(1), Value::Text(text)]);
        let raw = encode_single(1, &header(), 5, big.clone(), VERSION);
        let whole = compress(raw.clone());
        assert!(
            whole.len() < raw.len() / 2,
            "{} of {}",
            whole.len(),
            raw.len()
        );
        let parts = fragment(1, 5, &whole, max, VERSION);
        let raw_parts = fragment(1, 5, &raw, max, VERSION).len();
        assert!(
            parts.len() > 1 && parts.len() < raw_parts / 2,
            "{} {raw_parts}",
            parts.len()
        );
        let mut joined = Vec::new();
        for p in &parts {
            assert!(p.len() <= max);
            let Frame::Fragment(f) = decode(p).unwrap() else {
                panic!()
            };
            joined.extend_from_slice(&f.data);
        }
        assert_eq!(joined, whole);
        let Frame::Changes(c) = decode(&joined).unwrap() else {
            panic!()
        };
        assert_eq!(c.changes[0].op, big);
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
