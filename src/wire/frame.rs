//! Backend message framing, no I/O: bytes in a buffer → whole messages, or Ok(None) until a
//! message is complete. postgres-protocol parses every message but CopyBothResponse (`W`), which
//! we frame here ourselves: Byte1 'W' · Int32 length · Int8 format · Int16 ncols · Int16 × ncols.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Message};

use super::ServerError;

const TAG_COPY_BOTH_RESPONSE: u8 = b'W';

/// One backend message.
pub enum Backend {
    /// The server entered CopyBoth mode (START_REPLICATION succeeded).
    CopyBothResponse,
    /// A CopyData payload, sharing the read buffer.
    CopyData(Bytes),
    Other(Message),
}

/// Takes one whole message off the front of `buf`, or returns None when more bytes are needed.
pub fn parse(buf: &mut BytesMut) -> io::Result<Option<Backend>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] == TAG_COPY_BOTH_RESPONSE {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len < 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "CopyBothResponse with a length below 4",
            ));
        }
        if buf.len() < len + 1 {
            return Ok(None);
        }
        buf.advance(len + 1);
        return Ok(Some(Backend::CopyBothResponse));
    }
    Ok(Message::parse(buf)?.map(|message| match message {
        Message::CopyData(body) => Backend::CopyData(body.into_bytes()),
        other => Backend::Other(other),
    }))
}

/// The fields of an ErrorResponse or NoticeResponse.
pub fn server_error(mut fields: ErrorFields<'_>) -> io::Result<ServerError> {
    let mut error = ServerError::default();
    while let Some(field) = fields.next()? {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => error.severity = value,
            b'S' if error.severity.is_empty() => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    Ok(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_messages_wait_for_more_bytes() {
        let mut buf = BytesMut::from(&b"W\0\0\0\x07\0\0"[..]);
        assert!(parse(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\0");
        assert!(matches!(
            parse(&mut buf).unwrap(),
            Some(Backend::CopyBothResponse)
        ));
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"d\0\0\0\x07ab"[..]);
        assert!(parse(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"cZ");
        let Some(Backend::CopyData(data)) = parse(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(&data[..], b"abc");
        assert_eq!(&buf[..], b"Z");
    }

    #[test]
    fn bad_lengths_and_unknown_tags_are_errors() {
        assert!(parse(&mut BytesMut::from(&b"W\0\0\0\x02"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"d\0\0\0\x01"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"?\0\0\0\x04"[..])).is_err());
    }
}
