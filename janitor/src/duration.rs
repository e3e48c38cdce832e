//! Durations as admins read them in a table (`2h03m`): compact, two units
//! at most. They write them in the project's one grammar (`2h30m`).

use std::time::Duration;

/// `--min-age` and `--grace` are read with the one duration grammar of the
/// project (`vscode_slurm_protocol::duration`), so a site has one rule.
pub use vscode_slurm_protocol::duration::parse;

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
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("0"), 0);
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("10m"), 600);
        assert_eq!(secs("1h"), 3_600);
        assert_eq!(secs("2h30m"), 9_000);
        assert_eq!(secs("1h0m5s"), 3_605);
        // A bare number is refused, as for --linger: minutes or seconds?
        assert!(parse("90").unwrap_err().contains("no unit"));
        assert_eq!(secs("1d12h"), 129_600);
        assert_eq!(secs(" 2H "), 7_200);
    }

    #[test]
    fn rejects_what_is_ambiguous_or_malformed() {
        for bad in ["", "h", "1x", "1h1", "30m1h", "1h1h", "1.5h", "-1", "1 h", "99999999999999999999"] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse("1h1").unwrap_err().contains("no unit"));
        assert!(parse("99999999999999999999d").unwrap_err().contains("longer than a year"));
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
