//! Cutting a serial byte stream into frames: lines ending with a terminator, or frames
//! between a start and an end marker, never longer than a maximum.
//!
//! Memory is bounded by the maximum: input that would make a frame longer is discarded up
//! to the next frame boundary and reported once as [`Event::Oversized`].

/// What the framer found in the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete frame, without its terminator or markers, `\r`/`\n` trimmed at both ends
    /// (blanks are kept); never empty.
    Frame(&'a [u8]),
    /// A frame longer than the maximum was discarded.
    Oversized,
    /// Bytes outside any frame (before a start marker) were discarded.
    Stray(usize),
}

#[derive(Debug)]
enum Mode {
    Line { terminator: Vec<u8> },
    Delimited { start: Vec<u8>, end: Vec<u8> },
}

/// The framer of one port. [`Framer::reset`] it when the port is reopened.
#[derive(Debug)]
pub struct Framer {
    mode: Mode,
    state: State,
}

/// What a framer knows of the stream so far (apart from its markers, so that both can be
/// borrowed at once).
#[derive(Debug)]
struct State {
    max: usize,
    buf: Vec<u8>,
    /// Discarding an oversized frame until the next boundary.
    discarding: bool,
    /// Delimited mode: a start marker was seen and `buf` holds the frame so far.
    inside: bool,
    /// Delimited mode, inside a frame: how much of `buf` was searched for markers.
    scanned: usize,
}

impl Framer {
    /// Lines ending with `terminator` (`"\n"` if empty), at most `max` bytes.
    pub fn lines(terminator: &[u8], max: usize) -> Framer {
        Framer::new(
            Mode::Line {
                terminator: or_newline(terminator),
            },
            max,
        )
    }

    /// Frames between `start` and `end` (each `"\n"` if empty), at most `max` bytes.
    pub fn delimited(start: &[u8], end: &[u8], max: usize) -> Framer {
        Framer::new(
            Mode::Delimited {
                start: or_newline(start),
                end: or_newline(end),
            },
            max,
        )
    }

    fn new(mode: Mode, max: usize) -> Framer {
        Framer {
            mode,
            state: State {
                max: max.max(1),
                buf: Vec::with_capacity(max.min(4096)),
                discarding: false,
                inside: false,
                scanned: 0,
            },
        }
    }

    /// Forgets any partial frame (the port was closed and reopened).
    pub fn reset(&mut self) {
        let s = &mut self.state;
        s.buf.clear();
        s.discarding = false;
        s.inside = false;
        s.scanned = 0;
    }

    /// Feeds `bytes`; calls `on` for every event, in stream order.
    pub fn push(&mut self, bytes: &[u8], mut on: impl FnMut(Event<'_>)) {
        match &self.mode {
            Mode::Line { terminator } => self.state.push_lines(terminator, bytes, &mut on),
            Mode::Delimited { start, end } => {
                self.state.push_delimited(start, end, bytes, &mut on);
            }
        }
    }
}

impl State {
    fn push_lines(&mut self, term: &[u8], bytes: &[u8], on: &mut impl FnMut(Event<'_>)) {
        // A terminator may have begun in the bytes kept from the last call.
        let mut from = self.buf.len().saturating_sub(term.len() - 1);
        self.buf.extend_from_slice(bytes);
        let mut consumed = 0;
        while let Some(at) = find(&self.buf[from..], term) {
            let end = from + at;
            if self.discarding {
                self.discarding = false;
            } else if end - consumed > self.max {
                on(Event::Oversized);
            } else {
                emit(&self.buf[consumed..end], on);
            }
            consumed = end + term.len();
            from = consumed;
        }
        let rest = self.buf.len() - consumed;
        if self.discarding || rest > self.max + term.len() - 1 {
            if !self.discarding {
                self.discarding = true;
                on(Event::Oversized);
            }
            // Only what could be the start of the terminator is worth keeping.
            let keep = (term.len() - 1).min(rest);
            self.buf.drain(..self.buf.len() - keep);
        } else {
            self.buf.drain(..consumed);
        }
    }

    fn push_delimited(
        &mut self,
        start: &[u8],
        end: &[u8],
        bytes: &[u8],
        on: &mut impl FnMut(Event<'_>),
    ) {
        // Append, then consume what is complete. Inside a frame, the bytes buffered by
        // earlier calls were already searched (but for a marker's length of overlap): a long
        // frame arriving a byte at a time costs linear time, not quadratic.
        let overlap = start.len().max(end.len()) - 1;
        let mut from = if self.inside {
            self.scanned.saturating_sub(overlap)
        } else {
            0
        };
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            if !self.inside {
                match find(&self.buf[pos..], start) {
                    Some(at) => {
                        if at > 0 && !self.discarding {
                            on(Event::Stray(at));
                        }
                        self.discarding = false;
                        pos += at + start.len();
                        self.inside = true;
                    }
                    None => {
                        // Keep what could be the beginning of a start marker.
                        let keep = (start.len() - 1).min(self.buf.len() - pos);
                        let stray = self.buf.len() - pos - keep;
                        if stray > 0 && !self.discarding {
                            on(Event::Stray(stray));
                        }
                        self.buf.drain(..self.buf.len() - keep);
                        self.scanned = 0;
                        return;
                    }
                }
            }
            let search = pos.max(from);
            match find(&self.buf[search..], end) {
                Some(at) => {
                    let end_at = search + at;
                    // A start marker inside means the previous frame lost its end.
                    if let Some(s) = after_last(&self.buf[search..end_at], start) {
                        let restart = search + s;
                        on(Event::Stray(restart - pos));
                        pos = restart;
                    }
                    let frame = &self.buf[pos..end_at];
                    if frame.len() > self.max {
                        on(Event::Oversized);
                    } else {
                        emit(frame, on);
                    }
                    pos = end_at + end.len();
                    from = 0;
                    self.inside = false;
                }
                None => {
                    // A start marker inside means the frame before it lost its end: the
                    // frame so far begins after the last one.
                    if let Some(s) = after_last(&self.buf[search..], start) {
                        let restart = search + s;
                        on(Event::Stray(restart - pos));
                        pos = restart;
                    }
                    if self.buf.len() - pos > self.max + end.len() - 1 {
                        on(Event::Oversized);
                        self.inside = false;
                        // The rest of this frame is stray until the next start marker; keep
                        // what could be the beginning of one.
                        self.discarding = true;
                        let keep = start.len() - 1;
                        self.buf.drain(..self.buf.len() - keep);
                        self.scanned = 0;
                    } else {
                        self.buf.drain(..pos);
                        self.scanned = self.buf.len();
                    }
                    return;
                }
            }
        }
    }
}

fn or_newline(marker: &[u8]) -> Vec<u8> {
    if marker.is_empty() {
        b"\n".to_vec()
    } else {
        marker.to_vec()
    }
}

/// Emits `frame` with `\r` and `\n` trimmed at both ends, unless nothing is left. Blanks are
/// kept: a leading tab is an empty first column to a tab-separated parser.
fn emit(frame: &[u8], on: &mut impl FnMut(Event<'_>)) {
    let first = frame.iter().position(|b| !matches!(b, b'\r' | b'\n'));
    let last = frame.iter().rposition(|b| !matches!(b, b'\r' | b'\n'));
    if let (Some(first), Some(last)) = (first, last) {
        on(Event::Frame(&frame[first..=last]));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() == 1 {
        return hay.iter().position(|&b| b == needle[0]);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where the last occurrence of `needle` ends, scanning left to right without overlaps: the
/// same answer however the bytes arrived (`"<<<"` holds one `"<<"`, the first two).
fn after_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut found = None;
    while let Some(i) = find(&hay[at..], needle) {
        at += i + needle.len();
        found = Some(at);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framer: &mut Framer, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            framer.push(c, |e| {
                out.push(match e {
                    Event::Frame(f) => String::from_utf8_lossy(f).into_owned(),
                    Event::Oversized => "<oversized>".into(),
                    Event::Stray(n) => format!("<stray {n}>"),
                });
            });
        }
        out
    }

    #[test]
    fn lines_split_across_reads_and_crlf() {
        let mut f = Framer::lines(b"\n", 64);
        let got = run(&mut f, &[b"$GPGGA,1", b"23\r\n\r\nT=1", b"\nH=2\r", b"\n"]);
        assert_eq!(got, ["$GPGGA,123", "T=1", "H=2"]);
    }

    #[test]
    fn multi_byte_terminator_split_between_reads() {
        let mut f = Framer::lines(b"\r\n", 64);
        let got = run(&mut f, &[b"a=1\r", b"\nb=2\r\nc=3\r", b"\r\n"]);
        assert_eq!(got, ["a=1", "b=2", "c=3"]);
    }

    #[test]
    fn over_long_lines_are_dropped_once_and_the_next_line_survives() {
        let mut f = Framer::lines(b"\n", 8);
        let long = [b'x'; 30];
        let got = run(&mut f, &[b"ok=1\n", &long, &long, b"yy\nnext=2\n"]);
        assert_eq!(got, ["ok=1", "<oversized>", "next=2"]);
        // A long line inside one read, too; exactly `max` is accepted.
        let got = run(&mut f, &[b"0123456789\n01234567\n"]);
        assert_eq!(got, ["<oversized>", "01234567"]);
    }

    #[test]
    fn delimited_frames_count_stray_bytes_and_lost_ends() {
        let mut f = Framer::delimited(b"\x02", b"\x03", 16);
        let got = run(
            &mut f,
            &[
                b"noise\x02T=1",
                b"\x03\r\n\x02lost\x02H=2\x03\x02",
                b"P=3\x03",
            ],
        );
        assert_eq!(
            got,
            ["<stray 5>", "T=1", "<stray 2>", "<stray 5>", "H=2", "P=3"]
        );
        let got = run(&mut f, &[b"\x02", &[b'z'; 40], b"\x03\x02ok\x03"]);
        assert_eq!(got, ["<oversized>", "ok"]);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn events(framer: &mut Framer, chunks: &[Vec<u8>]) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            framer.push(c, |e| out.push(format!("{e:?}")));
        }
        out
    }

    /// Cuts `bytes` at the given points.
    fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts {
            out.push(bytes[at..c].to_vec());
            at = c;
        }
        out.push(bytes[at..].to_vec());
        out
    }

    /// Input made mostly of the bytes that matter to a framer.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b'\n'),
                Just(b'\r'),
                Just(0x02u8),
                Just(0x03u8),
                Just(b'<'),
                Just(b'>'),
                Just(b'a'),
                Just(b'='),
                any::<u8>()
            ],
            0..300,
        )
    }

    proptest! {
        // However the port's reads cut the stream, the same frames come out, none longer
        // than the maximum, and the buffer stays bounded.
        #[test]
        fn line_frames_do_not_depend_on_read_boundaries(
            bytes in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            crlf in any::<bool>(),
        ) {
            let term: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let whole = events(&mut Framer::lines(term, 16), std::slice::from_ref(&bytes));
            let mut framer = Framer::lines(term, 16);
            let pieces = events(&mut framer, &chunked(&bytes, &cuts));
            prop_assert_eq!(&whole, &pieces);
            prop_assert!(framer.state.buf.len() <= 16 + term.len());
            for e in &whole {
                prop_assert!(e.len() <= "Frame([])".len() + 16 * 5, "{}", e);
            }
        }

        #[test]
        fn delimited_frames_do_not_depend_on_read_boundaries(
            bytes in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            long_markers in any::<bool>(),
        ) {
            let (start, end): (&[u8], &[u8]) =
                if long_markers { (b"<<", b">>") } else { (b"\x02", b"\x03") };
            let frames = |evs: Vec<String>| -> Vec<String> {
                evs.into_iter().filter(|e| e.starts_with("Frame")).collect()
            };
            let whole = events(
                &mut Framer::delimited(start, end, 16),
                std::slice::from_ref(&bytes),
            );
            let mut framer = Framer::delimited(start, end, 16);
            let pieces = events(&mut framer, &chunked(&bytes, &cuts));
            prop_assert_eq!(frames(whole), frames(pieces));
            prop_assert!(framer.state.buf.len() <= 16 + 2 * end.len());
        }
    }
}
