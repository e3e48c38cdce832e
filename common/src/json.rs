//! The JSON the programs print (the janitor's report, setup's settings, the
//! benchmarks' results) is small and flat; one string escaper serves it all
//! without a serializer dependency in root code.

use std::fmt::Write;

/// `text` as a JSON string literal, quotes included. Control characters
/// and the two line separators JavaScript chokes on are escaped, so the
/// result is also one line.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_escaped_onto_one_line() {
        assert_eq!(super::string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(super::string("x\ny\tz\u{1}\u{2028}"), r#""x\ny\tz\u0001\u2028""#);
        assert_eq!(super::string("ü"), "\"ü\"");
    }
}
