//! Hand-built byte fixtures, valid and malformed, and a property test over random bytes.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// Builds messages byte by byte the way the server lays them out.
#[derive(Default)]
struct B(BytesMut);

impl B {
    fn tag(t: u8) -> B {
        let mut b = B::default();
        b.0.put_u8(t);
        b
    }
    fn u8(mut self, v: u8) -> B {
        self.0.put_u8(v);
        self
    }
    fn i16(mut self, v: i16) -> B {
        self.0.put_i16(v);
        self
    }
    fn i32(mut self, v: i32) -> B {
        self.0.put_i32(v);
        self
    }
    fn i64(mut self, v: i64) -> B {
        self.0.put_i64(v);
        self
    }
    fn s(mut self, v: &str) -> B {
        self.0.put_slice(v.as_bytes());
        self.0.put_u8(0);
        self
    }
    fn text(mut self, v: &str) -> B {
        self.0.put_u8(b't');
        self.0.put_i32(v.len() as i32);
        self.0.put_slice(v.as_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> B {
        self.0.put_slice(v);
        self
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

fn relation_fixture() -> Bytes {
    B::tag(b'R')
        .i32(16385)
        .s("public")
        .s("users_audit")
        .u8(b'd')
        .i16(2)
        .u8(1)
        .s("id")
        .i32(23)
        .i32(-1)
        .u8(0)
        .s("new_value")
        .i32(25)
        .i32(-1)
        .done()
}

fn insert_fixture() -> Bytes {
    B::tag(b'I')
        .i32(16385)
        .u8(b'N')
        .i16(3)
        .text("42")
        .u8(b'n')
        .text("Иван")
        .done()
}

#[test]
fn begin_and_commit() {
    let begin = B::tag(b'B').i64(0x1_0000_0010).i64(1234).i32(777).done();
    assert_eq!(
        decode(begin).unwrap(),
        Message::Begin(Begin {
            final_lsn: Lsn(0x1_0000_0010),
            commit_time: PgTimestamp(1234),
            xid: 777
        })
    );
    let commit = B::tag(b'C').u8(0).i64(16).i64(24).i64(99).done();
    assert_eq!(
        decode(commit).unwrap(),
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(16),
            end_lsn: Lsn(24),
            commit_time: PgTimestamp(99)
        })
    );
}

#[test]
fn relation_with_columns() {
    let Message::Relation(r) = decode(relation_fixture()).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(
        (r.oid, r.schema.as_str(), r.name.as_str()),
        (16385, "public", "users_audit")
    );
    assert_eq!(r.replica_identity, b'd');
    assert_eq!(r.columns.len(), 2);
    assert_eq!(r.columns[0].name, "id");
    assert_eq!(r.columns[0].flags, 1);
    assert_eq!(r.columns[1].type_oid, 25);
    assert_eq!(r.columns[1].type_modifier, -1);
}

#[test]
fn insert_with_text_null_and_utf8() {
    let Message::Insert(i) = decode(insert_fixture()).unwrap() else {
        panic!("not an insert")
    };
    assert_eq!(i.relation, 16385);
    assert_eq!(
        i.new.0,
        vec![
            Value::Text(Bytes::from_static(b"42")),
            Value::Null,
            Value::Text(Bytes::from("Иван")),
        ]
    );
}

#[test]
fn update_with_and_without_old_tuple_and_unchanged_toast() {
    let plain = B::tag(b'U').i32(5).u8(b'N').i16(1).u8(b'u').done();
    assert_eq!(
        decode(plain).unwrap(),
        Message::Update(Update {
            relation: 5,
            old: None,
            new: Tuple(vec![Value::Unchanged])
        })
    );
    let keyed = B::tag(b'U')
        .i32(5)
        .u8(b'K')
        .i16(1)
        .text("1")
        .u8(b'N')
        .i16(1)
        .text("2")
        .done();
    let Message::Update(u) = decode(keyed).unwrap() else {
        panic!()
    };
    assert_eq!(
        u.old,
        Some(OldTuple::Key(Tuple(vec![Value::Text(Bytes::from("1"))])))
    );
    let full = B::tag(b'U')
        .i32(5)
        .u8(b'O')
        .i16(0)
        .u8(b'N')
        .i16(1)
        .raw(b"b\0\0\0\x01\xff")
        .done();
    let Message::Update(u) = decode(full).unwrap() else {
        panic!()
    };
    assert_eq!(u.old, Some(OldTuple::Full(Tuple(vec![]))));
    assert_eq!(u.new.0, vec![Value::Binary(Bytes::from_static(&[0xff]))]);
}

#[test]
fn delete_truncate_type_origin_and_message() {
    let delete = B::tag(b'D').i32(9).u8(b'K').i16(1).text("7").done();
    assert!(matches!(
        decode(delete).unwrap(),
        Message::Delete(Delete {
            relation: 9,
            old: OldTuple::Key(_)
        })
    ));
    let truncate = B::tag(b'T').i32(2).u8(1).i32(10).i32(11).done();
    assert_eq!(
        decode(truncate).unwrap(),
        Message::Truncate(Truncate {
            options: 1,
            relations: vec![10, 11]
        })
    );
    let typ = B::tag(b'Y').i32(600).s("public").s("mood").done();
    assert_eq!(
        decode(typ).unwrap(),
        Message::Type(Type {
            oid: 600,
            schema: "public".into(),
            name: "mood".into()
        })
    );
    let origin = B::tag(b'O').i64(3).s("node_a").done();
    assert_eq!(
        decode(origin).unwrap(),
        Message::Origin(Origin {
            lsn: Lsn(3),
            name: "node_a".into()
        })
    );
    let msg = B::tag(b'M')
        .u8(1)
        .i64(8)
        .s("audit")
        .i32(3)
        .raw(b"abc")
        .done();
    assert_eq!(
        decode(msg).unwrap(),
        Message::Message(LogicalMessage {
            flags: 1,
            lsn: Lsn(8),
            prefix: "audit".into(),
            content: Bytes::from_static(b"abc")
        })
    );
}

#[test]
fn malformed_messages_are_typed_errors() {
    assert_eq!(decode(Bytes::new()), Err(DecodeError::Empty));
    assert_eq!(
        decode(B::tag(b'Z').done()),
        Err(DecodeError::UnknownTag(b'Z'))
    );
    // Streaming (protocol v2) tags are unknown to v1.
    assert_eq!(
        decode(B::tag(b'S').done()),
        Err(DecodeError::UnknownTag(b'S'))
    );
    assert!(matches!(
        decode(B::tag(b'B').i64(1).done()),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'C').u8(0).i64(1).i64(2).i64(3).u8(0).done()),
        Err(DecodeError::TrailingBytes { left: 1, .. })
    ));
    assert!(matches!(
        decode(B::tag(b'R').i32(1).raw(b"public").done()),
        Err(DecodeError::Unterminated { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'Y').i32(1).raw(b"\xff\0").s("x").done()),
        Err(DecodeError::InvalidUtf8 { .. })
    ));
    // Counts that the message cannot hold are refused before any allocation.
    assert!(matches!(
        decode(B::tag(b'T').i32(i32::MAX).u8(0).done()),
        Err(DecodeError::BadCount { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'T').i32(-1).u8(0).done()),
        Err(DecodeError::BadCount { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'I').i32(1).u8(b'N').i16(i16::MAX).done()),
        Err(DecodeError::BadCount { .. })
    ));
    assert!(matches!(
        decode(
            B::tag(b'I')
                .i32(1)
                .u8(b'N')
                .i16(1)
                .u8(b't')
                .i32(1 << 30)
                .raw(b"x")
                .done()
        ),
        Err(DecodeError::BadCount { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(-5).done()),
        Err(DecodeError::BadCount { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'I').i32(1).u8(b'K').i16(0).done()),
        Err(DecodeError::BadMarker { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'I').i32(1).u8(b'N').i16(1).u8(b'x').done()),
        Err(DecodeError::BadMarker { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'U').i32(1).u8(b'K').i16(0).u8(b'K').i16(0).done()),
        Err(DecodeError::BadMarker { .. })
    ));
    assert!(matches!(
        decode(B::tag(b'D').i32(1).u8(b'N').i16(0).done()),
        Err(DecodeError::BadMarker { .. })
    ));
    assert!(matches!(
        decode(
            B::tag(b'M')
                .u8(0)
                .i64(0)
                .s("p")
                .i32(10)
                .raw(b"short")
                .done()
        ),
        Err(DecodeError::BadCount { .. })
    ));
}

#[test]
fn every_prefix_of_a_valid_message_is_an_error_not_a_panic() {
    for fixture in [relation_fixture(), insert_fixture()] {
        for cut in 0..fixture.len() {
            assert!(
                decode(fixture.slice(..cut)).is_err(),
                "prefix of {cut} bytes"
            );
        }
        assert!(decode(fixture).is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(Bytes::from(data));
    }

    #[test]
    fn random_bodies_behind_each_tag_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut data = vec![tag];
        data.extend(body);
        let _ = decode(Bytes::from(data));
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in 0usize..2,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut data = if which == 0 { relation_fixture() } else { insert_fixture() }.to_vec();
        for (at, byte) in flips {
            let i = at % data.len();
            data[i] = byte;
        }
        let _ = decode(Bytes::from(data));
    }
}
