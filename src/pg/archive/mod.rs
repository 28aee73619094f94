//! A streaming filter over pg_dump's custom archive format: it counts each table's rows and
//! re-chunks the data blocks.
//!
//! The dump passes through [`ArchiveFilter::feed`] once, in pieces of any size. The header and
//! table of contents (TOC) map each data block's dump id to its table; each `TABLE DATA` block is
//! a sequence of length-prefixed chunks holding COPY text rows, one per line, ending with the line
//! `\.`. Counting those lines gives the exact row count of every table as of the dump's own
//! snapshot, at almost no cost. [`ArchiveFilter::finish`] also proves the stream is structurally
//! complete: a dump that stops inside a block is reported as truncated.
//!
//! Re-chunking: uncompressed (`--compress=0`) pg_dump writes every COPY row as its own chunk with
//! a 5-byte length header; those headers cost zstd 3-4 % of the stored size. The filter writes the
//! same archive with each block's data in chunks of [`CHUNK`] bytes instead (the last of a block
//! shorter): same header, same TOC, same data bytes in the same order, only the chunk boundaries
//! move, and where they go depends on the data alone, so an unchanged database gives the same
//! archive bytes in every backup. pg_restore reads chunks as a byte
//! stream (it must: compressed archives never align chunks with rows), so the result restores
//! identically and is still an ordinary custom-format archive for `pg_restore`.
//!
//! Layout (PostgreSQL's `pg_backup_archiver.c` and `pg_backup_custom.c`): an integer is a sign
//! byte followed by `int_size` little-endian bytes; a string is an integer length (-1 for NULL)
//! and the bytes. Supported archive versions: 1.12 to 1.16 (PostgreSQL 9.0 to 17+); a newer
//! version passes through unchanged, without row counts.

mod format;

use format::{Header, Parse, parse_header};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// The data an output chunk holds (a block's last chunk holds the rest): two backups of the same
/// data are the same bytes, whatever sizes the reads from pg_dump's pipe had.
const CHUNK: usize = 256 * 1024;

/// Rows of one table as of the dump's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub name: String,
    pub rows: u64,
}

/// An object `pg_restore --table` selects: a table, view, materialized view, sequence or foreign
/// table (`kind`, in lower case as the TOC names it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    pub kind: String,
}

/// What the archive said about itself, plus the row counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub archive_version: String,
    pub database: String,
    pub server_version: String,
    pub dump_version: String,
    pub tables: Vec<TableRows>,
    /// Everything `--table` can select, and every schema, from the TOC.
    pub relations: Vec<Relation>,
    pub schemas: Vec<String>,
    pub large_objects: u64,
    /// False when the archive version was unknown and the stream passed through unchanged.
    pub understood: bool,
    /// Where each data block starts in the (re-chunked) archive.
    pub blocks: Vec<BlockStart>,
}

/// A data block's position in the archive (`schema.table` for table data, `blobs#N` for the N-th
/// large-object block): incremental backups align on these.
pub use crate::pipeline::delta::BlockStart;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("not a pg_dump custom-format archive (the stream does not start with PGDMP)")]
    NotCustomFormat,
    #[error("the dump is empty: pg_dump wrote nothing")]
    Empty,
    #[error("unsupported pg_dump archive version {0}: this pgbackd reads versions 1.12 to 1.16")]
    UnsupportedVersion(String),
    #[error("malformed archive: {0}")]
    Malformed(String),
    #[error("the dump ended early, {0}: it is truncated")]
    Truncated(&'static str),
}

/// Incremental integer reader (sign byte + `int_size` bytes), tolerant of any split.
#[derive(Default)]
struct IntAcc {
    buf: [u8; 9],
    have: usize,
}

impl IntAcc {
    /// Consumes from `data` until the integer is complete; returns it and the bytes consumed.
    fn take(&mut self, data: &[u8], int_size: usize) -> (Option<i64>, usize) {
        let need = 1 + int_size;
        let n = (need - self.have).min(data.len());
        self.buf[self.have..self.have + n].copy_from_slice(&data[..n]);
        self.have += n;
        if self.have < need {
            return (None, n);
        }
        self.have = 0;
        let mut v: i64 = 0;
        for (i, b) in self.buf[1..need].iter().enumerate() {
            v |= (*b as i64) << (8 * i);
        }
        (Some(if self.buf[0] != 0 { -v } else { v }), n)
    }
}

enum State {
    Head,
    /// An archive version this filter does not know: copied verbatim.
    PassThrough {
        version: String,
    },
    BlockType,
    BlockId {
        kind: u8,
    },
    ChunkLen {
        table: Option<usize>,
    },
    ChunkData {
        table: Option<usize>,
        left: u64,
    },
    BlobOid,
    BlobChunkLen,
    BlobChunkData {
        left: u64,
    },
}

/// Per table: rows so far and the state of the current line.
struct Counting {
    rows: u64,
    line_len: u64,
    line_head: [u8; 2],
    done: bool,
    seen: bool,
}

pub struct ArchiveFilter {
    state: State,
    head: Vec<u8>,
    header: Option<Header>,
    int: IntAcc,
    counts: Vec<((String, String), Counting)>,
    by_dump_id: HashMap<i64, usize>,
    large_objects: u64,
    /// The data of the output chunk being filled (less than [`CHUNK`] bytes), kept here across
    /// `feed` calls so that chunk boundaries depend on the data only, never on how the pipe
    /// happened to split it.
    pending: Vec<u8>,
    /// Bytes written by earlier `feed` calls, and `out.len()` when this call started: together
    /// the absolute position of what is written now.
    emitted: u64,
    feed_start: usize,
    block_start: u64,
    blob_blocks: u32,
    blocks: Vec<BlockStart>,
    /// Shared with the pipeline while streaming (incremental alignment).
    shared_blocks: Option<std::sync::Arc<std::sync::Mutex<Vec<BlockStart>>>>,
}

impl Default for ArchiveFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::pipeline::Filter for ArchiveFilter {
    type Summary = ArchiveSummary;
    type Error = ArchiveError;
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), ArchiveError> {
        ArchiveFilter::feed(self, data, out)
    }
    fn finish(self) -> Result<ArchiveSummary, ArchiveError> {
        ArchiveFilter::finish(self)
    }
}

impl ArchiveFilter {
    pub fn new() -> Self {
        ArchiveFilter {
            state: State::Head,
            head: Vec::new(),
            header: None,
            int: IntAcc::default(),
            counts: Vec::new(),
            by_dump_id: HashMap::new(),
            large_objects: 0,
            pending: Vec::new(),
            emitted: 0,
            feed_start: 0,
            block_start: 0,
            blob_blocks: 0,
            blocks: Vec::new(),
            shared_blocks: None,
        }
    }

    /// Also publishes each block start to `shared` as soon as it is seen.
    pub fn with_shared_blocks(mut self, shared: std::sync::Arc<std::sync::Mutex<Vec<BlockStart>>>) -> Self {
        self.shared_blocks = Some(shared);
        self
    }

    fn position(&self, out: &[u8]) -> u64 {
        self.emitted + (out.len() - self.feed_start) as u64
    }

    /// Feeds the next piece of the stream, appending the re-chunked archive to `out` (all but
    /// the data of a chunk not yet full, which the next call or the block's end writes).
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), ArchiveError> {
        self.feed_start = out.len();
        while !data.is_empty() {
            let used = self.step(data, out)?;
            data = &data[used..];
        }
        self.emitted += (out.len() - self.feed_start) as u64;
        self.feed_start = out.len();
        Ok(())
    }

    fn write_int(&self, out: &mut Vec<u8>, v: i64) {
        let int_size = self.int_size();
        out.push(u8::from(v < 0));
        out.extend_from_slice(&v.unsigned_abs().to_le_bytes()[..int_size]);
    }

    /// Writes one output chunk: its length, then its data.
    fn write_chunk(&self, out: &mut Vec<u8>, data: &[u8]) {
        self.write_int(out, data.len() as i64);
        out.extend_from_slice(data);
    }

    /// Takes chunk data: every [`CHUNK`] bytes of it become an output chunk, the rest waits.
    fn chunk_data(&mut self, out: &mut Vec<u8>, mut data: &[u8]) {
        if !self.pending.is_empty() {
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < CHUNK {
                return;
            }
            self.write_chunk(out, &self.pending);
            self.pending.clear();
        }
        // whole chunks straight from the input, without a copy into `pending`
        while data.len() >= CHUNK {
            self.write_chunk(out, &data[..CHUNK]);
            data = &data[CHUNK..];
        }
        self.pending.extend_from_slice(data);
    }

    /// Writes what waits as the block's last chunk (none when nothing waits).
    fn close_chunk(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.write_chunk(out, &self.pending);
            self.pending.clear();
        }
    }

    /// Ends a run of chunks (a table's data or one large object): the zero length.
    fn end_chunks(&mut self, out: &mut Vec<u8>) {
        self.close_chunk(out);
        self.write_int(out, 0);
    }

    fn int_size(&self) -> usize {
        self.header.as_ref().map(|h| h.int_size).unwrap_or(4)
    }

    fn step(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<usize, ArchiveError> {
        let int_size = self.int_size();
        match &mut self.state {
            State::Head => {
                // The header and TOC are parsed whole; retry as more bytes arrive.
                let before = self.head.len();
                self.head.extend_from_slice(data);
                match parse_header(&self.head) {
                    Ok((header, used)) => {
                        for (id, table) in &header.tables {
                            self.by_dump_id.insert(*id, self.counts.len());
                            self.counts.push((
                                table.clone(),
                                Counting { rows: 0, line_len: 0, line_head: [0; 2], done: false, seen: false },
                            ));
                        }
                        out.extend_from_slice(&self.head[..used]);
                        self.header = Some(header);
                        self.head = Vec::new();
                        self.state = State::BlockType;
                        Ok(used - before)
                    }
                    Err(Parse::NeedMore) => Ok(data.len()),
                    Err(Parse::Bad(ArchiveError::UnsupportedVersion(version))) => {
                        out.extend_from_slice(&self.head);
                        self.head = Vec::new();
                        self.state = State::PassThrough { version };
                        Ok(data.len())
                    }
                    Err(Parse::Bad(e)) => Err(e),
                }
            }
            State::PassThrough { .. } => {
                out.extend_from_slice(data);
                Ok(data.len())
            }
            State::BlockType => {
                let kind = data[0];
                if kind != BLK_DATA && kind != BLK_BLOBS {
                    return Err(ArchiveError::Malformed(format!("unknown data block type {kind}")));
                }
                self.block_start = self.position(out);
                out.push(kind);
                self.state = State::BlockId { kind };
                Ok(1)
            }
            State::BlockId { kind } => {
                let kind = *kind;
                let (v, used) = self.int.take(data, int_size);
                out.extend_from_slice(&data[..used]);
                if let Some(id) = v {
                    let key;
                    self.state = if kind == BLK_BLOBS {
                        self.blob_blocks += 1;
                        key = format!("blobs#{}", self.blob_blocks);
                        State::BlobOid
                    } else {
                        let table = self.by_dump_id.get(&id).copied();
                        key = match table {
                            Some(t) => {
                                self.counts[t].1.seen = true;
                                format!("{}.{}", self.counts[t].0.0, self.counts[t].0.1)
                            }
                            None => format!("dump#{id}"),
                        };
                        State::ChunkLen { table }
                    };
                    let start = BlockStart { key, raw_offset: self.block_start };
                    if let Some(shared) = &self.shared_blocks
                        && let Ok(mut s) = shared.lock()
                    {
                        s.push(start.clone());
                    }
                    self.blocks.push(start);
                }
                Ok(used)
            }
            State::ChunkLen { table } => {
                let table = *table;
                let (v, used) = self.int.take(data, int_size);
                match v {
                    Some(0) => {
                        self.end_chunks(out);
                        self.state = State::BlockType;
                    }
                    Some(n) if n < 0 => {
                        return Err(ArchiveError::Malformed(format!("negative chunk length {n}")));
                    }
                    Some(n) => self.state = State::ChunkData { table, left: n as u64 },
                    None => {}
                }
                Ok(used)
            }
            State::ChunkData { table, left } => {
                let n = (*left).min(data.len() as u64) as usize;
                let table = *table;
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::ChunkLen { table };
                }
                if let Some(t) = table {
                    count_lines(&mut self.counts[t].1, &data[..n]);
                }
                self.chunk_data(out, &data[..n]);
                Ok(n)
            }
            State::BlobOid => {
                let (v, used) = self.int.take(data, int_size);
                out.extend_from_slice(&data[..used]);
                match v {
                    Some(0) => self.state = State::BlockType,
                    Some(_) => {
                        self.large_objects += 1;
                        self.state = State::BlobChunkLen;
                    }
                    None => {}
                }
                Ok(used)
            }
            State::BlobChunkLen => {
                let (v, used) = self.int.take(data, int_size);
                match v {
                    Some(0) => {
                        self.end_chunks(out);
                        self.state = State::BlobOid;
                    }
                    Some(n) if n < 0 => {
                        return Err(ArchiveError::Malformed(format!("negative chunk length {n}")));
                    }
                    Some(n) => self.state = State::BlobChunkData { left: n as u64 },
                    None => {}
                }
                Ok(used)
            }
            State::BlobChunkData { left } => {
                let n = (*left).min(data.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::BlobChunkLen;
                }
                self.chunk_data(out, &data[..n]);
                Ok(n)
            }
        }
    }

    /// Ends the stream: the summary, or an error if it stopped inside the header or a block.
    pub fn finish(self) -> Result<ArchiveSummary, ArchiveError> {
        let where_ = match self.state {
            State::PassThrough { version } => {
                return Ok(ArchiveSummary {
                    archive_version: version,
                    database: String::new(),
                    server_version: String::new(),
                    dump_version: String::new(),
                    tables: Vec::new(),
                    relations: Vec::new(),
                    schemas: Vec::new(),
                    large_objects: 0,
                    understood: false,
                    blocks: Vec::new(),
                });
            }
            State::Head => {
                if self.head.is_empty() {
                    return Err(ArchiveError::Empty);
                }
                if self.head.len() >= 5 && &self.head[..5] != b"PGDMP" {
                    return Err(ArchiveError::NotCustomFormat);
                }
                return match parse_header(&self.head) {
                    Err(Parse::Bad(e)) => Err(e),
                    _ => Err(ArchiveError::Truncated("inside the header or table of contents")),
                };
            }
            State::BlockType if self.int.have == 0 => None,
            State::BlockType => Some("between data blocks"),
            State::BlockId { .. } => Some("at the start of a data block"),
            State::ChunkLen { .. } | State::ChunkData { .. } => Some("inside a table's data"),
            State::BlobOid | State::BlobChunkLen | State::BlobChunkData { .. } => Some("inside large-object data"),
        };
        if let Some(w) = where_ {
            return Err(ArchiveError::Truncated(w));
        }
        let header = self.header.expect("header parsed before data blocks");
        let mut tables: Vec<TableRows> = self
            .counts
            .into_iter()
            .filter(|(_, c)| c.seen)
            .map(|((schema, name), c)| TableRows { schema, name, rows: c.rows })
            .collect();
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        Ok(ArchiveSummary {
            archive_version: header.version_text,
            database: header.database,
            server_version: header.server_version,
            dump_version: header.dump_version,
            tables,
            relations: header.relations,
            schemas: header.schemas.into_iter().collect(),
            large_objects: self.large_objects,
            understood: true,
            blocks: self.blocks,
        })
    }
}

/// Writes the data offsets into the TOC of an archive in `file` whose data blocks start at
/// `blocks` (as recorded in the manifest), where pg_dump, writing to a pipe, could not: a parallel
/// pg_restore then seeks to each block instead of scanning for it (which makes it quadratic in
/// the number of tables). Returns how many entries it set; an archive it does not understand is
/// left as it is.
pub fn set_data_offsets(file: &std::fs::File, blocks: &[u64]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    const OFFSET_POS_NOT_SET: u8 = 1;
    const OFFSET_POS_SET: u8 = 2;
    let Some(&first) = blocks.first() else { return Ok(0) };
    let mut head = vec![0u8; usize::try_from(first).unwrap_or(usize::MAX).min(256 << 20)];
    file.read_exact_at(&mut head, 0)?;
    let Ok((header, _)) = parse_header(&head) else { return Ok(0) };
    let mut at_block = HashMap::new();
    let mut block_head = vec![0u8; 2 + header.int_size];
    for &b in blocks {
        file.read_exact_at(&mut block_head, b)?;
        let mut c = format::Cursor { data: &block_head[1..], pos: 0, int_size: header.int_size };
        if let Ok(id) = c.int() {
            at_block.insert(id, b);
        }
    }
    let mut set = 0;
    for (id, pos, flag) in &header.offset_fields {
        let Some(&offset) = at_block.get(id) else { continue };
        if *flag != OFFSET_POS_NOT_SET {
            continue;
        }
        let mut field = vec![OFFSET_POS_SET];
        field.extend((0..header.off_size).map(|i| if i < 8 { (offset >> (8 * i)) as u8 } else { 0 }));
        file.write_all_at(&field, *pos as u64)?;
        set += 1;
    }
    Ok(set)
}

/// Counts COPY text rows: every line up to the terminator line `\.`.
fn count_lines(c: &mut Counting, data: &[u8]) {
    if c.done {
        return;
    }
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', data) {
        note_line_bytes(c, &data[start..nl]);
        if c.line_len == 2 && c.line_head == *b"\\." {
            c.done = true;
            return;
        }
        c.rows += 1;
        c.line_len = 0;
        start = nl + 1;
    }
    note_line_bytes(c, &data[start..]);
}

fn note_line_bytes(c: &mut Counting, bytes: &[u8]) {
    let mut i = 0;
    while c.line_len < 2 && i < bytes.len() {
        c.line_head[c.line_len as usize] = bytes[i];
        c.line_len += 1;
        i += 1;
    }
    c.line_len += (bytes.len() - i) as u64;
}

#[cfg(test)]
mod tests {
    use super::format::Cursor;
    use super::*;

    /// A tiny archive built by hand: version 1.14, one table with 3 rows, one large object.
    fn archive() -> (Vec<u8>, Vec<usize>) {
        let mut boundaries = Vec::new();
        let mut a = Vec::new();
        let int = |a: &mut Vec<u8>, v: i64| {
            a.push(if v < 0 { 1 } else { 0 });
            a.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        };
        let s = |a: &mut Vec<u8>, v: Option<&str>| match v {
            None => {
                a.push(1);
                a.extend_from_slice(&1u32.to_le_bytes());
            }
            Some(t) => {
                a.push(0);
                a.extend_from_slice(&(t.len() as u32).to_le_bytes());
                a.extend_from_slice(t.as_bytes());
            }
        };
        a.extend_from_slice(b"PGDMP");
        a.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
        int(&mut a, 0);
        for _ in 0..7 {
            int(&mut a, 1);
        }
        s(&mut a, Some("db"));
        s(&mut a, Some("15.1"));
        s(&mut a, Some("15.1"));
        int(&mut a, 1); // one TOC entry
        int(&mut a, 7);
        int(&mut a, 1);
        s(&mut a, Some("0"));
        s(&mut a, Some("0"));
        s(&mut a, Some("t"));
        s(&mut a, Some("TABLE DATA"));
        int(&mut a, 3);
        s(&mut a, Some(""));
        s(&mut a, Some(""));
        s(&mut a, Some("COPY public.t (a) FROM stdin;\n"));
        s(&mut a, Some("app"));
        s(&mut a, None);
        s(&mut a, Some("heap"));
        s(&mut a, Some("postgres"));
        s(&mut a, Some("false"));
        s(&mut a, None);
        a.push(1);
        a.extend_from_slice(&[0; 8]);
        // data block for dump id 7: three rows split oddly over chunks, then the terminator
        boundaries.push(a.len());
        a.push(BLK_DATA);
        int(&mut a, 7);
        for chunk in ["1\tx\n2\t", "y\n", "\\\\.\n", "\\.\n\n\n"] {
            int(&mut a, chunk.len() as i64);
            a.extend_from_slice(chunk.as_bytes());
        }
        int(&mut a, 0);
        // one large object
        boundaries.push(a.len());
        a.push(BLK_BLOBS);
        int(&mut a, 8);
        int(&mut a, 16400);
        int(&mut a, 5);
        a.extend_from_slice(b"hello");
        int(&mut a, 0);
        int(&mut a, 0);
        (a, boundaries)
    }

    #[test]
    fn data_offsets_are_written_into_the_toc_at_each_block() {
        let (a, _) = archive();
        let mut f = ArchiveFilter::new();
        let mut out = Vec::new();
        f.feed(&a, &mut out).unwrap();
        let summary = f.finish().unwrap();
        let blocks: Vec<u64> = summary.blocks.iter().map(|b| b.raw_offset).collect();
        assert!(!blocks.is_empty());
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, &out).unwrap();
        let set = set_data_offsets(&file, &blocks).unwrap();
        assert_eq!(set, 1, "the TABLE DATA entry (the large-object block has no TOC entry in this archive)");
        let mut patched = vec![0u8; out.len()];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut patched, 0).unwrap();
        let (header, _) = parse_header(&patched).ok().unwrap();
        for (_, pos, flag) in header.offset_fields.iter().filter(|(id, _, _)| header.tables.contains_key(id)) {
            assert_eq!(*flag, 2, "a data entry's offset is set");
            let mut offset = 0u64;
            for i in 0..header.off_size {
                offset |= u64::from(patched[pos + 1 + i]) << (8 * i);
            }
            assert!(blocks.contains(&offset), "it points at a block start");
            assert_eq!(patched[offset as usize], BLK_DATA);
        }
        // the patched archive is the same archive to the filter (same rows, same blocks)
        let mut again = ArchiveFilter::new();
        again.feed(&patched, &mut Vec::new()).unwrap();
        assert_eq!(again.finish().unwrap().tables, summary.tables);
    }

    #[test]
    fn counts_rows_whatever_the_split() {
        let (a, _) = archive();
        for piece in [1, 2, 3, 7, 64, a.len()] {
            let mut rc = ArchiveFilter::new();
            let mut out = Vec::new();
            for chunk in a.chunks(piece) {
                rc.feed(chunk, &mut out).unwrap();
            }
            let s = rc.finish().unwrap();
            // the re-chunked archive holds the same data: read again, it gives the same summary
            // and the same logical content
            let mut again = ArchiveFilter::new();
            let mut out2 = Vec::new();
            again.feed(&out, &mut out2).unwrap();
            // the same facts, the same blocks: the output is already in whole chunks
            let s2 = again.finish().unwrap();
            assert_eq!(s2, s);
            assert_eq!(out2, out, "piece {piece}");
            assert_eq!(logical_content(&a), logical_content(&out));
            assert_eq!(logical_content(&out2), logical_content(&out));
            // block starts point at the block type bytes of the output
            let keys: Vec<&str> = s.blocks.iter().map(|b| b.key.as_str()).collect();
            assert_eq!(keys, ["app.t", "blobs#1"]);
            assert_eq!(out[s.blocks[0].raw_offset as usize], BLK_DATA, "piece {piece}");
            assert_eq!(out[s.blocks[1].raw_offset as usize], BLK_BLOBS, "piece {piece}");
            if piece == a.len() {
                // fed whole, each block's data becomes one chunk
                assert!(out.len() < a.len(), "{} >= {}", out.len(), a.len());
            }
            // "\\\\." is an escaped backslash row, not the terminator
            assert_eq!(s.tables, vec![TableRows { schema: "app".into(), name: "t".into(), rows: 3 }], "piece {piece}");
            assert_eq!(s.large_objects, 1);
            assert_eq!(s.database, "db");
        }
    }

    /// `archive()` with its table's block replaced by `rows` rows, each its own chunk, as
    /// `pg_dump --compress=0` writes them.
    fn big_archive(rows: usize) -> Vec<u8> {
        let (a, boundaries) = archive();
        let mut big = a[..boundaries[0]].to_vec();
        let int = |a: &mut Vec<u8>, v: i64| {
            a.push(0);
            a.extend_from_slice(&(v as u32).to_le_bytes());
        };
        big.push(BLK_DATA);
        int(&mut big, 7);
        for i in 0..rows {
            let row = format!("{i}\trow number {i} with some text\n");
            int(&mut big, row.len() as i64);
            big.extend_from_slice(row.as_bytes());
        }
        int(&mut big, 3);
        big.extend_from_slice(b"\\.\n");
        int(&mut big, 0);
        big.extend_from_slice(&a[boundaries[1]..]);
        big
    }

    #[test]
    fn the_output_is_the_same_bytes_however_the_stream_was_split() {
        let a = big_archive(40_000); // about 1.4 MB of rows: several full chunks and a short one
        let run = |pieces: &mut dyn Iterator<Item = usize>| {
            let mut f = ArchiveFilter::new();
            let (mut out, mut at) = (Vec::new(), 0);
            while at < a.len() {
                let n = pieces.next().unwrap().clamp(1, a.len() - at);
                f.feed(&a[at..at + n], &mut out).unwrap();
                at += n;
            }
            let s = f.finish().unwrap();
            assert_eq!(s.tables[0].rows, 40_000);
            (out, s.blocks)
        };
        let (reference, blocks) = run(&mut std::iter::repeat(a.len()));
        for piece in [1usize, 977, 4096, 65_536, 1 << 20] {
            assert_eq!(run(&mut std::iter::repeat(piece)), (reference.clone(), blocks.clone()), "pieces of {piece}");
        }
        // pipe reads of varying sizes
        let mut seed = 7u64;
        let mut random = std::iter::from_fn(|| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            Some((seed >> 33) as usize % 200_000)
        });
        assert_eq!(run(&mut random), (reference.clone(), blocks.clone()));
        // full chunks of CHUNK bytes: reading the output again changes nothing
        let mut again = ArchiveFilter::new();
        let mut twice = Vec::new();
        again.feed(&reference, &mut twice).unwrap();
        assert_eq!(twice, reference);
        assert!(reference.len() < a.len(), "the per-row chunk headers are gone");
        assert_eq!(logical_content(&reference), logical_content(&a));
    }

    #[test]
    fn truncation_is_detected_except_between_blocks() {
        let (a, boundaries) = archive();
        for cut in 1..a.len() {
            let mut rc = ArchiveFilter::new();
            rc.feed(&a[..cut], &mut Vec::new()).unwrap();
            let accepted = rc.finish().is_ok();
            // between two blocks a stream may legitimately end: pg_dump's exit status decides
            assert_eq!(accepted, boundaries.contains(&cut), "cut at {cut} of {}", a.len());
        }
    }

    #[test]
    fn rejects_other_formats() {
        let mut rc = ArchiveFilter::new();
        assert_eq!(rc.feed(b"--\n-- PostgreSQL database dump\n", &mut Vec::new()), Err(ArchiveError::NotCustomFormat));
    }

    #[test]
    fn unknown_versions_pass_through_unchanged() {
        let (mut a, _) = archive();
        a[6] = 99; // minor version 1.99
        let mut rc = ArchiveFilter::new();
        let mut out = Vec::new();
        for chunk in a.chunks(10) {
            rc.feed(chunk, &mut out).unwrap();
        }
        let s = rc.finish().unwrap();
        assert!(!s.understood);
        assert_eq!(s.archive_version, "1.99.0");
        assert_eq!(out, a);
    }

    /// Header bytes, then per block: its type, id and the concatenation of its chunk payloads.
    fn logical_content(a: &[u8]) -> Vec<(u8, i64, Vec<u8>)> {
        let (_, head_len) = match parse_header(a) {
            Ok(h) => h,
            Err(_) => panic!("header"),
        };
        let mut c = Cursor { data: a, pos: head_len, int_size: 4 };
        let mut blocks = Vec::new();
        while c.pos < a.len() {
            let kind = c.byte().ok().unwrap();
            let id = c.int().ok().unwrap();
            let mut payload = Vec::new();
            if kind == BLK_DATA {
                loop {
                    let n = c.int().ok().unwrap();
                    if n == 0 {
                        break;
                    }
                    payload.extend_from_slice(c.bytes(n as usize).ok().unwrap());
                }
            } else {
                loop {
                    let oid = c.int().ok().unwrap();
                    payload.extend_from_slice(&oid.to_le_bytes());
                    if oid == 0 {
                        break;
                    }
                    loop {
                        let n = c.int().ok().unwrap();
                        if n == 0 {
                            break;
                        }
                        payload.extend_from_slice(c.bytes(n as usize).ok().unwrap());
                    }
                }
            }
            blocks.push((kind, id, payload));
        }
        blocks
    }
}
