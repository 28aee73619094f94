//! `pg_basebackup`: what pgbackd reads from the tar stream it writes while the stream passes on
//! to storage, and the proof that the stream is a whole tar archive.
//!
//! `pg_basebackup -D - -Ft` writes the data directory as one ustar archive with PostgreSQL's own
//! `backup_manifest` appended as its last member. [`TarFilter`] walks the member headers (each
//! checksummed) without copying the data, keeps the few small members a manifest needs
//! (`backup_label`, `tablespace_map`, `global/pg_control`, `backup_manifest`), and fails a stream
//! that stops before the archive's two zero blocks: a pg_basebackup that died midway.

use crate::wal::timeline::Lsn;
use serde::{Deserialize, Serialize};

const BLOCK: usize = 512;
/// The largest `backup_manifest` kept (about 3 M files); a larger one fails the backup.
const MAX_MANIFEST: u64 = 1 << 30;
/// The largest of the other kept members.
const MAX_SMALL: u64 = 1 << 20;

/// Why a stream is not a whole base backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("the stream is empty")]
    Empty,
    #[error("the stream ends inside the archive, at byte {0} (pg_basebackup stopped midway)")]
    Truncated(u64),
    #[error("the tar header at byte {0} is damaged (its checksum does not match)")]
    BadHeader(u64),
    #[error("the archive's member {name} is {size} bytes, more than pgbackd keeps in memory ({max} bytes)")]
    TooLarge { name: String, size: u64, max: u64 },
    #[error("data follows the end of the archive at byte {0}")]
    TrailingData(u64),
}

/// What the stream held besides the data files.
#[derive(Debug, Default)]
pub struct TarSummary {
    pub members: u64,
    pub backup_label: Option<Vec<u8>>,
    pub tablespace_map: Option<Vec<u8>>,
    pub pg_control: Option<Vec<u8>>,
    pub backup_manifest: Option<Vec<u8>>,
}

enum State {
    /// Reading a header block; `zeros` end-of-archive blocks seen so far.
    Header { zeros: u8 },
    /// Inside a member: bytes of data left, then padding to the block.
    Data { left: u64, pad: u64, keep: Option<Kept> },
    /// After the two zero blocks: only zeros may follow.
    End,
}

#[derive(Clone, Copy)]
enum Kept {
    Label,
    TablespaceMap,
    Control,
    Manifest,
    /// A GNU long name: the next member's name.
    LongName,
}

/// Walks a tar stream as it passes (a [`crate::pipeline::Filter`]).
pub struct TarFilter {
    state: State,
    header: Vec<u8>,
    offset: u64,
    long_name: Option<Vec<u8>>,
    kept: Vec<u8>,
    summary: TarSummary,
}

impl Default for TarFilter {
    fn default() -> Self {
        TarFilter {
            state: State::Header { zeros: 0 },
            header: Vec::with_capacity(BLOCK),
            offset: 0,
            long_name: None,
            kept: Vec::new(),
            summary: TarSummary::default(),
        }
    }
}

impl TarFilter {
    pub fn new() -> TarFilter {
        TarFilter::default()
    }

    fn walk(&mut self, mut data: &[u8]) -> Result<(), TarError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Header { zeros } => {
                    let take = (BLOCK - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.header.len() < BLOCK {
                        continue;
                    }
                    let block = std::mem::take(&mut self.header);
                    if block.iter().all(|&b| b == 0) {
                        *zeros += 1;
                        if *zeros == 2 {
                            self.state = State::End;
                        }
                    } else {
                        let at = self.offset - BLOCK as u64;
                        self.state = self.member(&block, at)?;
                    }
                    self.header = block;
                    self.header.clear();
                }
                State::Data { left, pad, keep } => {
                    let take = (*left + *pad).min(data.len() as u64) as usize;
                    let data_part = (*left).min(take as u64) as usize;
                    if keep.is_some() {
                        self.kept.extend_from_slice(&data[..data_part]);
                    }
                    *left -= data_part as u64;
                    *pad -= (take - data_part) as u64;
                    data = &data[take..];
                    self.offset += take as u64;
                    if *left == 0 && *pad == 0 {
                        let kept = std::mem::take(&mut self.kept);
                        let s = &mut self.summary;
                        match keep {
                            Some(Kept::Label) => s.backup_label = Some(kept),
                            Some(Kept::TablespaceMap) => s.tablespace_map = Some(kept),
                            Some(Kept::Control) => s.pg_control = Some(kept),
                            Some(Kept::Manifest) => s.backup_manifest = Some(kept),
                            Some(Kept::LongName) => self.long_name = Some(kept),
                            None => {}
                        }
                        self.state = State::Header { zeros: 0 };
                    }
                }
                State::End => {
                    if let Some(i) = data.iter().position(|&b| b != 0) {
                        return Err(TarError::TrailingData(self.offset + i as u64));
                    }
                    self.offset += data.len() as u64;
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// The state after the header of a member.
    fn member(&mut self, h: &[u8], at: u64) -> Result<State, TarError> {
        if !checksum_ok(h) {
            return Err(TarError::BadHeader(at));
        }
        let size = parse_size(&h[124..136]).ok_or(TarError::BadHeader(at))?;
        let kind = h[156];
        let name = match self.long_name.take() {
            Some(long) => trim_nul(&long).to_vec(),
            None => {
                let name = trim_nul(&h[0..100]);
                let prefix = if &h[257..262] == b"ustar" { trim_nul(&h[345..500]) } else { &[][..] };
                if prefix.is_empty() { name.to_vec() } else { [prefix, b"/", name].concat() }
            }
        };
        let keep = match (kind, name.as_slice()) {
            (b'L', _) => Some(Kept::LongName),
            (b'0' | 0, b"backup_label") => Some(Kept::Label),
            (b'0' | 0, b"tablespace_map") => Some(Kept::TablespaceMap),
            (b'0' | 0, b"global/pg_control") => Some(Kept::Control),
            (b'0' | 0, b"backup_manifest") => Some(Kept::Manifest),
            _ => None,
        };
        if kind != b'L' {
            self.summary.members += 1;
        }
        let max = if matches!(keep, Some(Kept::Manifest)) { MAX_MANIFEST } else { MAX_SMALL };
        if keep.is_some() && size > max {
            return Err(TarError::TooLarge { name: String::from_utf8_lossy(&name).into_owned(), size, max });
        }
        // links and directories carry no data, whatever their size field says
        let size = if matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') { 0 } else { size };
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        Ok(if size == 0 { State::Header { zeros: 0 } } else { State::Data { left: size, pad, keep } })
    }
}

impl crate::pipeline::Filter for TarFilter {
    type Summary = TarSummary;
    type Error = TarError;

    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), TarError> {
        self.walk(data)?;
        out.extend_from_slice(data);
        Ok(())
    }

    fn finish(self) -> Result<TarSummary, TarError> {
        match self.state {
            State::End => Ok(self.summary),
            _ if self.offset == 0 => Err(TarError::Empty),
            _ => Err(TarError::Truncated(self.offset)),
        }
    }
}

fn trim_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

fn checksum_ok(h: &[u8]) -> bool {
    let field = trim_nul(&h[148..156]);
    let text = std::str::from_utf8(field).unwrap_or("").trim_matches([' ', '\0']);
    let Ok(recorded) = u32::from_str_radix(text, 8) else { return false };
    let sum: u32 = h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u32 }).sum();
    sum == recorded
}

/// An octal size, or the base-256 form tar uses above 8 GiB.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)? | b as u64;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(trim_nul(field)).ok()?.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// What `backup_label` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub start_lsn: Lsn,
    pub start_wal: String,
    pub checkpoint_lsn: Lsn,
    pub timeline: u32,
    pub label: String,
    pub start_time: String,
    pub from: String,
}

impl Label {
    pub fn parse(text: &str) -> Result<Label, String> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
                .map(str::trim)
                .ok_or_else(|| format!("backup_label has no {name}"))
        };
        let start = field("START WAL LOCATION")?;
        let (lsn, file) = start.split_once(" (file ").ok_or("backup_label: START WAL LOCATION has no file")?;
        let lsn_of =
            |s: &str, what: &str| Lsn::parse(s).ok_or_else(|| format!("backup_label: {what} {s:?} is not an LSN"));
        Ok(Label {
            start_lsn: lsn_of(lsn, "START WAL LOCATION")?,
            start_wal: file.trim_end_matches(')').to_owned(),
            checkpoint_lsn: lsn_of(field("CHECKPOINT LOCATION")?, "CHECKPOINT LOCATION")?,
            timeline: field("START TIMELINE")?.parse().map_err(|_| "backup_label: START TIMELINE is not a number")?,
            label: field("LABEL").unwrap_or_default().to_owned(),
            start_time: field("START TIME")?.to_owned(),
            from: field("BACKUP FROM").unwrap_or("primary").to_owned(),
        })
    }
}

/// One timeline's stretch of WAL a base backup needs, from PostgreSQL's `backup_manifest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRange {
    pub timeline: u32,
    pub start_lsn: LsnText,
    pub end_lsn: LsnText,
}

/// An LSN stored as PostgreSQL writes it (`0/2000028`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LsnText(pub Lsn);

impl Serialize for LsnText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LsnText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Lsn::parse(&s).map(LsnText).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an LSN")))
    }
}

/// What pgbackd reads of PostgreSQL's `backup_manifest` (pg_verifybackup checks the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgManifest {
    pub files: usize,
    pub wal_ranges: Vec<WalRange>,
}

impl PgManifest {
    pub fn parse(bytes: &[u8]) -> Result<PgManifest, String> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
            version: u32,
            #[serde(rename = "Files")]
            files: Vec<serde::de::IgnoredAny>,
            #[serde(rename = "WAL-Ranges")]
            wal_ranges: Vec<RawRange>,
        }
        #[derive(Deserialize)]
        struct RawRange {
            #[serde(rename = "Timeline")]
            timeline: u32,
            #[serde(rename = "Start-LSN")]
            start: LsnText,
            #[serde(rename = "End-LSN")]
            end: LsnText,
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("backup_manifest is not valid: {e}"))?;
        if raw.version > 2 {
            return Err(format!("backup_manifest version {} is newer than pgbackd knows", raw.version));
        }
        if raw.wal_ranges.is_empty() {
            return Err("backup_manifest names no WAL range".into());
        }
        Ok(PgManifest {
            files: raw.files.len(),
            wal_ranges: raw
                .wal_ranges
                .into_iter()
                .map(|r| WalRange { timeline: r.timeline, start_lsn: r.start, end_lsn: r.end })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Filter;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn walk(bytes: &[u8], chunk: usize) -> Result<TarSummary, TarError> {
        let mut f = TarFilter::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            f.feed(c, &mut out)?;
        }
        assert_eq!(out, bytes, "the stream passes unchanged");
        f.finish()
    }

    #[test]
    fn keeps_the_small_members_and_passes_the_stream_in_any_chunking() {
        let long = format!("base/16384/{}", "x".repeat(150));
        let bytes = archive(&[
            ("backup_label", b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"),
            ("base/1/1259", &vec![7u8; 20_000]),
            (&long, b"data"),
            ("global/pg_control", &[1u8; 8192]),
            ("backup_manifest", b"{}"),
        ]);
        for chunk in [1, 511, 512, 513, 4096, bytes.len()] {
            let s = walk(&bytes, chunk).unwrap();
            assert_eq!(s.members, 5);
            assert!(s.backup_label.as_deref().unwrap().starts_with(b"START WAL"));
            assert_eq!(s.pg_control.as_deref().unwrap().len(), 8192);
            assert_eq!(s.backup_manifest.as_deref(), Some(&b"{}"[..]));
            assert_eq!(s.tablespace_map, None);
        }
    }

    #[test]
    fn a_cut_or_damaged_stream_is_refused() {
        let bytes = archive(&[("base/1/1259", &[7u8; 3000]), ("backup_manifest", b"{}")]);
        assert!(matches!(walk(&bytes[..bytes.len() - 1024], 700), Err(TarError::Truncated(_))));
        assert!(matches!(walk(&bytes[..2000], 700), Err(TarError::Truncated(2000))));
        assert_eq!(walk(&[], 1).unwrap_err(), TarError::Empty);
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert_eq!(walk(&bad, 512).unwrap_err(), TarError::BadHeader(0));
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"more");
        assert!(matches!(walk(&trailing, 512), Err(TarError::TrailingData(_))));
    }

    #[test]
    fn the_label_and_the_manifest_name_the_wal_a_backup_needs() {
        let label = Label::parse(
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n\
             BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-02 22:01:40 UTC\n\
             LABEL: pgbackd 20261202T220140Z-base-0a1b2c\nSTART TIMELINE: 1\n",
        )
        .unwrap();
        assert_eq!(label.start_lsn, Lsn(0x2000028));
        assert_eq!(label.start_wal, "000000010000000000000002");
        assert_eq!((label.timeline, label.from.as_str()), (1, "primary"));
        assert!(Label::parse("CHECKPOINT LOCATION: 0/1\n").unwrap_err().contains("START WAL LOCATION"));
        let m = PgManifest::parse(
            br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [{"Path": "x"}],
               "WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}],
               "Manifest-Checksum": "00"}"#,
        )
        .unwrap();
        assert_eq!(m.files, 1);
        assert_eq!(m.wal_ranges[0].end_lsn, LsnText(Lsn(0x2000100)));
        assert!(PgManifest::parse(b"{").unwrap_err().contains("not valid"));
    }
}
