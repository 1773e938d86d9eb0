//! Quiet days: whether a missing stream file means the day had no rows. Reads the checkpoint's
//! `covered` line (src/coverage.rs writes it): the stretch of server time every committed
//! transaction is in the files for, and the server's TimeZone.
//!
//! A row belongs to day D when its `changed_at` (its transaction's start, a naive timestamp in
//! the server's TimeZone) falls on D, so its transaction committed after D began there. D is
//! covered when the stretch begins at or before D's first instant and ends at or after its last,
//! read in that zone; when the zone is unknown, in every zone from UTC+14 to UTC-12.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;

use crate::checkpoint::{Checkpoint, Covered, STATE_FILE};

/// The instants at which `day` begins and ends, and the zone they were read in (None: every
/// civil zone, from UTC+14 to UTC-12).
pub(super) fn day_span(
    day: NaiveDate,
    zone: Option<&str>,
) -> (DateTime<Utc>, DateTime<Utc>, Option<Tz>) {
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight exists");
    let next = day.succ_opt().unwrap_or(day);
    match zone.and_then(|z| z.parse::<Tz>().ok()) {
        Some(tz) => (
            first_instant(&tz, midnight(day)),
            first_instant(&tz, midnight(next)),
            Some(tz),
        ),
        None => (
            midnight(day).and_utc() - Duration::hours(14),
            midnight(next).and_utc() + Duration::hours(12),
            None,
        ),
    }
}

/// The first instant from which the local time in `tz` is `local` or later for good: the later
/// one of a repeated local time, and for one skipped by a transition the first hour that exists.
fn first_instant(tz: &Tz, local: chrono::NaiveDateTime) -> DateTime<Utc> {
    for hours in 0..48 {
        match tz.from_local_datetime(&(local + Duration::hours(hours))) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(_, later) => return later.with_timezone(&Utc),
            LocalResult::None => {}
        }
    }
    local.and_utc() + Duration::hours(14)
}

/// Whether the stream's record shows it covered `day`: Ok with how, or Err with why it cannot
/// tell.
pub(super) fn covered(state: Option<&Checkpoint>, day: NaiveDate) -> Result<String, String> {
    let Some(state) = state else {
        return Err(format!(
            "the out-dir has no {STATE_FILE}: no stream has run with this --out-dir"
        ));
    };
    let Some(Covered { from, to, zone }) = &state.covered else {
        return Err(
            "the stream has not recorded which time it covered (it has not run since \
             audit-tail learnt to, or not yet long enough to)"
                .to_string(),
        );
    };
    let (start, end, tz) = day_span(day, zone.as_deref());
    let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let zone_text = match tz {
        Some(tz) => format!("in {tz}"),
        None => match zone {
            Some(z) => {
                format!("in any zone: its time zone is unknown ({z:?} is not a tz database name)")
            }
            None => "in any zone: its time zone is unknown".to_string(),
        },
    };
    let stretch = format!("from {} to {} (server time)", time(from), time(to));
    if *from <= start && *to >= end {
        Ok(format!(
            "the stream covered {day} and saw no rows: its files are complete {stretch}, and \
             {day} runs from {} to {} {zone_text}",
            time(&start),
            time(&end)
        ))
    } else {
        Err(format!(
            "the stream's files are complete only {stretch}, and {day} runs from {} to {} \
             {zone_text}: it cannot tell whether the day had rows",
            time(&start),
            time(&end)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn days_begin_and_end_in_their_zone_or_in_every_zone() {
        let day = NaiveDate::from_ymd_opt(2025, 10, 21).unwrap();
        let (start, end, _) = day_span(day, Some("UTC"));
        assert_eq!(
            (start, end),
            (at("2025-10-21T00:00:00Z"), at("2025-10-22T00:00:00Z"))
        );
        let (start, end, _) = day_span(day, Some("Europe/Paris"));
        assert_eq!(
            (start, end),
            (at("2025-10-20T22:00:00Z"), at("2025-10-21T22:00:00Z"))
        );
        let (start, end, tz) = day_span(day, Some("UTC+3"));
        assert!(tz.is_none(), "a POSIX zone is not read as a tz name");
        assert_eq!(
            (start, end),
            (at("2025-10-20T10:00:00Z"), at("2025-10-22T12:00:00Z"))
        );
        // Europe/Paris leaves summer time on 2025-10-26 at 03:00: that day has 25 hours.
        let (start, end, _) = day_span(
            NaiveDate::from_ymd_opt(2025, 10, 26).unwrap(),
            Some("Europe/Paris"),
        );
        assert_eq!(end - start, Duration::hours(25));
        // America/Santiago skipped midnight on 2025-09-07 (00:00 became 01:00).
        let (start, _, _) = day_span(
            NaiveDate::from_ymd_opt(2025, 9, 7).unwrap(),
            Some("America/Santiago"),
        );
        assert_eq!(start, at("2025-09-07T04:00:00Z"));
    }
}
