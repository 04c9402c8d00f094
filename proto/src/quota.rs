//! Quota windows (UTC calendar days and months), the same for both planes:
//! data planes count in them, the control plane adds the counts up.

pub const DAY_SECS: u64 = 86_400;

/// Seconds since the Unix epoch, the clock quota windows are read from.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Calendar windows, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Daily,
    Monthly,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Daily => "daily",
            Window::Monthly => "monthly",
        }
    }

    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "daily" => Some(Window::Daily),
            "monthly" => Some(Window::Monthly),
            _ => None,
        }
    }

    /// The window `secs` (since the epoch) falls in: days since 1970-01-01
    /// or months since 1970-01.
    pub fn id(self, secs: u64) -> u64 {
        let day = secs / DAY_SECS;
        match self {
            Window::Daily => day,
            Window::Monthly => {
                let (y, m, _) = civil_from_days(day);
                (y - 1970) * 12 + (m - 1)
            }
        }
    }

    /// When window `id` ends, seconds since the epoch.
    pub fn end(self, id: u64) -> u64 {
        match self {
            Window::Daily => (id + 1) * DAY_SECS,
            Window::Monthly => {
                let next = id + 1;
                days_from_civil(1970 + next / 12, next % 12 + 1, 1) * DAY_SECS
            }
        }
    }
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01, in the
/// proleptic Gregorian calendar (eras of 400 years, years from March).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
pub fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_windows() {
        // 2026-11-28T12:00:00Z
        let t = 1_795_867_200;
        let day = Window::Daily.id(t);
        assert_eq!(civil_from_days(day), (2026, 11, 28));
        assert_eq!(days_from_civil(2026, 11, 28), day);
        assert_eq!(Window::Daily.end(day) - t, 12 * 3600);
        let month = Window::Monthly.id(t);
        assert_eq!(month, 56 * 12 + 10);
        // December 1st.
        assert_eq!(
            Window::Monthly.end(month),
            days_from_civil(2026, 12, 1) * DAY_SECS
        );
        assert_eq!(
            Window::Monthly.end(Window::Monthly.id(days_from_civil(2028, 2, 10) * DAY_SECS)),
            days_from_civil(2028, 3, 1) * DAY_SECS
        );
        for d in [0, 59, 60, 365, 10_957, 20_000, 50_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
