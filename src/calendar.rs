//! UTC calendar keys for the day and month windows, and when each window resets.

/// Milliseconds in a minute.
pub const MINUTE_MS: u64 = 60_000;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// The UTC day number (days since 1970-01-01).
pub fn day_key(now_ms: u64) -> u64 {
    now_ms / DAY_MS
}

/// Start of the next UTC day, in ms.
pub fn next_day_ms(now_ms: u64) -> u64 {
    (day_key(now_ms) + 1) * DAY_MS
}

/// The UTC month as `year * 12 + (month - 1)`.
pub fn month_key(now_ms: u64) -> u32 {
    let (year, month, _) = civil_from_days(day_key(now_ms) as i64);
    (year * 12 + (month as i64 - 1)) as u32
}

/// Start of the next UTC month, in ms.
pub fn next_month_ms(now_ms: u64) -> u64 {
    let key = month_key(now_ms) as i64 + 1;
    let (year, month) = (key.div_euclid(12), key.rem_euclid(12) + 1);
    days_from_civil(year, month as u32, 1).max(0) as u64 * DAY_MS
}

/// `ms` as an RFC 3339 UTC timestamp with second precision.
pub fn rfc3339(ms: u64) -> String {
    format!("{}Z", DateTime(ms))
}

/// `ms` as an RFC 3339 UTC timestamp with millisecond precision (the request log's `timestamp`).
pub fn rfc3339_millis(ms: u64) -> String {
    format!("{}.{:03}Z", DateTime(ms), ms % 1000)
}

/// Parses an RFC 3339 timestamp (`2026-12-31T00:00:00Z`, fractions of a second and `±HH:MM`
/// offsets allowed; `t`/`z` and a space for `T` too) into ms since the epoch. `None` for
/// anything else, and for times before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days_in_month = days_from_civil(year + i64::from(month == 12), (month % 12 + 1) as u32, 1)
        - days_from_civil(year, month as u32, 1);
    if day < 1 || day > days_in_month {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        millis = digits(start, (at - start).min(3))? * 10i64.pow(3 - (at - start).min(3) as u32);
    }
    let offset_secs = match &b[at..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

/// `YYYY-MM-DDTHH:MM:SS` of a millisecond timestamp, written in place.
struct DateTime(u64);

impl std::fmt::Display for DateTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (year, month, day) = civil_from_days(day_key(self.0) as i64);
        let secs = (self.0 % DAY_MS) / 1000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// Howard Hinnant's `civil_from_days`: (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        // 2026-11-25T20:00:00Z
        let t = 1_795_636_800_000;
        assert_eq!(civil_from_days(day_key(t) as i64), (2026, 11, 25));
        assert_eq!(next_day_ms(t), 1_795_651_200_000); // 2026-11-26T00:00Z
        assert_eq!(next_month_ms(t), 1_796_083_200_000); // 2026-12-01T00:00Z
                                                         // December rolls into the next year.
        let dec = 1_798_000_000_000; // 2026-12-23
        assert_eq!(next_month_ms(dec), 1_798_761_600_000); // 2027-01-01T00:00Z
        assert_ne!(month_key(t), month_key(dec));
        assert_eq!(month_key(dec) + 1, month_key(next_month_ms(dec)));
        // Leap day.
        let feb29 = days_from_civil(2028, 2, 29);
        assert_eq!(civil_from_days(feb29), (2028, 2, 29));
        assert_eq!(civil_from_days(feb29 + 1), (2028, 3, 1));
    }

    #[test]
    fn formats_rfc3339_with_millis() {
        assert_eq!(
            rfc3339_millis(1_795_608_000_042),
            "2026-11-25T12:00:00.042Z"
        );
        assert_eq!(
            parse_rfc3339("2026-11-25T12:00:00.042Z"),
            Some(1_795_608_000_042)
        );
        assert_eq!(
            parse_rfc3339("2026-11-25T13:30:00+01:30"),
            Some(1_795_608_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-25t12:00:00z"),
            Some(1_795_608_000_000)
        );
        assert_eq!(
            parse_rfc3339("2028-02-29T00:00:00Z")
                .map(rfc3339)
                .as_deref(),
            Some("2028-02-29T00:00:00Z")
        );
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-25T12:00:00",
            "2026-11-25T24:00:00Z",
            "2026-11-25T12:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2026-11-25T12:00:00+1:00",
            "tomorrow",
            "2026-11-25T12:00:00Zjunk",
            "２０２６-11-25T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(1_795_636_800_000 + 61_500), "2026-11-25T20:01:01Z");
    }

    #[test]
    fn round_trips_every_day_for_centuries() {
        for days in (-100_000..100_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
