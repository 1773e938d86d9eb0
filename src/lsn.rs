//! WAL positions and PostgreSQL timestamps as they travel in the replication protocol.
//!
//! Used by every stage of the flow: `Lsn` is the one type for a WAL position in every signature,
//! printed as PostgreSQL prints it (`16/B374D848`), and `PgTimestamp` is the protocol's
//! microseconds since 2000-01-01 00:00:00 UTC.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};

/// A WAL position (log sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// `X/Y` is not a valid WAL position.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a WAL position: write it as PostgreSQL does, two hex numbers like 16/B374D848"
)]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid = |part: &str| !part.is_empty() && part.len() <= 8;
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Microseconds since 2000-01-01 00:00:00 UTC, the protocol's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct PgTimestamp(pub i64);

/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01.
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

impl PgTimestamp {
    /// The current time.
    pub fn now() -> PgTimestamp {
        PgTimestamp::from_datetime(Utc::now())
    }

    pub fn from_datetime(t: DateTime<Utc>) -> PgTimestamp {
        PgTimestamp(t.timestamp_micros() - PG_EPOCH_UNIX_SECONDS * 1_000_000)
    }

    /// As a UTC date-time; None only for values beyond chrono's range.
    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        let unix_micros = self.0.checked_add(PG_EPOCH_UNIX_SECONDS * 1_000_000)?;
        Utc.timestamp_micros(unix_micros).single()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips_in_postgres_form() {
        for (text, value) in [
            ("0/0", 0),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/a".parse::<Lsn>().unwrap(), Lsn(10));
    }

    #[test]
    fn malformed_lsns_are_errors() {
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1",
            "x/1",
            "1/2/3",
            "123456789/0",
            "-1/0",
            "1 /0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_convert_from_the_2000_epoch() {
        let t = PgTimestamp(0).to_datetime().unwrap();
        assert_eq!(t.to_rfc3339(), "2000-01-01T00:00:00+00:00");
        let t = PgTimestamp(1_000_001).to_datetime().unwrap();
        assert_eq!(PgTimestamp::from_datetime(t), PgTimestamp(1_000_001));
        assert!(PgTimestamp(i64::MAX).to_datetime().is_none());
    }
}
