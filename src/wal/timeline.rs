//! Timelines and the WAL a recovery reads: timeline history files, the segment each point of
//! the history is read from, and the gaps in an archive.
//!
//! A history file (`00000003.history`) lists every ancestor of its timeline with the LSN where
//! the next one branched off (`1\t0/3000000\tno recovery target specified`). Recovery on
//! timeline T reads each segment from the newest timeline of T's history that had begun by
//! then: the segment holding a switch point comes from the new timeline.

use super::names::SegmentName;
use std::collections::BTreeSet;
use std::fmt;

/// A WAL position (`0/3000028`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let (hi, lo) = (u32::from_str_radix(hi, 16).ok()?, u32::from_str_radix(lo, 16).ok()?);
        Some(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// One line of a history file: timeline `parent` ended at `switch`, where its child began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    pub parent: u32,
    pub switch: Lsn,
}

/// Reads a timeline history file (comments and blank lines skipped; the reason is free text).
pub fn parse_history(text: &str) -> Result<Vec<Branch>, String> {
    let mut out: Vec<Branch> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent = fields.next().and_then(|t| t.parse::<u32>().ok());
        let switch = fields.next().and_then(Lsn::parse);
        let (Some(parent), Some(switch)) = (parent, switch) else {
            return Err(format!("line {}: expected \"TIMELINE<tab>LSN<tab>reason\", found {line:?}", n + 1));
        };
        if out.last().is_some_and(|b| b.parent >= parent || b.switch > switch) {
            return Err(format!("line {}: timelines and switch points must increase", n + 1));
        }
        out.push(Branch { parent, switch });
    }
    Ok(out)
}

/// The timelines a recovery on `timeline` reads, oldest first, each with the first segment read
/// from it (for the first, `None`: from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    steps: Vec<(u32, Option<SegmentName>)>,
    segment_size: u64,
}

impl Chain {
    /// The chain of `timeline` from its history (empty for timeline 1).
    pub fn new(timeline: u32, history: &[Branch], segment_size: u64) -> Chain {
        let mut steps: Vec<(u32, Option<SegmentName>)> = Vec::new();
        let mut begins: Option<SegmentName> = None;
        for b in history {
            steps.push((b.parent, begins));
            // the child's first segment is the one holding the switch point
            begins = Some(SegmentName::containing(0, b.switch.0, segment_size));
        }
        steps.push((timeline, begins));
        Chain { steps, segment_size }
    }

    /// The timeline whose copy of the segment at `position` (any timeline's name) recovery reads.
    pub fn timeline_at(&self, position: SegmentName) -> u32 {
        let number = position.number(self.segment_size);
        self.steps
            .iter()
            .rev()
            .find(|(_, begins)| begins.is_none_or(|b| b.number(self.segment_size) <= number))
            .map_or(self.steps[0].0, |(t, _)| *t)
    }

    pub fn timelines(&self) -> impl Iterator<Item = u32> + '_ {
        self.steps.iter().map(|(t, _)| *t)
    }
}

/// A run of missing segments: the first one, and how many follow it (1 = just that one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub first: SegmentName,
    pub last: SegmentName,
    pub count: u64,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count {
            1 => write!(f, "{} is missing", self.first),
            n => write!(f, "{} to {} are missing ({n} segments)", self.first, self.last),
        }
    }
}

/// The segments recovery on `chain` reads from `from` to `to` (inclusive) that `archived` does
/// not hold, as runs.
pub fn gaps(chain: &Chain, archived: &BTreeSet<SegmentName>, from: SegmentName, to: SegmentName) -> Vec<Gap> {
    let size = chain.segment_size;
    let mut out: Vec<Gap> = Vec::new();
    let mut at = from;
    while at.number(size) <= to.number(size) {
        let wanted = at.on_timeline(chain.timeline_at(at));
        if !archived.contains(&wanted) {
            match out.last_mut() {
                Some(g) if g.last.next(size).number(size) == wanted.number(size) => {
                    g.last = wanted;
                    g.count += 1;
                }
                _ => out.push(Gap { first: wanted, last: wanted, count: 1 }),
            }
        }
        at = at.next(size);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 16 << 20;

    fn seg(timeline: u32, seg: u32) -> SegmentName {
        SegmentName { timeline, log: 0, seg }
    }

    #[test]
    fn lsns_and_history_files_parse_as_postgresql_writes_them() {
        assert_eq!(Lsn::parse("0/3000028"), Some(Lsn(0x300_0028)));
        assert_eq!(Lsn::parse("1A/FF").unwrap().to_string(), "1A/FF");
        assert_eq!(Lsn::parse("x/1"), None);
        let h =
            parse_history("1\t0/3000000\tno recovery target specified\n\n2\t0/50000A8\tbefore 2026-12-02\n").unwrap();
        assert_eq!(
            h,
            vec![Branch { parent: 1, switch: Lsn(0x300_0000) }, Branch { parent: 2, switch: Lsn(0x500_00A8) }]
        );
        assert!(parse_history("1 nonsense").unwrap_err().contains("line 1"));
        assert!(parse_history("2\t0/5000000\ta\n1\t0/6000000\tb").unwrap_err().contains("increase"));
    }

    #[test]
    fn recovery_reads_each_segment_from_the_newest_timeline_begun_by_then() {
        // timeline 1 until 0/3000100 (segment 3), timeline 2 until 0/7000000 (segment 7), then 3
        let history = parse_history("1\t0/3000100\ta\n2\t0/7000000\tb\n").unwrap();
        let chain = Chain::new(3, &history, SIZE);
        assert_eq!(chain.timelines().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(chain.timeline_at(seg(0, 2)), 1);
        // the segment holding the switch point is read from the new timeline
        assert_eq!(chain.timeline_at(seg(0, 3)), 2);
        assert_eq!(chain.timeline_at(seg(0, 6)), 2);
        assert_eq!(chain.timeline_at(seg(0, 7)), 3);
        assert_eq!(Chain::new(1, &[], SIZE).timeline_at(seg(0, 9)), 1);
    }

    #[test]
    fn gaps_are_named_by_their_first_missing_segment_across_a_timeline_switch() {
        let history = parse_history("1\t0/3000100\ta\n").unwrap();
        let chain = Chain::new(2, &history, SIZE);
        let mut archived: BTreeSet<SegmentName> = [seg(1, 1), seg(1, 2), seg(2, 3), seg(2, 4), seg(2, 7)].into();
        // timeline 1's copy of segment 3 (its .partial) does not count: recovery reads timeline 2's
        archived.insert(seg(1, 3));
        let found = gaps(&chain, &archived, seg(1, 1), seg(2, 8));
        assert_eq!(
            found,
            vec![
                Gap { first: seg(2, 5), last: seg(2, 6), count: 2 },
                Gap { first: seg(2, 8), last: seg(2, 8), count: 1 }
            ]
        );
        assert_eq!(
            found[0].to_string(),
            "000000020000000000000005 to 000000020000000000000006 are missing (2 segments)"
        );
        assert_eq!(found[1].to_string(), "000000020000000000000008 is missing");
        archived.remove(&seg(2, 3));
        assert_eq!(gaps(&chain, &archived, seg(1, 1), seg(2, 4))[0].first, seg(2, 3));
        archived.insert(seg(2, 3));
        assert!(gaps(&chain, &archived, seg(1, 1), seg(2, 4)).is_empty());
    }
}
