//! A bounds-checked, big-endian reader over `Bytes`: every read checks what is left first, so no
//! input can index out of bounds, and slices share the message's buffer instead of copying it.

use bytes::{Buf, Bytes};

use super::DecodeError;
use crate::lsn::{Lsn, PgTimestamp};

pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                left: self.buf.len(),
            });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_i16())
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_i32())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.need(8, what)?;
        Ok(self.buf.get_i64())
    }

    pub(crate) fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.need(8, what)?;
        Ok(Lsn(self.buf.get_u64()))
    }

    pub(crate) fn timestamp(&mut self, what: &'static str) -> Result<PgTimestamp, DecodeError> {
        self.i64(what).map(PgTimestamp)
    }

    /// `n` bytes as a slice of the same buffer.
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// A NUL-terminated UTF-8 string; the NUL is consumed.
    pub(crate) fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated { what })?;
        let raw = self.buf.split_to(end);
        self.buf.advance(1);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { what })
    }

    /// A count read from the wire, checked against what is left at `min_size` bytes per item, so
    /// that a forged count cannot make us allocate more than the message could hold.
    pub(crate) fn count(
        &self,
        n: i64,
        min_size: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = usize::try_from(n).map_err(|_| DecodeError::BadCount { what, count: n })?;
        if n.saturating_mul(min_size) > self.buf.len() {
            return Err(DecodeError::BadCount {
                what,
                count: n as i64,
            });
        }
        Ok(n)
    }

    /// The message must end here.
    pub(crate) fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what,
                left: self.buf.len(),
            })
        }
    }
}
