//! Durations as users and admins write them (`90s`, `30m`, `1h30m`, `0`),
//! parsed the same way everywhere: the shim (`--linger`, `--warn-before`),
//! the plugin (`linger=`, `linger_max=`, `kill_grace=`) and the janitor
//! (`--min-age`, `--grace`), so one site has one rule.

use std::fmt;
use std::time::Duration;

/// The units, largest first, in seconds.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3600), ('m', 60), ('s', 1)];

/// Parses `0` or one or more `<number><unit>` parts, unit `s`, `m`, `h` or
/// `d` (either case), largest first, each once: `90s`, `1h30m`, `2d`. A bare
/// number other than 0 is refused: Slurm reads `--time=10` as minutes and
/// `sleep 10` as seconds, so either guess would surprise someone. At most a
/// year.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let hint = "write e.g. 90s, 30m, 1h30m or 0";
    if text.is_empty() {
        return Err(format!("an empty duration; {hint}"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    // The index in UNITS of the last unit: the next one must be smaller.
    let mut last: Option<usize> = None;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let Some(index) = UNITS.iter().position(|(u, _)| *u == c.to_ascii_lowercase()) else {
            return Err(format!("'{text}' is not a duration ('{c}' is not a unit); {hint}"));
        };
        if last.is_some_and(|l| index <= l) {
            return Err(format!(
                "'{text}' is not a duration (units go from largest to smallest, each once); {hint}"
            ));
        }
        if digits.is_empty() {
            return Err(format!("'{text}' is not a duration (a unit without a number); {hint}"));
        }
        let number: u64 = digits.parse().map_err(|_| format!("'{text}' is longer than a year; {hint}"))?;
        digits.clear();
        last = Some(index);
        total = number
            .checked_mul(UNITS[index].1)
            .and_then(|part| total.checked_add(part))
            .filter(|&t| t <= 366 * 86_400)
            .ok_or_else(|| format!("'{text}' is longer than a year; {hint}"))?;
    }
    if !digits.is_empty() {
        return Err(format!("'{text}' has no unit after {digits}; {hint}"));
    }
    Ok(Duration::from_secs(total))
}

/// The shortest text `parse` reads back as the same whole seconds.
pub struct Display(pub Duration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0");
        }
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        for (text, secs) in [
            ("0", 0),
            ("90s", 90),
            ("30m", 1800),
            ("1h30m", 5400),
            ("2d", 172_800),
            (" 5m ", 300),
            ("1m30s", 90),
            ("2H", 7200),
            ("1d12h", 129_600),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
    }

    #[test]
    fn refused_forms_say_why() {
        for (text, why) in [
            ("10", "no unit"),
            ("", "empty"),
            ("5x", "'x' is not a unit"),
            ("m", "a unit without a number"),
            ("-5m", "'-' is not a unit"),
            ("99999999999999d", "longer than a year"),
            ("400d", "longer than a year"),
            ("30m1h", "largest to smallest"),
            ("1h1h", "largest to smallest"),
            ("1.5h", "'.' is not a unit"),
            ("1 h", "' ' is not a unit"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
            assert!(error.contains("e.g. 90s"), "{error}");
        }
    }

    #[test]
    fn display_reads_back() {
        for secs in [0, 1, 59, 60, 61, 3600, 5400, 86_400, 90_061] {
            let text = Display(Duration::from_secs(secs)).to_string();
            assert_eq!(parse(&text), Ok(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(Display(Duration::from_secs(5400)).to_string(), "1h30m");
    }
}
