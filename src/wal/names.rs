//! The files PostgreSQL archives, by name, and what the first page of a segment says about the
//! cluster that wrote it.
//!
//! ```text
//! 000000010000000A000000FF            a segment: timeline, log, segment (hex, 8 digits each)
//! 000000010000000A000000FF.partial    the last, incomplete segment of a timeline or a receiver
//! 00000002.history                    a timeline's history
//! 000000010000000A000000FF.00000028.backup   a base backup's history (start/stop LSN)
//! ```

use std::fmt;

/// One file of a cluster's WAL archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    Segment(SegmentName),
    Partial(SegmentName),
    History(u32),
    /// A base backup's history file: the segment it started in and the offset within it.
    BackupHistory(SegmentName, u32),
}

/// A segment's place in the WAL: timeline, then the segment number (log * segments-per-log + seg,
/// kept as PostgreSQL's two 8-digit halves so names round-trip for any segment size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub timeline: u32,
    pub log: u32,
    pub seg: u32,
}

impl SegmentName {
    /// The segment holding `lsn` on `timeline`, for segments of `segment_size` bytes.
    pub fn containing(timeline: u32, lsn: u64, segment_size: u64) -> SegmentName {
        let per_log = 0x1_0000_0000 / segment_size;
        let number = lsn / segment_size;
        SegmentName { timeline, log: (number / per_log) as u32, seg: (number % per_log) as u32 }
    }

    /// The segment number across logs (for counting and gaps).
    pub fn number(&self, segment_size: u64) -> u64 {
        let per_log = 0x1_0000_0000 / segment_size;
        self.log as u64 * per_log + self.seg as u64
    }

    /// The segment after this one on the same timeline.
    pub fn next(&self, segment_size: u64) -> SegmentName {
        let per_log = (0x1_0000_0000 / segment_size) as u32;
        if self.seg + 1 >= per_log {
            SegmentName { log: self.log + 1, seg: 0, ..*self }
        } else {
            SegmentName { seg: self.seg + 1, ..*self }
        }
    }

    /// The same place on another timeline.
    pub fn on_timeline(&self, timeline: u32) -> SegmentName {
        SegmentName { timeline, ..*self }
    }

    pub fn parse(s: &str) -> Option<SegmentName> {
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()) {
            return None;
        }
        let hex = |r: std::ops::Range<usize>| u32::from_str_radix(&s[r], 16).ok();
        Some(SegmentName { timeline: hex(0..8)?, log: hex(8..16)?, seg: hex(16..24)? })
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

impl WalFile {
    /// The file `name` (a bare file name, as `%f` gives it), if it is one PostgreSQL archives.
    pub fn parse(name: &str) -> Option<WalFile> {
        if let Some(seg) = SegmentName::parse(name) {
            return Some(WalFile::Segment(seg));
        }
        if let Some(seg) = name.strip_suffix(".partial").and_then(SegmentName::parse) {
            return Some(WalFile::Partial(seg));
        }
        if let Some(tli) = name.strip_suffix(".history")
            && tli.len() == 8
            && tli.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
        {
            return u32::from_str_radix(tli, 16).ok().map(WalFile::History);
        }
        let rest = name.strip_suffix(".backup")?;
        let (seg, offset) = rest.split_once('.')?;
        if offset.len() != 8 {
            return None;
        }
        Some(WalFile::BackupHistory(SegmentName::parse(seg)?, u32::from_str_radix(offset, 16).ok()?))
    }

    /// The segment the file belongs to (none for a timeline history).
    pub fn segment(&self) -> Option<SegmentName> {
        match self {
            WalFile::Segment(s) | WalFile::Partial(s) | WalFile::BackupHistory(s, _) => Some(*s),
            WalFile::History(_) => None,
        }
    }

    /// Whether the file starts with a WAL page header (and so names its cluster).
    pub fn has_page_header(&self) -> bool {
        matches!(self, WalFile::Segment(_) | WalFile::Partial(_))
    }

    pub fn timeline(&self) -> u32 {
        match self {
            WalFile::History(t) => *t,
            other => other.segment().map_or(0, |s| s.timeline),
        }
    }
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFile::Segment(s) => write!(f, "{s}"),
            WalFile::Partial(s) => write!(f, "{s}.partial"),
            WalFile::History(t) => write!(f, "{t:08X}.history"),
            WalFile::BackupHistory(s, o) => write!(f, "{s}.{o:08X}.backup"),
        }
    }
}

/// What the long page header at the start of every segment says (`XLogLongPageHeaderData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `xlp_magic`: changes with every PostgreSQL major version's WAL format.
    pub magic: u16,
    pub timeline: u32,
    /// The LSN of the segment's first byte.
    pub page_address: u64,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

/// `XLP_LONG_HEADER`: set on the first page of a segment.
const XLP_LONG_HEADER: u16 = 0x0002;

impl SegmentHeader {
    /// Reads the header from a segment's first bytes, or says why they are not one.
    pub fn read(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < 40 {
            return Err(format!("{} bytes are too short for a WAL page header", bytes.len()));
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let header = SegmentHeader {
            magic: u16_at(0),
            timeline: u32_at(4),
            page_address: u64_at(8),
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        };
        if u16_at(2) & XLP_LONG_HEADER == 0 || header.magic < 0xD000 {
            return Err("it does not start with a WAL segment's long page header".into());
        }
        if !header.segment_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&header.segment_size) {
            return Err(format!("its header gives an impossible segment size ({} bytes)", header.segment_size));
        }
        Ok(header)
    }

    /// The segment this header says it is.
    pub fn segment(&self) -> SegmentName {
        SegmentName::containing(self.timeline, self.page_address, self.segment_size as u64)
    }

    /// The PostgreSQL major version that writes this WAL format, when known.
    pub fn server_major(&self) -> Option<u32> {
        Some(match self.magic {
            0xD098 => 11,
            0xD101 => 12,
            0xD106 => 13,
            0xD10D => 14,
            0xD110 => 15,
            0xD113 => 16,
            0xD116 => 17,
            _ => return None,
        })
    }
}

/// The system identifier in a data directory's `global/pg_control` (its first field).
pub fn control_system_identifier(pgdata: &std::path::Path) -> Result<u64, String> {
    let path = pgdata.join("global").join("pg_control");
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let first: [u8; 8] =
        bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| format!("{} is truncated", path.display()))?;
    Ok(u64::from_le_bytes(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_by_timeline_then_position() {
        for name in [
            "000000010000000A000000FF",
            "000000020000000000000003.partial",
            "0000000A.history",
            "000000010000000000000002.00000028.backup",
        ] {
            assert_eq!(WalFile::parse(name).map(|f| f.to_string()).as_deref(), Some(name));
        }
        for bad in ["00000001000000000000000", "000000010000000a000000ff", "1.history", "x.backup", "00000001"] {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
        let a = SegmentName::parse("000000010000000000000003").unwrap();
        let b = SegmentName::parse("000000010000000100000000").unwrap();
        assert!(a < b && a < a.on_timeline(2));
    }

    #[test]
    fn next_and_containing_follow_the_segment_size() {
        let size = 16 << 20;
        let last = SegmentName { timeline: 1, log: 0, seg: 0xFF };
        assert_eq!(last.next(size).to_string(), "000000010000000100000000");
        assert_eq!(SegmentName::containing(1, 0x1_0300_0028, size).to_string(), "000000010000000100000003");
        let big = 1 << 30;
        assert_eq!(SegmentName { timeline: 1, log: 0, seg: 3 }.next(big).to_string(), "000000010000000100000000");
        assert_eq!(SegmentName { timeline: 1, log: 2, seg: 1 }.number(big), 9);
    }

    #[test]
    fn a_segment_header_names_its_cluster_and_place() {
        let mut page = vec![0u8; 8192];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        page[4..8].copy_from_slice(&3u32.to_le_bytes());
        page[8..16].copy_from_slice(&0x2_0500_0000u64.to_le_bytes());
        page[24..32].copy_from_slice(&7_300_000_000_000_000_001u64.to_le_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let h = SegmentHeader::read(&page).unwrap();
        assert_eq!(h.system_identifier, 7_300_000_000_000_000_001);
        assert_eq!(h.segment().to_string(), "000000030000000200000005");
        assert_eq!(h.server_major(), Some(15));
        page[2] = 0;
        assert!(SegmentHeader::read(&page).unwrap_err().contains("long page header"));
        assert!(SegmentHeader::read(&page[..10]).unwrap_err().contains("too short"));
    }
}
