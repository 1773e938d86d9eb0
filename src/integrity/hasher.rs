//! What a digest says about a file's first bytes, computed as the file grows: SHA-256, the CSV
//! records, and the row sum (the wrapping sum of a 64-bit FNV-1a of every record, its line end
//! included). A record ends at a line end outside double quotes: COPY's CSV quotes a field that
//! holds a line end, and a doubled quote inside one toggles twice.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{IntegrityError, io_err};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
pub(crate) const READ_CHUNK: usize = 1 << 20;

/// The state after the first `len` bytes of a file.
#[derive(Clone)]
pub struct PrefixHasher {
    pub len: u64,
    pub sha: Sha256,
    /// CSV records, the header included.
    pub records: u64,
    pub rowsum: u64,
    /// Physical lines ended so far (line ends inside quotes too): line numbers for reports.
    pub lines: u64,
    quoted: bool,
    record: u64,
}

impl Default for PrefixHasher {
    fn default() -> Self {
        PrefixHasher {
            len: 0,
            sha: Sha256::new(),
            records: 0,
            rowsum: 0,
            lines: 0,
            quoted: false,
            record: FNV_OFFSET,
        }
    }
}

impl PrefixHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.count(bytes);
    }

    /// Hashes the part of `bytes` (which begin at byte `offset` of the file) past `self.len`: the
    /// stream feeds the same buffer here when it commits it and when it writes it out, and each
    /// byte is hashed once. Bytes before `self.len` were hashed already; `offset` is never past it.
    pub fn feed(&mut self, offset: u64, bytes: &[u8]) {
        debug_assert!(offset <= self.len, "a gap in the bytes hashed");
        let skip = usize::try_from(self.len - offset).unwrap_or(usize::MAX);
        if let Some(rest) = bytes.get(skip..) {
            self.update(rest);
        }
    }

    /// Records, lines and the row sum of `bytes`, without the SHA-256.
    pub fn count(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        for &b in bytes {
            self.record = (self.record ^ u64::from(b)).wrapping_mul(FNV_PRIME);
            match b {
                b'"' => self.quoted = !self.quoted,
                b'\n' => {
                    self.lines += 1;
                    if !self.quoted {
                        self.records += 1;
                        self.rowsum = self.rowsum.wrapping_add(self.record);
                        self.record = FNV_OFFSET;
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether the bytes so far end a record (a line end outside quotes).
    pub fn last_was_record_end(&self) -> bool {
        self.record == FNV_OFFSET && !self.quoted
    }

    /// Rows: records after the header.
    pub fn rows(&self) -> u64 {
        self.records.saturating_sub(1)
    }

    pub fn sha256(&self) -> [u8; 32] {
        self.sha.clone().finalize().into()
    }

    /// Reads `path` from `self.len` on until `len` (or its end, if shorter). Returns whether all
    /// `len` bytes were there.
    pub fn extend_from(&mut self, path: &Path, len: u64) -> Result<bool, IntegrityError> {
        let mut file = File::open(path).map_err(io_err("open", path))?;
        file.seek(SeekFrom::Start(self.len))
            .map_err(io_err("read", path))?;
        let mut reader = file.take(len.saturating_sub(self.len));
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = reader.read(&mut buf).map_err(io_err("read", path))?;
            if n == 0 {
                return Ok(self.len == len);
            }
            self.update(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_row_sums_follow_csv_quoting_and_ignore_order() {
        let mut a = PrefixHasher::default();
        a.update(b"a,b\n1,\"x\ny\"\n2,\"\"\"\"\n");
        assert_eq!((a.records, a.rows(), a.lines), (3, 2, 4));
        let mut b = PrefixHasher::default();
        b.update(b"a,b\n2,\"\"\"\"\n");
        b.update(b"1,\"x\ny\"\n");
        assert_eq!(a.rowsum, b.rowsum, "the same rows in another order");
        assert_ne!(a.sha256(), b.sha256());
        let mut c = PrefixHasher::default();
        c.update(b"a,b\n1,\"x\nz\"\n2,\"\"\"\"\n");
        assert_ne!(a.rowsum, c.rowsum, "an edited row");
        let direct: [u8; 32] = Sha256::digest(b"a,b\n1,\"x\ny\"\n2,\"\"\"\"\n").into();
        assert_eq!(a.sha256(), direct);
    }

    #[test]
    fn feeding_a_buffer_twice_hashes_each_byte_once() {
        let mut fed = PrefixHasher::default();
        fed.feed(0, b"a,b\n1,");
        fed.feed(0, b"a,b\n1,x\n");
        fed.feed(8, b"2,y\n");
        fed.feed(8, b"2,y\n");
        let mut direct = PrefixHasher::default();
        direct.update(b"a,b\n1,x\n2,y\n");
        assert_eq!((fed.len, fed.rows()), (12, 2));
        assert_eq!(fed.sha256(), direct.sha256());
        assert_eq!(fed.rowsum, direct.rowsum);
    }
}
