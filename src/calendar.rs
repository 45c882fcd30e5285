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
