//! The fast path of a scan with needles: the file is read in large chunks and searched with
//! memmem as a whole, and only around a hit are the record's bounds found; nothing else of the
//! file is parsed. The bytes between hits are read once more, only to count their quotes: a
//! newline ends a record only when the quotes before it (from a known record boundary) are
//! balanced, so records whose quoted values hold newlines are found whole, as the slow path finds
//! them.

use std::fs::File;
use std::io::{self, Read};

use memchr::memmem::Finder;
use memchr::{memchr, memrchr};

/// What a chunk is searched for: each needle by memmem over the whole chunk, its next hit kept
/// until the scan passes it, so that each chunk is searched once per needle. (aho-corasick's
/// one-pass search was slower here: the key's first bytes, `{""`, begin every JSON cell.)
pub struct Searcher {
    finders: Vec<Finder<'static>>,
    /// Per needle, its next hit at or after the position last asked (None: none in the chunk).
    next: Vec<Option<Option<usize>>>,
}

impl Searcher {
    /// None for no needles (every record is wanted: no search).
    pub fn new(needles: &[Vec<u8>]) -> Option<Searcher> {
        if needles.is_empty() {
            return None;
        }
        Some(Searcher {
            finders: needles
                .iter()
                .map(|n| Finder::new(n).into_owned())
                .collect(),
            next: vec![None; needles.len()],
        })
    }

    /// The first hit at or after `pos` in `chunk`.
    fn find(&mut self, chunk: &[u8], pos: usize) -> Option<usize> {
        for (finder, next) in self.finders.iter().zip(&mut self.next) {
            if next.is_none_or(|n| n.is_some_and(|at| at < pos)) {
                *next = Some(finder.find(&chunk[pos..]).map(|i| pos + i));
            }
        }
        self.next.iter().filter_map(|n| n.flatten()).min()
    }

    /// A new chunk: what was found in the last one no longer holds.
    fn reset(&mut self) {
        self.next.iter_mut().for_each(|n| *n = None);
    }
}

const CHUNK: usize = 1 << 20;

/// Why a chunked scan stopped.
#[derive(Debug)]
pub enum ChunkError {
    Io(io::Error),
    /// The file ends inside the record starting at this byte offset.
    Truncated {
        offset: u64,
    },
}

/// A file read in chunks, from a record boundary on.
pub struct Chunks {
    file: File,
    buf: Vec<u8>,
    filled: usize,
    /// A record boundary: everything before it is done.
    cursor: usize,
    /// Where the next search starts.
    pos: usize,
    /// The file offset of buf[0].
    base: u64,
    searcher: Searcher,
    eof: bool,
}

impl Chunks {
    /// Reads `file` on from offset `base`, whose first bytes `leftover` were already read.
    pub fn new(file: File, leftover: &[u8], base: u64, searcher: Searcher) -> Chunks {
        let mut buf = vec![0; CHUNK.max(leftover.len() * 2)];
        buf[..leftover.len()].copy_from_slice(leftover);
        Chunks {
            file,
            buf,
            filled: leftover.len(),
            cursor: 0,
            pos: 0,
            base,
            searcher,
            eof: false,
        }
    }

    /// The file offset up to which records are done (for progress).
    pub fn done(&self) -> u64 {
        self.base + self.cursor as u64
    }

    /// The next record holding one of the needles: its file offset and bytes (with its newline).
    pub fn next_hit(&mut self) -> Result<Option<(u64, &[u8])>, ChunkError> {
        loop {
            let hit = self.searcher.find(&self.buf[..self.filled], self.pos);
            match hit {
                Some(hit) => {
                    let start = self.record_start(hit);
                    match self.record_end(start, hit) {
                        Some(end) => {
                            self.cursor = end;
                            self.pos = end;
                            return Ok(Some((self.base + start as u64, &self.buf[start..end])));
                        }
                        None => {
                            if !self.refill(start)? {
                                return Err(ChunkError::Truncated { offset: self.base });
                            }
                        }
                    }
                }
                None => {
                    let keep = self.last_boundary();
                    if !self.refill(keep)? {
                        if self.filled > 0 {
                            return Err(ChunkError::Truncated { offset: self.base });
                        }
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The start of the record holding byte `hit`.
    fn record_start(&self, hit: usize) -> usize {
        let region = &self.buf[self.cursor..hit];
        let mut start = memrchr(b'\n', region).map_or(0, |i| i + 1);
        let mut parity = quotes(&region[..start]) & 1;
        // A line that starts inside quotes continues a record that began on an earlier line.
        while parity == 1 && start > 0 {
            let previous = memrchr(b'\n', &region[..start - 1]).map_or(0, |i| i + 1);
            parity ^= quotes(&region[previous..start]) & 1;
            start = previous;
        }
        self.cursor + start
    }

    /// The end (past its newline) of the record starting at `start` and holding `hit`; None when
    /// it goes on past the bytes read.
    fn record_end(&self, start: usize, hit: usize) -> Option<usize> {
        let mut parity = quotes(&self.buf[start..hit]) & 1;
        let mut i = hit;
        loop {
            let newline = i + memchr(b'\n', &self.buf[i..self.filled])?;
            parity ^= quotes(&self.buf[i..newline]) & 1;
            if parity == 0 {
                return Some(newline + 1);
            }
            i = newline + 1;
        }
    }

    /// The last record boundary in the buffer: past the last newline outside quotes.
    fn last_boundary(&self) -> usize {
        let region = &self.buf[self.cursor..self.filled];
        let mut parity = quotes(region) & 1;
        let mut end = region.len();
        while let Some(newline) = memrchr(b'\n', &region[..end]) {
            parity ^= quotes(&region[newline + 1..end]) & 1;
            if parity == 0 {
                return self.cursor + newline + 1;
            }
            end = newline;
        }
        self.cursor
    }

    /// Keeps the bytes from `keep` on and reads more after them; false at the end of the file.
    fn refill(&mut self, keep: usize) -> Result<bool, ChunkError> {
        self.buf.copy_within(keep..self.filled, 0);
        self.filled -= keep;
        self.base += keep as u64;
        self.cursor = 0;
        self.pos = 0;
        self.searcher.reset();
        if self.eof {
            return Ok(false);
        }
        if self.filled == self.buf.len() {
            // One record longer than the buffer: make room for it.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let before = self.filled;
        while self.filled < self.buf.len() {
            match self.file.read(&mut self.buf[self.filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ChunkError::Io(e)),
            }
        }
        Ok(self.filled > before)
    }
}

/// The parity of the number of `"` in `bytes` (0 or 1): 32 byte-wide counters that may wrap (a
/// wrap keeps the parity), which the compiler turns into SIMD compares and adds. Counting into a
/// usize per byte widened every byte and cost more than the memmem search.
pub fn quotes(bytes: &[u8]) -> usize {
    let mut lanes = [0u8; 32];
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, &b) in lanes.iter_mut().zip(block) {
            *lane = lane.wrapping_add(u8::from(b == b'"'));
        }
    }
    let tail = blocks.remainder().iter().filter(|&&b| b == b'"').count();
    (lanes.iter().map(|&l| usize::from(l)).sum::<usize>() + tail) & 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hits(text: &[u8], needle: &[u8], leftover: usize) -> Result<Vec<(u64, Vec<u8>)>, u64> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&text[leftover..]).unwrap();
        use std::io::Seek;
        file.rewind().unwrap();
        let searcher = Searcher::new(&[needle.to_vec(), b"\x00never".to_vec()]).unwrap();
        let mut chunks = Chunks::new(file, &text[..leftover], 0, searcher);
        let mut out = Vec::new();
        loop {
            match chunks.next_hit() {
                Ok(Some((offset, record))) => out.push((offset, record.to_vec())),
                Ok(None) => return Ok(out),
                Err(ChunkError::Truncated { offset }) => return Err(offset),
                Err(ChunkError::Io(e)) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn quote_parity() {
        for n in [0usize, 1, 31, 32, 33, 255, 256, 257, 1000, 1001] {
            let mut bytes = vec![b'"'; n];
            bytes.extend(b"abc\n".repeat(n % 7));
            assert_eq!(quotes(&bytes), n % 2, "{n}");
        }
    }

    #[test]
    fn records_with_newlines_are_found_whole() {
        let text = b"1,a\n2,\"x\nkey\n\"\"y\"\"\",b\n3,key\n4,c\n";
        let found = hits(text, b"key", 0).unwrap();
        assert_eq!(
            found,
            [
                (4, b"2,\"x\nkey\n\"\"y\"\"\",b\n".to_vec()),
                (22, b"3,key\n".to_vec())
            ]
        );
        assert_eq!(hits(text, b"key", 7).unwrap(), found);
        assert!(hits(text, b"none", 0).unwrap().is_empty());
    }

    #[test]
    fn a_file_ending_inside_a_record_is_truncated() {
        assert_eq!(hits(b"1,a\n2,key", b"key", 0), Err(4));
        assert_eq!(hits(b"1,a\n2,\"x\n", b"zzz", 0), Err(4));
    }

    proptest::proptest! {
        /// The chunked search finds the records the record-by-record reader finds.
        #[test]
        fn same_records_as_reading_them_one_by_one(rows in proptest::collection::vec(
            proptest::collection::vec(proptest::option::of("[ab\"\n,]{0,5}"), 1..4), 0..30)) {
            let mut bytes = Vec::new();
            for row in &rows {
                crate::sink::copy_csv::encode_row(&mut bytes, row.iter().map(|v| v.as_deref().map(str::as_bytes)));
            }
            let mut want = Vec::new();
            let mut reader = crate::verify::csv_read::Reader::new(&bytes[..]);
            let mut offset = 0u64;
            while let Some(record) = reader.next_record().unwrap() {
                if record.raw.windows(2).any(|w| w == b"ab") {
                    want.push((offset, record.raw.clone()));
                }
                offset += record.raw.len() as u64;
            }
            proptest::prop_assert_eq!(hits(&bytes, b"ab", 0).unwrap(), want);
        }
    }
}
