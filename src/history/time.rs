//! TIME arguments of `history` and `log`: ISO 8601 with or without a zone, PostgreSQL's own text
//! (`2026-11-23 14:05:01.5+00`, as psql prints a timestamptz), and relative forms (`2h`, `30min`,
//! `3d`, `yesterday`) as journalctl takes them.
//!
//! The trail's `changed_at` is a `timestamp` without zone, written in the server session's
//! TimeZone: every TIME becomes a wall-clock time of that zone (the trail's zone, `--tz`) before
//! it is compared. A time without a zone is already one and is taken as it is written.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};

/// The zone the trail's wall-clock times are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// This machine's zone (TZ, /etc/localtime).
    Local,
    Named(chrono_tz::Tz),
}

impl Zone {
    /// `local`, `UTC` or an IANA name such as `Europe/Berlin`.
    pub fn parse(text: &str) -> Result<Zone, String> {
        if text.eq_ignore_ascii_case("local") {
            return Ok(Zone::Local);
        }
        text.parse::<chrono_tz::Tz>().map(Zone::Named).map_err(|_| {
            format!("{text:?} is not a time zone: give an IANA name such as UTC or Europe/Berlin, or `local`")
        })
    }

    /// The wall-clock time of `instant` in this zone.
    pub fn wall(self, instant: DateTime<Utc>) -> NaiveDateTime {
        match self {
            Zone::Local => instant.with_timezone(&chrono::Local).naive_local(),
            Zone::Named(tz) => instant.with_timezone(&tz).naive_local(),
        }
    }

    /// The zone's name for messages.
    pub fn name(self) -> String {
        match self {
            Zone::Local => {
                let offset = chrono::Local::now().offset().fix();
                match std::env::var("TZ") {
                    Ok(tz) if !tz.is_empty() => format!("this machine's zone ({tz}, now {offset})"),
                    _ => format!("this machine's zone (now {offset})"),
                }
            }
            Zone::Named(tz) => tz.name().to_string(),
        }
    }
}

/// A parsed TIME: the trail's wall-clock time it stands for, and whether it had no zone of its
/// own (then it was read in the trail's zone as written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    pub wall: NaiveDateTime,
    pub zoneless: bool,
}

/// Reads `text` as a TIME, `now` being the current instant and `zone` the trail's zone.
pub fn parse(text: &str, now: DateTime<Utc>, zone: Zone) -> Result<Moment, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let today = zone.wall(now).date();
    let midnight = |d: NaiveDate| Moment {
        wall: d.and_time(NaiveTime::MIN),
        zoneless: false,
    };
    match lower.as_str() {
        "now" => return Ok(at(zone.wall(now))),
        "today" => return Ok(midnight(today)),
        "yesterday" => return Ok(midnight(today - Duration::days(1))),
        "tomorrow" => return Ok(midnight(today + Duration::days(1))),
        _ => {}
    }
    if let Some(ago) = relative(&lower) {
        return Ok(at(zone.wall(now - ago)));
    }
    absolute(t, zone).ok_or_else(|| {
        format!(
            "{text:?} is not a time: give ISO 8601 (2026-11-23T14:05:01Z, 2026-11-23 14:05), \
             PostgreSQL's text (2026-11-23 14:05:01.5+00) or a relative time (2h, 30min, 3d, yesterday)"
        )
    })
}

fn at(wall: NaiveDateTime) -> Moment {
    Moment {
        wall,
        zoneless: false,
    }
}

/// `2h`, `-2h`, `30min`, `3 days ago`: how long ago.
fn relative(text: &str) -> Option<Duration> {
    let t = text.strip_prefix('-').unwrap_or(text);
    let t = t.strip_suffix("ago").unwrap_or(t).trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let n: i64 = t[..digits].parse().ok()?;
    let unit = t[digits..].trim();
    let seconds = match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => return None,
    };
    Some(Duration::seconds(n * seconds))
}

/// ISO 8601 or PostgreSQL's text, with or without a zone.
fn absolute(text: &str, zone: Zone) -> Option<Moment> {
    let mut t = text.to_string();
    if t.len() > 10 && matches!(t.as_bytes()[10], b'T' | b't') {
        t.replace_range(10..11, " ");
    }
    let (wall_text, offset) = split_zone(&t)?;
    let wall = wall_time(wall_text.trim_end())?;
    match offset {
        None => Some(Moment {
            wall,
            zoneless: true,
        }),
        Some(seconds) => {
            let fixed = chrono::FixedOffset::east_opt(seconds)?;
            let instant = fixed
                .from_local_datetime(&wall)
                .single()?
                .with_timezone(&Utc);
            Some(at(zone.wall(instant)))
        }
    }
}

/// The wall part and the zone's offset in seconds east of UTC (`Z`, `+00`, `+05:30`, `-0800`,
/// `+05:53:28`), None for the offset when there is no zone.
fn split_zone(text: &str) -> Option<(&str, Option<i32>)> {
    if let Some(wall) = text.strip_suffix(['Z', 'z']) {
        return Some((wall, Some(0)));
    }
    if let Some(wall) = text.strip_suffix(" UTC") {
        return Some((wall, Some(0)));
    }
    // A zone's sign comes after the date's own dashes (past position 10).
    let Some(sign_at) = text
        .char_indices()
        .skip(11)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map(|(i, _)| i)
    else {
        return Some((text, None));
    };
    let sign = if &text[sign_at..=sign_at] == "-" {
        -1
    } else {
        1
    };
    let digits: String = text[sign_at + 1..].chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4 | 6) {
        return None;
    }
    let part = |i: usize| {
        digits
            .get(i..i + 2)
            .map_or(Some(0), |d| d.parse::<i32>().ok())
    };
    let (h, m, s) = (part(0)?, part(2)?, part(4)?);
    if h > 15 || m > 59 || s > 59 {
        return None;
    }
    Some((&text[..sign_at], Some(sign * (h * 3600 + m * 60 + s))))
}

fn wall_time(text: &str) -> Option<NaiveDateTime> {
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(wall) = NaiveDateTime::parse_from_str(text, format) {
            return Some(wall);
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_time(NaiveTime::MIN))
}

/// A `changed_at` value as the trail writes it (`2026-11-23 14:05:01.482913`).
pub fn changed_at(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap()
    }

    fn berlin() -> Zone {
        Zone::parse("Europe/Berlin").unwrap()
    }

    fn wall(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").unwrap()
    }

    #[test]
    fn zoned_times_become_the_trails_wall_clock() {
        for (text, want) in [
            ("2026-11-23 14:05:01.5+00", "2026-11-23 15:05:01.5"),
            ("2026-11-23T14:05:01Z", "2026-11-23 15:05:01"),
            ("2026-11-23T14:05:01+05:30", "2026-11-23 09:35:01"),
            ("2026-11-23 14:05:01-0800", "2026-11-23 23:05:01"),
            ("2026-11-23 14:05:01+05:53:28", "2026-11-23 09:11:33"),
            ("2026-11-23 14:05:01 UTC", "2026-11-23 15:05:01"),
        ] {
            let m = parse(text, now(), berlin()).unwrap();
            assert_eq!((m.wall, m.zoneless), (wall(want), false), "{text}");
        }
    }

    #[test]
    fn zoneless_times_are_taken_as_written() {
        for (text, want) in [
            ("2026-11-23 14:05:01.25", "2026-11-23 14:05:01.25"),
            ("2026-11-23T14:05", "2026-11-23 14:05:00"),
            ("2026-11-23", "2026-11-23 00:00:00"),
        ] {
            let m = parse(text, now(), berlin()).unwrap();
            assert_eq!((m.wall, m.zoneless), (wall(want), true), "{text}");
        }
    }

    #[test]
    fn relative_times_count_back_from_now() {
        for (text, want) in [
            ("2h", "2026-11-23 13:00:00"),
            ("-30min", "2026-11-23 14:30:00"),
            ("3 days ago", "2026-11-20 15:00:00"),
            ("yesterday", "2026-11-22 00:00:00"),
            ("today", "2026-11-23 00:00:00"),
            ("now", "2026-11-23 15:00:00"),
        ] {
            assert_eq!(
                parse(text, now(), berlin()).unwrap().wall,
                wall(want),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_times_say_what_is_accepted() {
        for text in [
            "",
            "soon",
            "2026-13-01",
            "2026-11-23 25:00",
            "2h later",
            "2026-11-23 14:05+99",
            "12x",
        ] {
            let e = parse(text, now(), berlin()).unwrap_err();
            assert!(e.contains("is not a time"), "{text}: {e}");
        }
        assert!(Zone::parse("Mars/Olympus").is_err());
    }
}
