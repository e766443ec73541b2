//! Coalescing: the points due together become as few read requests as the limits allow.
//!
//! Input is the due points of one device, sorted by table and address. A block grows while the
//! next point is in the same table, starts at most `max_gap` registers (or bits) after the
//! block's end, and the block stays within the request size limit. A point that once failed
//! alone with an *illegal data address* is read alone and no block spans it; a point marked
//! `break_before` (a hole in the device's map was found just before it) starts a new block.

use crate::config::Table;

/// Where one due point lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The caller's index of the point.
    pub point: usize,
    /// Its table.
    pub table: Table,
    /// First register or bit.
    pub start: u16,
    /// Registers or bits it occupies (at least 1).
    pub count: u16,
    /// Read it alone, and let no block span it.
    pub alone: bool,
    /// Never merge it with the point before it.
    pub break_before: bool,
}

impl Span {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// The limits of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest run of unmapped registers or bits inside one read.
    pub max_gap: u16,
    /// Most registers per read (at most 125).
    pub max_registers: u16,
    /// Most bits per read (at most 2000).
    pub max_bits: u16,
}

impl Limits {
    /// The protocol's own limits with the given gap.
    pub fn protocol(max_gap: u16) -> Limits {
        Limits {
            max_gap,
            max_registers: 125,
            max_bits: 2000,
        }
    }

    fn max_for(&self, table: Table) -> u32 {
        u32::from(if table.is_bits() {
            self.max_bits.min(2000)
        } else {
            self.max_registers.min(125)
        })
    }
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The table read.
    pub table: Table,
    /// First register or bit.
    pub start: u16,
    /// How many.
    pub count: u16,
    /// The caller's indices of the points inside, in address order.
    pub points: Vec<usize>,
}

impl Block {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// Merges `spans` (sorted by table, then start) into blocks.
pub fn coalesce(spans: &[Span], limits: Limits) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut open: Option<Block> = None;
    for span in spans {
        if span.alone {
            blocks.extend(open.take());
            blocks.push(Block {
                table: span.table,
                start: span.start,
                count: span.count,
                points: vec![span.point],
            });
            continue;
        }
        if let Some(block) = open.as_mut() {
            let end = block.end().max(span.end());
            let fits = block.table == span.table
                && !span.break_before
                && u32::from(span.start) <= block.end() + u32::from(limits.max_gap)
                && end - u32::from(block.start) <= limits.max_for(span.table);
            if fits {
                // `end - start` fits the limit, itself at most 2000: no truncation.
                block.count = u16::try_from(end - u32::from(block.start)).unwrap_or(u16::MAX);
                block.points.push(span.point);
                continue;
            }
            blocks.extend(open.take());
        }
        open = Some(Block {
            table: span.table,
            start: span.start,
            count: span.count,
            points: vec![span.point],
        });
    }
    blocks.extend(open);
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(point: usize, table: Table, start: u16, count: u16) -> Span {
        Span {
            point,
            table,
            start,
            count,
            alone: false,
            break_before: false,
        }
    }

    /// `(table, start, count, points)` per block.
    fn check(spans: &[Span], limits: Limits, expected: &[(Table, u16, u16, &[usize])]) {
        let got: Vec<(Table, u16, u16, Vec<usize>)> = coalesce(spans, limits)
            .into_iter()
            .map(|b| (b.table, b.start, b.count, b.points))
            .collect();
        let want: Vec<(Table, u16, u16, Vec<usize>)> = expected
            .iter()
            .map(|(t, s, c, p)| (*t, *s, *c, p.to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    const H: Table = Table::HoldingRegister;
    const I: Table = Table::InputRegister;
    const C: Table = Table::Coil;

    #[test]
    fn ten_thousand_contiguous_registers_take_eighty_reads() {
        let spans: Vec<Span> = (0..10_000u16)
            .map(|i| span(usize::from(i), H, i, 1))
            .collect();
        let blocks = coalesce(&spans, Limits::protocol(16));
        assert_eq!(blocks.len(), 80);
        assert!(blocks
            .iter()
            .all(|b| b.count == 125 && b.points.len() == 125));
    }

    #[test]
    fn gaps_tables_and_limits_split_blocks() {
        // 0..2 (u32), then 5 (gap 3 ≤ 4), then 20 (gap 14 > 4); an input register at 0.
        check(
            &[
                span(0, H, 0, 2),
                span(1, H, 5, 1),
                span(2, H, 20, 1),
                span(3, I, 0, 1),
            ],
            Limits::protocol(4),
            &[(H, 0, 6, &[0, 1]), (H, 20, 1, &[2]), (I, 0, 1, &[3])],
        );
        // A multi-register point never straddles two requests.
        let small = Limits {
            max_gap: 0,
            max_registers: 4,
            max_bits: 8,
        };
        check(
            &[span(0, H, 0, 2), span(1, H, 2, 2), span(2, H, 4, 2)],
            small,
            &[(H, 0, 4, &[0, 1]), (H, 4, 2, &[2])],
        );
        // Bits use the bit limit; two points on one register share the read.
        let small = Limits {
            max_gap: 6,
            ..small
        };
        check(
            &[
                span(0, C, 0, 1),
                span(1, C, 7, 1),
                span(2, C, 8, 1),
                span(3, H, 3, 1),
                span(4, H, 3, 1),
            ],
            small,
            &[(C, 0, 8, &[0, 1]), (C, 8, 1, &[2]), (H, 3, 1, &[3, 4])],
        );
    }

    #[test]
    fn isolated_points_are_read_alone_and_never_spanned() {
        let mut bad = span(1, H, 1, 1);
        bad.alone = true;
        let mut after_hole = span(3, H, 10, 1);
        after_hole.break_before = true;
        check(
            &[span(0, H, 0, 1), bad, span(2, H, 2, 1), after_hole],
            Limits::protocol(16),
            &[
                (H, 0, 1, &[0]),
                (H, 1, 1, &[1]),
                (H, 2, 1, &[2]),
                (H, 10, 1, &[3]),
            ],
        );
    }
}
