//! The replication log: one entry per committed write transaction.
//!
//! # Entry format (version 1)
//! An entry's body is a byte string:
//! ```text
//! u8      format version (1)
//! varint  number of changes
//! change* varint table index, u8 op (0 insert, 1 update, 2 delete, 3 operation),
//!         varint payload length, payload
//! varint  number of tables, then per table: varint length, UTF-8 name
//! ```
//! The payload is the postcard encoding of the row image (`Vec<Value>`, all
//! columns in column order) for inserts and updates, and of the key
//! (`Value`) for deletes. Table names are listed once per entry and referred
//! to by index. Decoding checks every length against the bytes that remain
//! before allocating, so a hostile or corrupt entry fails with
//! [`DecodeError::Malformed`] and never panics or over-allocates.
//!
//! # Stored bodies
//! The store keeps a body as it is, or, when it is at least
//! [`PACK_MIN_BYTES`] long and LZ4 makes it at least a quarter smaller,
//! packed ([`pack_stored`], [`unpack_stored`]):
//! ```text
//! u8      0x81 (never a format version)
//! varint  length of the body
//! bytes   the body as one LZ4 block
//! ```
//! A body in a transaction of many rows repeats itself (column values, text
//! written by the same module), and the log's copy of every row is what a
//! write costs beyond the row itself: written to the database file twice
//! (WAL, then checkpoint) like the row. A body is packed once, when its
//! transaction commits, and travels as it is stored: a [`LogEntry`] in the
//! commit feed, read back from the log or shipped to a backup carries the
//! stored bytes, and a backup stores them as they came, so a body is never
//! packed twice and a link carries the smaller form. Read a body with
//! [`LogEntry::plain_body`] (which unpacks it when it is packed) before
//! [`decode_body`]. The digest covers row images, never the stored bytes.

use std::borrow::Cow;

use crate::digest::Digest;
use crate::error::DecodeError;
use crate::value::Value;

/// The entry format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// The first byte of a packed stored body (see "Stored bodies" above).
const PACKED: u8 = 0x81;

/// Bodies shorter than this are stored as they are: a single-row commit's
/// body gains nothing worth the work on the commit path.
pub const PACK_MIN_BYTES: usize = 512;

/// LZ4 never expands more than this: a packed body's stated length beyond
/// it is corrupt, refused before anything is allocated for it.
const LZ4_MAX_RATIO: usize = 255;

/// Packing must save at least this share of a body (a quarter) to be kept:
/// below it, the work of packing and unpacking costs more than the writes it
/// saves (measured with text LZ4 cannot shrink, `benches/store_write.rs`).
const PACK_KEEP: (usize, usize) = (3, 4);

/// A body this much larger than [`PACK_PROBE_BYTES`] is first probed: its
/// first bytes are packed alone, and if they do not shrink enough the body is
/// stored as it is, without packing the rest.
const PACK_PROBE_BYTES: usize = 16 * 1024;

fn worth_keeping(packed: usize, of: usize) -> bool {
    packed.saturating_mul(PACK_KEEP.1) <= of.saturating_mul(PACK_KEEP.0)
}

/// The bytes the store keeps for `body`: packed if that saves at least a
/// quarter of it, the body itself otherwise (and a body already packed as
/// it is).
pub fn pack_stored(body: Vec<u8>) -> Vec<u8> {
    let mut packed = Vec::new();
    match pack_into(&body, &mut packed) {
        Some(n) => {
            packed.truncate(n);
            packed
        }
        None => body,
    }
}

/// [`pack_stored`] of a borrowed body, packing through `scratch`: a buffer
/// the caller keeps across calls, because packing needs room for the worst
/// case, and allocating and zeroing that for every commit of a bulk load
/// costs more than LZ4 itself. Returns the stored bytes, allocated exactly.
pub fn pack_stored_with(body: &[u8], scratch: &mut Vec<u8>) -> Vec<u8> {
    match pack_into(body, scratch) {
        Some(n) => scratch[..n].to_vec(),
        None => body.to_vec(),
    }
}

/// Packs `body` into the start of `out`, growing `out` if it is too short
/// for the worst case (never shrinking it, so a kept buffer is zeroed once);
/// returns the packed length, or `None` if the body is to be stored as it is
/// (short, packed already, or not shrinking enough).
fn pack_into(body: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    if body.len() < PACK_MIN_BYTES || body.first() == Some(&PACKED) {
        return None;
    }
    if body.len() >= 2 * PACK_PROBE_BYTES {
        let probe = lz4_flex::block::compress(&body[..PACK_PROBE_BYTES]);
        if !worth_keeping(probe.len(), PACK_PROBE_BYTES) {
            return None;
        }
    }
    // The marker and a varint of at most 10 bytes come first.
    let mut head = Vec::with_capacity(11);
    head.push(PACKED);
    put_varint(&mut head, body.len() as u64);
    let most = head.len() + lz4_flex::block::get_maximum_output_size(body.len());
    if out.len() < most {
        out.resize(most, 0);
    }
    out[..head.len()].copy_from_slice(&head);
    match lz4_flex::block::compress_into(body, &mut out[head.len()..most]) {
        Ok(n) if worth_keeping(head.len() + n, body.len()) => Some(head.len() + n),
        _ => None,
    }
}

/// A packed body's stated length and where its LZ4 block starts; `None`
/// for a body stored as it is.
fn packed_header(stored: &[u8]) -> Option<Result<(u64, usize), DecodeError>> {
    if stored.first() != Some(&PACKED) {
        return None;
    }
    let mut r = Reader {
        bytes: stored,
        pos: 1,
    };
    Some(r.varint().map(|len| (len, r.pos)))
}

/// The body of stored bytes written by [`pack_stored`] (or by a build
/// that stored every body as it is): borrowed when it was stored as it is.
pub fn unpack_stored(stored: &[u8]) -> Result<Cow<'_, [u8]>, DecodeError> {
    let Some((len, packed)) = packed_parts(stored)? else {
        return Ok(Cow::Borrowed(stored));
    };
    let mut body = vec![0; len];
    unpack_exact(packed, &mut body)?;
    Ok(Cow::Owned(body))
}

/// [`unpack_stored`] into `scratch`, a buffer the caller keeps across calls
/// (an applier unpacking one large body after another): the body borrowed
/// from `stored` when it was stored as it is, from `scratch` otherwise.
pub fn unpack_stored_with<'a>(
    stored: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], DecodeError> {
    let Some((len, packed)) = packed_parts(stored)? else {
        return Ok(stored);
    };
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    unpack_exact(packed, &mut scratch[..len])?;
    Ok(&scratch[..len])
}

/// A packed body's stated length and LZ4 block (`None`: stored as it is),
/// the length refused if the block could not hold it.
fn packed_parts(stored: &[u8]) -> Result<Option<(usize, &[u8])>, DecodeError> {
    let Some(header) = packed_header(stored) else {
        return Ok(None);
    };
    let (len, start) = header?;
    let packed = &stored[start..];
    if len > (packed.len().saturating_mul(LZ4_MAX_RATIO) + 16) as u64 {
        return Err(malformed(format!(
            "a packed body of {} bytes cannot hold {len}",
            packed.len()
        )));
    }
    Ok(Some((len as usize, packed)))
}

/// Unpacks an LZ4 block that must fill `body` exactly.
fn unpack_exact(packed: &[u8], body: &mut [u8]) -> Result<(), DecodeError> {
    match lz4_flex::block::decompress_into(packed, body) {
        Ok(n) if n == body.len() => Ok(()),
        Ok(n) => Err(malformed(format!(
            "packed body unpacks to {n} bytes, not the {} it states",
            body.len()
        ))),
        Err(e) => Err(malformed(format!("packed body: {e}"))),
    }
}

/// What a change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new row; payload is the row image.
    Insert,
    /// A changed row; payload is the new row image.
    Update,
    /// A removed row; payload is the key.
    Delete,
    /// A replicated operation (table name empty); payload is
    /// [`encode_operation`]: its name, how many record changes just before it
    /// it produced, and its serialized form. A backup runs the operation
    /// instead of applying those changes.
    Operation,
}

impl Op {
    /// A lower-case name, for logs and tools.
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Operation => "operation",
        }
    }

    fn code(self) -> u8 {
        match self {
            Op::Insert => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Operation => 3,
        }
    }
    fn from_code(code: u8) -> Result<Op, DecodeError> {
        Ok(match code {
            0 => Op::Insert,
            1 => Op::Update,
            2 => Op::Delete,
            3 => Op::Operation,
            other => return Err(malformed(format!("unknown change op {other}"))),
        })
    }
}

/// A committed log entry as stored and shipped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    /// Dense position: one more than the previous committed entry.
    pub position: u64,
    /// The epoch of the node that committed it (redundancy runtime; 0 until set).
    pub epoch: u64,
    /// Commit time on the origin, microseconds since the Unix epoch.
    pub committed_at: i64,
    /// The origin's state digest after this entry.
    pub digest: Digest,
    /// The body as the store keeps it: encoded (see the module docs), or
    /// packed when it is large. [`LogEntry::plain_body`] reads either.
    #[serde(with = "byte_string")]
    pub body: Vec<u8>,
}

/// A body serializes as one byte string rather than a sequence of `u8`s: in
/// postcard both are a varint length and the bytes, so the wire format is
/// the same, but a byte string is copied at once where a sequence goes
/// through serde byte by byte (a 3.6 MB batch of entries took 0.3-0.6 s to
/// encode and as long to decode in a debug build, long enough to hold up the
/// heartbeats of a link with a 600 ms failover timeout).
mod byte_string {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        // Formats without byte strings (JSON) write a sequence.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // The size hint comes from the input: never trust it for more
            // than a small start.
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

impl LogEntry {
    /// The body in the entry format, unpacked if it is packed: decode it
    /// with [`decode_body`].
    ///
    /// ```
    /// # use persist_core::log::{decode_body, encode_body, pack_stored, LogEntry, Op};
    /// # use persist_core::Digest;
    /// let image = [1u8; 40];
    /// let changes = vec![("device", Op::Insert, &image[..]); 100];
    /// let entry = LogEntry {
    ///     position: 1,
    ///     epoch: 0,
    ///     committed_at: 0,
    ///     digest: Digest::default(),
    ///     body: pack_stored(encode_body(&changes)),
    /// };
    /// let body = entry.plain_body()?;
    /// assert_eq!(decode_body(&body)?.len(), 100);
    /// # Ok::<(), persist_core::error::DecodeError>(())
    /// ```
    pub fn plain_body(&self) -> Result<Cow<'_, [u8]>, DecodeError> {
        unpack_stored(&self.body)
    }

    /// The length of the body in the entry format: what applying it costs
    /// is in proportion to this, not to the (perhaps packed) bytes it
    /// carries. A packed body states it in its header; a malformed header
    /// counts as the bytes carried (the apply refuses it anyway).
    pub fn plain_len(&self) -> usize {
        match packed_header(&self.body) {
            Some(Ok((len, _))) => usize::try_from(len).unwrap_or(self.body.len()),
            _ => self.body.len(),
        }
    }

    /// How many changes the body holds.
    pub fn change_count(&self) -> Result<usize, DecodeError> {
        Ok(decode_body(&self.plain_body()?)?.len())
    }
}

/// One decoded change, borrowing the entry body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRef<'a> {
    /// Table name.
    pub table: &'a str,
    /// What happened.
    pub op: Op,
    /// Encoded row image (insert, update) or key (delete).
    pub payload: &'a [u8],
}

impl ChangeRef<'_> {
    /// Decodes the row image of an insert or update.
    pub fn image(&self) -> Result<Vec<Value>, DecodeError> {
        decode_image(self.payload)
    }
    /// Decodes an operation: its name, the number of record changes just
    /// before it that it produced, and its serialized form.
    pub fn operation(&self) -> Result<(&str, u64, &[u8]), DecodeError> {
        let mut r = Reader {
            bytes: self.payload,
            pos: 0,
        };
        let len = r.varint()?;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| malformed("operation name is not UTF-8"))?;
        let covers = r.varint()?;
        let rest = r.take(r.remaining() as u64)?;
        Ok((name, covers, rest))
    }

    /// Decodes the key of a delete.
    pub fn key(&self) -> Result<Value, DecodeError> {
        postcard::from_bytes(self.payload).map_err(|e| malformed(format!("key: {e}")))
    }
}

fn malformed(msg: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(msg.into())
}

/// Encodes a row image: the postcard encoding of `values` (a `Vec<Value>`),
/// written by hand because it runs for every row written, applied,
/// snapshotted and hashed. The bytes are postcard's to the last one (the
/// image feeds the state digest; a test holds the two equal): a varint
/// count, then per value its variant index as a varint and its payload
/// (integers zigzag varints, a double its 8 bytes little-endian, a bool one
/// byte, text and blobs a varint length and the bytes).
pub fn encode_image(values: &[Value], out: &mut Vec<u8>) {
    out.clear();
    put_varint(out, values.len() as u64);
    for v in values {
        match v {
            Value::Null => out.push(0),
            Value::I64(i) => {
                out.push(1);
                put_varint(out, zigzag(*i));
            }
            Value::I32(i) => {
                out.push(2);
                put_varint(out, zigzag(i64::from(*i)));
            }
            Value::F64(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_le_bytes());
            }
            Value::Bool(b) => {
                out.push(4);
                out.push(u8::from(*b));
            }
            Value::Text(t) => {
                out.push(5);
                put_varint(out, t.len() as u64);
                out.extend_from_slice(t.as_bytes());
            }
            Value::Blob(b) => {
                out.push(6);
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Timestamp(us) => {
                out.push(7);
                put_varint(out, zigzag(*us));
            }
        }
    }
}

fn zigzag(i: i64) -> u64 {
    ((i << 1) ^ (i >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Encodes an operation change's payload (see [`Op::Operation`]).
pub fn encode_operation(name: &str, covers: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + payload.len() + 8);
    put_varint(&mut out, name.len() as u64);
    out.extend_from_slice(name.as_bytes());
    put_varint(&mut out, covers);
    out.extend_from_slice(payload);
    out
}

/// Encodes a key.
pub fn encode_key(key: &Value, out: &mut Vec<u8>) {
    out.clear();
    if let Ok(bytes) = postcard::to_extend(key, std::mem::take(out)) {
        *out = bytes;
    }
}

/// Decodes a row image.
pub fn decode_image(bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
    let mut values = Vec::new();
    decode_image_over(bytes, &mut values, 0)?;
    Ok(values)
}

/// Decodes a row image into `out[at..]`, growing `out` as needed, and
/// returns how many values it holds. A slot that already holds text (or a
/// blob) and receives text (or a blob) keeps its buffer: decoding chunk
/// after chunk of one table into the same `out` allocates nothing once the
/// buffers are large enough. Slots past the image are left as they were.
pub fn decode_image_over(
    bytes: &[u8],
    out: &mut Vec<Value>,
    at: usize,
) -> Result<usize, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let count = r.count(1, "row image values")?;
    if out.len() < at + count {
        out.resize(at + count, Value::Null);
    }
    for slot in &mut out[at..at + count] {
        match r.varint_bits(32)? {
            0 => *slot = Value::Null,
            1 => *slot = Value::I64(unzigzag(r.varint()?)),
            2 => {
                let u = r.varint_bits(32)?;
                *slot = Value::I32(unzigzag(u) as i32);
            }
            3 => {
                let b = r.take(8)?;
                *slot = Value::F64(f64::from_le_bytes(b.try_into().expect("8 bytes")));
            }
            4 => {
                *slot = match r.byte()? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(malformed(format!("row image: bool byte {b}"))),
                }
            }
            5 => {
                let len = r.varint()?;
                let b = r.take(len)?;
                let t = std::str::from_utf8(b)
                    .map_err(|e| malformed(format!("row image: text is not UTF-8: {e}")))?;
                slot.set_text(t);
            }
            6 => {
                let len = r.varint()?;
                slot.set_blob(r.take(len)?);
            }
            7 => *slot = Value::Timestamp(unzigzag(r.varint()?)),
            tag => return Err(malformed(format!("row image: unknown value kind {tag}"))),
        }
    }
    if r.remaining() > 0 {
        return Err(malformed(format!(
            "{} trailing bytes after row image",
            r.remaining()
        )));
    }
    Ok(count)
}

/// Builds an entry body change by change.
#[derive(Debug, Default)]
pub struct BodyWriter {
    buf: Vec<u8>,
    count: u64,
    tables: Vec<&'static str>,
}

impl BodyWriter {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of changes so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no change was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a change.
    pub fn push(&mut self, table: &'static str, op: Op, payload: &[u8]) {
        let index = match self
            .tables
            .iter()
            .position(|t| std::ptr::eq(*t, table) || *t == table)
        {
            Some(i) => i,
            None => {
                self.tables.push(table);
                self.tables.len() - 1
            }
        };
        put_varint(&mut self.buf, index as u64);
        self.buf.push(op.code());
        put_varint(&mut self.buf, payload.len() as u64);
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    /// Finishes the body.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.finish_into(&mut out);
        out
    }

    /// Finishes the body into `out`, replacing what it held (a buffer kept
    /// across commits: a bulk transaction's body is hundreds of kilobytes).
    pub fn finish_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(self.buf.len() + 16 + self.tables.len() * 16);
        out.push(FORMAT_VERSION);
        put_varint(out, self.count);
        out.extend_from_slice(&self.buf);
        put_varint(out, self.tables.len() as u64);
        for t in &self.tables {
            put_varint(out, t.len() as u64);
            out.extend_from_slice(t.as_bytes());
        }
    }

    /// The current length, to roll back to with [`BodyWriter::reset`].
    pub fn mark(&self) -> (usize, u64, usize) {
        (self.buf.len(), self.count, self.tables.len())
    }

    /// Drops the changes added since `mark`.
    pub fn reset(&mut self, mark: (usize, u64, usize)) {
        self.buf.truncate(mark.0);
        self.count = mark.1;
        self.tables.truncate(mark.2);
    }

    /// Drops all changes.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.tables.clear();
    }

    /// Drops all changes, and the buffer too if it grew past `bytes`: a
    /// writer that keeps one for the next transaction keeps at most that.
    pub fn release_above(&mut self, bytes: usize) {
        if self.buf.capacity() > bytes {
            self.buf = Vec::new();
        }
        self.clear();
    }
}

/// Encodes a body from decoded changes (used by tests and tools).
pub fn encode_body(changes: &[(&str, Op, &[u8])]) -> Vec<u8> {
    let mut tables: Vec<&str> = Vec::new();
    let mut buf = Vec::new();
    for (table, op, payload) in changes {
        let index = tables.iter().position(|t| t == table).unwrap_or_else(|| {
            tables.push(table);
            tables.len() - 1
        });
        put_varint(&mut buf, index as u64);
        buf.push(op.code());
        put_varint(&mut buf, payload.len() as u64);
        buf.extend_from_slice(payload);
    }
    let mut out = vec![FORMAT_VERSION];
    put_varint(&mut out, changes.len() as u64);
    out.extend_from_slice(&buf);
    put_varint(&mut out, tables.len() as u64);
    for t in tables {
        put_varint(&mut out, t.len() as u64);
        out.extend_from_slice(t.as_bytes());
    }
    out
}

/// Decodes a body (see the module docs for the format and its limits).
pub fn decode_body(body: &[u8]) -> Result<Vec<ChangeRef<'_>>, DecodeError> {
    let mut r = Reader {
        bytes: body,
        pos: 0,
    };
    let version = r.byte()?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    // Every change takes at least 3 bytes.
    let count = r.count(3, "changes")?;
    let mut raw = Vec::with_capacity(count);
    for _ in 0..count {
        let table = r.varint()?;
        let op = Op::from_code(r.byte()?)?;
        let len = r.varint()?;
        let payload = r.take(len)?;
        raw.push((table, op, payload));
    }
    let ntables = r.count(1, "table names")?;
    let mut tables = Vec::with_capacity(ntables);
    for _ in 0..ntables {
        let len = r.varint()?;
        let name =
            std::str::from_utf8(r.take(len)?).map_err(|_| malformed("table name is not UTF-8"))?;
        tables.push(name);
    }
    if r.remaining() != 0 {
        return Err(malformed(format!(
            "{} trailing bytes after entry",
            r.remaining()
        )));
    }
    raw.into_iter()
        .map(|(t, op, payload)| {
            let table = *tables
                .get(t as usize)
                .ok_or_else(|| malformed(format!("table index {t} out of {ntables}")))?;
            Ok(ChangeRef { table, op, payload })
        })
        .collect()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| malformed("truncated entry"))?;
        self.pos += 1;
        Ok(b)
    }
    fn varint(&mut self) -> Result<u64, DecodeError> {
        self.varint_bits(64)
    }
    /// A count of items that take at least `min_bytes` each, bounded by the
    /// bytes left before anything is allocated for them.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > (self.remaining() / min_bytes) as u64 {
            return Err(malformed(format!(
                "{n} {what} cannot fit in {} bytes",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
    /// A varint of an integer of `bits` bits (at least 7), as postcard reads
    /// it: at most `ceil(bits / 7)` bytes, the last of them within the bits
    /// left.
    #[inline]
    fn varint_bits(&mut self, bits: u32) -> Result<u64, DecodeError> {
        debug_assert!(bits >= 7);
        // Most varints of an image are one byte (small integers, short
        // lengths, column tags), and any byte below 0x80 is a whole varint
        // of every width read here.
        if let Some(&b) = self.bytes.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_long(bits)
    }
    fn varint_long(&mut self, bits: u32) -> Result<u64, DecodeError> {
        let max = bits.div_ceil(7);
        let last_max = (1u64 << (bits % 7)) - 1;
        let mut v = 0u64;
        for i in 0..max {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == max - 1 && u64::from(b) > last_max {
                    break;
                }
                return Ok(v);
            }
        }
        Err(malformed(format!("varint overflows {bits} bits")))
    }
    fn take(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() as u64 {
            return Err(malformed(format!(
                "length {len} exceeds the {} bytes left",
                self.remaining()
            )));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.bytes[start..self.pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut img = Vec::new();
        encode_image(
            &[Value::I64(7), Value::Text("x".into()), Value::Null],
            &mut img,
        );
        let mut key = Vec::new();
        encode_key(&Value::I64(7), &mut key);
        let mut w = BodyWriter::new();
        w.push("a", Op::Insert, &img);
        w.push("b", Op::Delete, &key);
        w.push("a", Op::Update, &img);
        let body = w.finish();
        assert_eq!(
            body,
            encode_body(&[
                ("a", Op::Insert, &img),
                ("b", Op::Delete, &key),
                ("a", Op::Update, &img)
            ])
        );
        let changes = decode_body(&body).unwrap();
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[1].table, "b");
        assert_eq!(changes[1].key().unwrap(), Value::I64(7));
        assert_eq!(changes[2].image().unwrap()[1], Value::Text("x".into()));
    }

    #[test]
    fn rejects_bad_version_and_truncation() {
        let body = encode_body(&[("t", Op::Insert, &[1, 2, 3])]);
        let mut v2 = body.clone();
        v2[0] = 9;
        assert!(matches!(
            decode_body(&v2),
            Err(DecodeError::UnsupportedVersion { found: 9, .. })
        ));
        for cut in 0..body.len() {
            assert!(
                decode_body(&body[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        assert!(
            decode_body(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err()
        );
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::I64),
            any::<i32>().prop_map(Value::I32),
            any::<f64>().prop_map(Value::F64),
            any::<bool>().prop_map(Value::Bool),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Blob),
            any::<i64>().prop_map(Value::Timestamp),
        ]
    }

    /// Whether two decodes agree (NaN payloads compared by bits).
    fn same(a: &[Value], b: &[Value]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
                _ => x == y,
            })
    }

    /// Our decoder accepts `bytes` exactly when postcard does (nothing left
    /// over), with the same values.
    fn agrees_with_postcard(bytes: &[u8]) -> Result<(), TestCaseError> {
        let ours = decode_image(bytes);
        let theirs = postcard::take_from_bytes::<Vec<Value>>(bytes)
            .ok()
            .filter(|(_, rest)| rest.is_empty())
            .map(|(v, _)| v);
        match (ours, theirs) {
            (Ok(a), Some(b)) => prop_assert!(same(&a, &b)),
            (Err(_), None) => {}
            (a, b) => prop_assert!(false, "{:?}: ours {:?}, postcard {:?}", bytes, a, b),
        }
        Ok(())
    }

    /// The body of an entry that inserts `images` into table `t`.
    fn insert_body(t: &str, images: &[Vec<u8>]) -> Vec<u8> {
        let refs: Vec<(&str, Op, &[u8])> = images
            .iter()
            .map(|image| (t, Op::Insert, image.as_slice()))
            .collect();
        encode_body(&refs)
    }

    #[test]
    fn the_image_codec_is_postcards_at_the_edges() {
        let edges = vec![
            Value::I64(i64::MIN),
            Value::I64(i64::MAX),
            Value::I64(-1),
            Value::I32(i32::MIN),
            Value::I32(i32::MAX),
            Value::Timestamp(i64::MIN),
            Value::F64(f64::NAN),
            Value::F64(-0.0),
            Value::Text("é\u{1F600}".into()),
            Value::Blob(vec![0; 200]),
        ];
        let mut ours = Vec::new();
        encode_image(&edges, &mut ours);
        assert_eq!(ours, postcard::to_allocvec(&edges).unwrap());
        assert!(same(&decode_image(&ours).unwrap(), &edges));
        // Postcard's limits: a u32 varint of 5 bytes ends at most with 0x0f,
        // a u64 one of 10 bytes with 0x01; longer ones are refused.
        for bytes in [
            &[1, 0x80, 0x80, 0x80, 0x80, 0x10][..],
            &[
                1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
            &[1, 4, 2],
            &[1, 5, 2, 0xc3, 0x28],
            &[1, 8],
        ] {
            assert!(decode_image(bytes).is_err(), "{bytes:?}");
            assert!(
                postcard::from_bytes::<Vec<Value>>(bytes).is_err(),
                "{bytes:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// The row image is the digest's input: the hand-written codec must
        /// write postcard's bytes and read them back.
        #[test]
        fn the_image_codec_writes_postcards_bytes(values in proptest::collection::vec(value(), 0..12)) {
            let mut ours = Vec::new();
            encode_image(&values, &mut ours);
            prop_assert_eq!(&ours, &postcard::to_allocvec(&values).unwrap());
            prop_assert!(same(&decode_image(&ours).unwrap(), &values));
        }

        /// Decoding over slots that hold other values (text over text, text
        /// over a number, a number over text...) gives the image's values,
        /// and leaves the slots outside the image alone.
        #[test]
        fn decoding_over_kept_values_gives_the_images_values(
            first in proptest::collection::vec(value(), 0..12),
            second in proptest::collection::vec(value(), 0..12),
            at in 0usize..4,
        ) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_image(&first, &mut a);
            encode_image(&second, &mut b);
            let mut out = Vec::new();
            prop_assert_eq!(decode_image_over(&a, &mut out, 0).unwrap(), first.len());
            let before = out.clone();
            prop_assert_eq!(decode_image_over(&b, &mut out, at).unwrap(), second.len());
            prop_assert!(same(&out[at..at + second.len()], &second));
            let len = before.len().max(at + second.len());
            prop_assert_eq!(out.len(), len);
            for i in (0..len).filter(|i| !(at..at + second.len()).contains(i)) {
                match before.get(i) {
                    Some(v) => prop_assert!(same(std::slice::from_ref(&out[i]), std::slice::from_ref(v))),
                    None => prop_assert!(matches!(out[i], Value::Null)),
                }
            }
        }

        /// On any bytes, the decoder accepts what postcard accepts, with the
        /// same values, and refuses what it refuses.
        #[test]
        fn the_image_decoder_agrees_with_postcard(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            agrees_with_postcard(&bytes)?;
        }

        /// The same on images one byte away from valid ones.
        #[test]
        fn the_image_decoder_agrees_with_postcard_near_valid_images(
            values in proptest::collection::vec(value(), 1..6),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = postcard::to_allocvec(&values).unwrap();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            agrees_with_postcard(&bytes)?;
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_body(&bytes);
            let _ = decode_image(&bytes);
            let mut with_version = vec![FORMAT_VERSION];
            with_version.extend_from_slice(&bytes);
            let _ = decode_body(&with_version);
            let mut packed = vec![PACKED];
            packed.extend_from_slice(&bytes);
            let _ = unpack_stored(&packed);
        }

        /// Whatever is stored, packed or not, reads back as the body.
        #[test]
        fn stored_bodies_read_back(rows in proptest::collection::vec(proptest::collection::vec(value(), 1..6), 0..80), repeat in 1usize..40) {
            let images: Vec<Vec<u8>> = (0..repeat)
                .flat_map(|_| rows.iter().map(|row| postcard::to_allocvec(row).unwrap()))
                .collect();
            let body = insert_body("t", &images);
            let stored = pack_stored(body.clone());
            prop_assert!(stored.len() <= body.len());
            prop_assert_eq!(unpack_stored(&stored).unwrap().into_owned(), body);
        }

        /// A packed body cut short or with a byte changed is refused, never
        /// read as another body (or a panic).
        #[test]
        fn damaged_packed_bodies_are_refused(at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
            let body = repetitive_body();
            let mut stored = pack_stored(body.clone());
            prop_assert_eq!(stored[0], PACKED);
            let i = at.index(stored.len());
            if cut {
                stored.truncate(i);
            } else {
                stored[i] = byte;
            }
            if let Ok(read) = unpack_stored(&stored) {
                // A changed literal byte may still unpack, to a body of the
                // same length: the body's own decoder and the entry's digest
                // catch what it changed. A changed first byte leaves bytes
                // read as they are, which no body decoder accepts.
                prop_assert!(read.len() == body.len() || decode_body(&read).is_err());
            }
        }
    }

    fn repetitive_body() -> Vec<u8> {
        let rows: Vec<Vec<u8>> = (0..200)
            .map(|i| {
                postcard::to_allocvec(&vec![
                    Value::I64(i),
                    Value::Text(format!("register {i} of cell {}: motor current", i % 7)),
                ])
                .unwrap()
            })
            .collect();
        insert_body("tag", &rows)
    }

    #[test]
    fn large_repetitive_bodies_are_stored_packed_and_small_ones_as_they_are() {
        let body = repetitive_body();
        let stored = pack_stored(body.clone());
        assert_eq!(stored[0], PACKED);
        assert!(
            stored.len() * 3 < body.len(),
            "{} of {}",
            stored.len(),
            body.len()
        );
        assert_eq!(unpack_stored(&stored).unwrap().into_owned(), body);
        // An entry carries the stored bytes and reads as the body.
        let entry = |body| LogEntry {
            position: 1,
            epoch: 1,
            committed_at: 0,
            digest: Digest::EMPTY,
            body,
        };
        let packed = entry(stored.clone());
        assert_eq!(packed.plain_len(), body.len());
        assert_eq!(&*packed.plain_body().unwrap(), &body[..]);
        assert_eq!(packed.change_count().unwrap(), 200);
        // A packed body is passed on as it is, never packed twice.
        assert_eq!(pack_stored(stored.clone()), stored);

        let small = encode_body(&[("t", Op::Insert, &[1, 2, 3][..])]);
        assert!(small.len() < PACK_MIN_BYTES);
        assert_eq!(pack_stored(small.clone()), small);
        let plain = entry(small.clone());
        assert_eq!(plain.plain_len(), small.len());
        assert!(matches!(plain.plain_body().unwrap(), Cow::Borrowed(_)));
    }

    /// A kept packing buffer, left longer and full of an earlier body's
    /// bytes, changes nothing in what is stored.
    #[test]
    fn packing_through_a_kept_buffer_stores_the_same_bytes() {
        let large = repetitive_body();
        let short: Vec<u8> = large[..large.len() / 3].to_vec();
        let mut scratch = Vec::new();
        for body in [&large, &short, &large] {
            let stored = pack_stored_with(body, &mut scratch);
            assert_eq!(stored, pack_stored(body.clone()));
            assert_eq!(stored.len(), stored.capacity(), "allocated exactly");
            assert_eq!(&*unpack_stored(&stored).unwrap(), &body[..]);
        }
        let small = encode_body(&[("t", Op::Insert, &[1, 2, 3][..])]);
        assert_eq!(pack_stored_with(&small, &mut scratch), small);
        // Unpacking through a kept buffer, longer than the body and holding
        // another's bytes, reads each body exactly.
        let mut kept = vec![7u8; large.len() * 2];
        for body in [&large, &short, &small] {
            let stored = pack_stored(body.clone());
            assert_eq!(unpack_stored_with(&stored, &mut kept).unwrap(), &body[..]);
        }
        let mut damaged = pack_stored(large.clone());
        damaged.truncate(damaged.len() / 2);
        assert!(unpack_stored_with(&damaged, &mut kept).is_err());
        // A body finished into a kept buffer is the body finished afresh.
        let mut w = BodyWriter::new();
        w.push("t", Op::Insert, &[9; 40]);
        let mut out = large.clone();
        w.finish_into(&mut out);
        assert_eq!(out, w.finish());
    }

    #[test]
    fn bodies_that_do_not_shrink_are_stored_as_they_are() {
        // 40 KiB of bytes from a xorshift: nothing to pack, found by the probe.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..40 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let body = encode_body(&[("blob", Op::Insert, &noise[..])]);
        assert_eq!(pack_stored(body.clone()), body);
        assert_eq!(unpack_stored(&body).unwrap().into_owned(), body);
    }

    #[test]
    fn a_packed_body_stating_an_impossible_length_is_refused_before_allocating() {
        let mut stored = vec![PACKED];
        put_varint(&mut stored, u64::MAX / 2);
        stored.extend_from_slice(&[0x10, 0x41]);
        let e = unpack_stored(&stored).unwrap_err();
        assert!(e.to_string().contains("cannot hold"), "{e}");
    }
}
