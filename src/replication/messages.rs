//! The CopyBoth sub-protocol of streaming replication, no I/O: XLogData and primary keepalive
//! from the server, standby status updates from us. Big-endian; times in µs since 2000-01-01.
//!
//! XLogData `w`: Int64 start · Int64 server WAL end · Int64 send time · payload (one pgoutput
//! message). Keepalive `k`: Int64 server WAL end · Int64 send time · Byte1 reply requested.
//! Standby status `r`: Int64 written · Int64 flushed · Int64 applied · Int64 client time ·
//! Byte1 reply requested.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::lsn::{Lsn, PgTimestamp};

const TAG_XLOG_DATA: u8 = b'w';
const TAG_KEEPALIVE: u8 = b'k';
const TAG_STANDBY_STATUS: u8 = b'r';

/// A message from the server in CopyBoth mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    XLogData {
        start: Lsn,
        wal_end: Lsn,
        payload: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        reply_requested: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationMessageError {
    #[error("empty CopyData from the walsender")]
    Empty,
    #[error("unknown replication message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("replication message {tag:?} has {len} bytes, expected {expected}")]
    Length {
        tag: char,
        len: usize,
        expected: &'static str,
    },
}

/// Decodes one CopyData payload from the walsender.
pub fn decode(mut data: Bytes) -> Result<ServerMessage, ReplicationMessageError> {
    if data.is_empty() {
        return Err(ReplicationMessageError::Empty);
    }
    let tag = data.get_u8();
    match tag {
        TAG_XLOG_DATA => {
            if data.len() < 24 {
                return Err(ReplicationMessageError::Length {
                    tag: 'w',
                    len: data.len(),
                    expected: "at least 24",
                });
            }
            let start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(ServerMessage::XLogData {
                start,
                wal_end,
                payload: data,
            })
        }
        TAG_KEEPALIVE => {
            if data.len() != 17 {
                return Err(ReplicationMessageError::Length {
                    tag: 'k',
                    len: data.len(),
                    expected: "17",
                });
            }
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(ServerMessage::Keepalive {
                wal_end,
                reply_requested: data.get_u8() != 0,
            })
        }
        other => Err(ReplicationMessageError::UnknownTag(other)),
    }
}

/// Appends a standby status update: `written` received, `flushed` durable (and applied).
pub fn standby_status(
    buf: &mut BytesMut,
    written: Lsn,
    flushed: Lsn,
    now: PgTimestamp,
    reply: bool,
) {
    buf.put_u8(TAG_STANDBY_STATUS);
    buf.put_u64(written.0);
    buf.put_u64(flushed.0);
    buf.put_u64(flushed.0);
    buf.put_i64(now.0);
    buf.put_u8(u8::from(reply));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlogdata_and_keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(1);
        b.put_u64(2);
        b.put_i64(3);
        b.put_slice(b"Bpayload");
        assert_eq!(
            decode(b.freeze()).unwrap(),
            ServerMessage::XLogData {
                start: Lsn(1),
                wal_end: Lsn(2),
                payload: Bytes::from_static(b"Bpayload")
            }
        );
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(7);
        b.put_i64(0);
        b.put_u8(1);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            ServerMessage::Keepalive {
                wal_end: Lsn(7),
                reply_requested: true
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(decode(Bytes::new()), Err(ReplicationMessageError::Empty));
        assert!(decode(Bytes::from_static(b"w\0\0")).is_err());
        assert!(decode(Bytes::from_static(b"k\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0")).is_err());
        assert_eq!(
            decode(Bytes::from_static(b"x")),
            Err(ReplicationMessageError::UnknownTag(b'x'))
        );
    }

    #[test]
    fn status_update_layout() {
        let mut b = BytesMut::new();
        standby_status(&mut b, Lsn(0x10), Lsn(0x8), PgTimestamp(5), false);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &0x10u64.to_be_bytes());
        assert_eq!(&b[9..17], &0x8u64.to_be_bytes());
        assert_eq!(&b[17..25], &0x8u64.to_be_bytes());
        assert_eq!(b[33], 0);
    }
}
