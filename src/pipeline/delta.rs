//! Delta frames for incremental backups: a segment of the new dump compressed with the aligned
//! region of the base's raw stream as zstd prefix (what `zstd --patch-from` does), with long
//! distance matching over a window that covers the whole region. Alignment is by position within
//! the same table's data block (block starts are recorded in both manifests), with `slack` bytes
//! on either side, so rows inserted or deleted earlier in the dump do not push the region off.

use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

/// Long-distance match length: shorter finds more, but costs more than it saves on dumps (at 16
/// bytes the delta of a 1 % change was 2.9x larger than at 128; measured in docs/performance.md).
const LDM_MIN_MATCH: u32 = 128;

fn window_log(reference: usize, data: usize) -> u32 {
    (((reference + data).max(1) as f64).log2().ceil() as u32).clamp(20, 30)
}

/// How a delta frame looks for what it can copy from its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Long runs only (long-distance matching; the configured level's own match finder sees
    /// the recent past): fast, and right for dumps, where changed rows are rewritten in place.
    Long,
    /// Short matches anywhere in the reference too: a lazy parser (level 5 at least) whose hash
    /// and chain tables cover 4 MiB. For page images (SQLite), where an updated row is rewritten
    /// elsewhere in its page and a split moves rows to another page: on a 1 % scattered update
    /// the delta is 40 % smaller, at about 3x the CPU (docs/performance.md).
    Short,
}

/// Hash and chain table size (log2 entries) of [`Search::Short`]: 4 Mi entries each, 32 MiB per
/// frame being compressed; a wider table found 1 % more for twice the memory.
const SHORT_TABLE_LOG: u32 = 22;

/// Compresses `data` as one zstd frame that may copy from `reference`.
pub fn compress(data: &[u8], reference: &[u8], level: i32, search: Search) -> Result<Vec<u8>, String> {
    let mut cctx = CCtx::create();
    let set = |c: &mut CCtx, p: CParameter| {
        c.set_parameter(p).map_err(|e| format!("zstd parameter: {}", zstd::zstd_safe::get_error_name(e)))
    };
    let window = window_log(reference.len(), data.len());
    match search {
        Search::Long => {
            set(&mut cctx, CParameter::CompressionLevel(level))?;
        }
        Search::Short => {
            set(&mut cctx, CParameter::CompressionLevel(level.max(5)))?;
            set(&mut cctx, CParameter::HashLog(SHORT_TABLE_LOG.min(window)))?;
            set(&mut cctx, CParameter::ChainLog(SHORT_TABLE_LOG.min(window)))?;
            set(&mut cctx, CParameter::SearchLog(4))?;
        }
    }
    set(&mut cctx, CParameter::WindowLog(window))?;
    set(&mut cctx, CParameter::EnableLongDistanceMatching(true))?;
    set(&mut cctx, CParameter::LdmMinMatch(LDM_MIN_MATCH))?;
    set(&mut cctx, CParameter::ContentSizeFlag(true))?;
    cctx.ref_prefix(reference).map_err(|e| format!("zstd prefix: {}", zstd::zstd_safe::get_error_name(e)))?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(|e| format!("zstd: {}", zstd::zstd_safe::get_error_name(e)))?;
    Ok(out)
}

/// Decodes a frame made by [`compress`] with the same `reference`; `raw_len` is its size.
#[cfg(test)]
pub fn decompress(stored: &[u8], reference: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw_len);
    decompress_into(stored, reference, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out`'s spare capacity (which must hold the frame's raw size).
pub fn decompress_into(stored: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(31))
        .map_err(|e| format!("zstd parameter: {}", zstd::zstd_safe::get_error_name(e)))?;
    dctx.ref_prefix(reference).map_err(|e| format!("zstd prefix: {}", zstd::zstd_safe::get_error_name(e)))?;
    dctx.decompress(out, stored).map_err(|e| format!("zstd: {}", zstd::zstd_safe::get_error_name(e)))?;
    Ok(())
}

/// Where a named region of a raw stream starts (a pg_dump data block: `schema.table`, or
/// `blobs#N`): delta frames find their reference by position within the same region.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockStart {
    pub key: String,
    pub raw_offset: u64,
}

/// The base range to use as reference for the new segment `[offset, offset + len)`: the same
/// position relative to the start of the same data block in the base, widened by `slack`.
pub fn reference_range(
    offset: u64,
    len: u64,
    new_blocks: &[BlockStart],
    base_blocks: &[BlockStart],
    base_len: u64,
    slack: u64,
) -> (u64, u64) {
    // the block the segment starts in, and its start in the base
    let shift: i64 = new_blocks
        .iter()
        .rev()
        .find(|b| b.raw_offset <= offset)
        .and_then(|nb| {
            base_blocks.iter().find(|bb| bb.key == nb.key).map(|bb| bb.raw_offset as i64 - nb.raw_offset as i64)
        })
        .unwrap_or(0);
    let center = offset as i64 + shift;
    let start = (center - slack as i64).clamp(0, base_len as i64) as u64;
    let end = (center + len as i64 + slack as i64).clamp(0, base_len as i64) as u64;
    (start, end.max(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_copy_compresses_to_almost_nothing_and_round_trips() {
        let base: Vec<u8> =
            (0..2_000_000u64).flat_map(|i| format!("{i}\trow {}\n", i * 7919 % 1000).into_bytes()).collect();
        let mut new = base.clone();
        new.drain(100_000..100_050); // rows removed early: everything after shifts
        new[1_500_000] = b'X';
        let plain = zstd::bulk::compress(&new, 1).unwrap();
        let delta = compress(&new, &base, 1, Search::Long).unwrap();
        assert!(delta.len() * 50 < plain.len(), "delta {} vs plain {}", delta.len(), plain.len());
        assert_eq!(decompress(&delta, &base, new.len()).unwrap(), new);
        let short = compress(&new, &base, 1, Search::Short).unwrap();
        assert!(short.len() <= delta.len(), "short {} vs long {}", short.len(), delta.len());
        assert_eq!(decompress(&short, &base, new.len()).unwrap(), new);
        // the wrong reference does not silently give other bytes
        let other = vec![b'z'; base.len()];
        assert!(decompress(&delta, &other, new.len()).map(|d| d != new).unwrap_or(true));
    }

    #[test]
    fn regions_follow_the_block_start() {
        let b = |k: &str, o: u64| BlockStart { key: k.into(), raw_offset: o };
        let base = [b("a.t", 100), b("a.u", 5_000)];
        let new = [b("a.t", 100), b("a.u", 7_000)];
        // in a.u, 2,000 bytes later in the new dump than in the base
        assert_eq!(reference_range(8_000, 1_000, &new, &base, 100_000, 500), (5_500, 7_500));
        // in a.t, same place; clipped at the start
        assert_eq!(reference_range(200, 1_000, &new, &base, 100_000, 500), (0, 1_700));
        // a table the base does not have: by position, clipped at the end
        assert_eq!(reference_range(99_500, 1_000, &[b("new.t", 99_000)], &base, 100_000, 500), (99_000, 100_000));
    }
}
