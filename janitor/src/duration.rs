//! Durations as admins write them in a crontab (`2h30m`) and as they read
//! them in a table (`2h03m`): compact, no spaces, no fractions.

use std::time::Duration;

/// Accepts `90`, `30s`, `10m`, `1h`, `2h30m`, `1d12h`: plain seconds or a
/// sequence of number+unit pairs, each unit at most once, largest first.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("'{text}' is too large"));
    }
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];
    let mut total: u64 = 0;
    // Index into UNITS of the last unit seen: the next one must be smaller.
    let mut last: Option<usize> = None;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let Some(index) = UNITS.iter().position(|(u, _)| *u == c.to_ascii_lowercase()) else {
            return Err(format!("'{text}' is not a duration (use e.g. 90, 30s, 10m, 1h, 2h30m)"));
        };
        if digits.is_empty() {
            return Err(format!("'{text}': '{c}' needs a number before it"));
        }
        if last.is_some_and(|l| index <= l) {
            return Err(format!("'{text}': units must go from largest to smallest, each once"));
        }
        let n: u64 = digits.parse().map_err(|_| format!("'{text}' is too large"))?;
        total = n
            .checked_mul(UNITS[index].1)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("'{text}' is too large"))?;
        digits.clear();
        last = Some(index);
    }
    if !digits.is_empty() {
        return Err(format!("'{text}': '{digits}' needs a unit (s, m, h or d) after it"));
    }
    Ok(Duration::from_secs(total))
}

/// Two units at most: an admin deciding what to end needs "3d04h", not the seconds.
pub fn format(duration: Duration) -> String {
    let s = duration.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// Binary units, one decimal below 10 so small servers do not all read "0G".
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> u64 {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).as_secs()
    }

    #[test]
    fn accepts_the_forms_admins_write() {
        assert_eq!(secs("90"), 90);
        assert_eq!(secs("0"), 0);
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("10m"), 600);
        assert_eq!(secs("1h"), 3_600);
        assert_eq!(secs("2h30m"), 9_000);
        assert_eq!(secs("1h0m5s"), 3_605);
        assert_eq!(secs("1d12h"), 129_600);
        assert_eq!(secs(" 2H "), 7_200);
    }

    #[test]
    fn rejects_what_is_ambiguous_or_malformed() {
        for bad in ["", "h", "1x", "1h1", "30m1h", "1h1h", "1.5h", "-1", "1 h", "99999999999999999999"] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse("1h1").unwrap_err().contains("needs a unit"));
        assert!(parse("99999999999999999999d").unwrap_err().contains("too large"));
    }

    #[test]
    fn formats_with_two_units_at_most() {
        assert_eq!(format(Duration::from_secs(0)), "0s");
        assert_eq!(format(Duration::from_secs(59)), "59s");
        assert_eq!(format(Duration::from_secs(65)), "1m05s");
        assert_eq!(format(Duration::from_secs(7_380)), "2h03m");
        assert_eq!(format(Duration::from_secs(273_600)), "3d04h");
    }

    #[test]
    fn round_trips_what_it_prints() {
        for s in [0, 59, 65, 3_600, 7_380, 273_600] {
            let printed = format(Duration::from_secs(s));
            assert!(parse(&printed).is_ok(), "{printed} does not parse");
        }
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_bytes(512), "512B");
        assert_eq!(format_bytes(2048), "2.0K");
        assert_eq!(format_bytes(312 * 1024 * 1024), "312M");
        assert_eq!(format_bytes(1288490188), "1.2G");
    }
}
