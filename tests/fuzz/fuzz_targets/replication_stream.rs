//! Bytes as the walsender could send them: each input is a sequence of CopyData payloads, each
//! preceded by a 2-byte big-endian length. Every payload goes through the replication message
//! decoder, XLogData through the pgoutput decoder, and decoded messages through one capture, as
//! `stream` does. Nothing may panic, whatever the bytes; errors are the expected outcome.
#![no_main]

use audit_tail::capture::Capture;
use audit_tail::lsn::Lsn;
use audit_tail::pgoutput;
use audit_tail::replication::messages::{self, ServerMessage};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut capture = Capture::new(Lsn(0x100));
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let payload = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        // The payload also as a bare pgoutput message, so short inputs reach the decoder.
        if let Ok(message) = pgoutput::decode(payload.clone()) {
            let _ = capture.handle(message);
        }
        if let Ok(ServerMessage::XLogData { payload, .. }) = messages::decode(payload) {
            if let Ok(message) = pgoutput::decode(payload) {
                let _ = capture.handle(message);
            }
        }
    }
});
