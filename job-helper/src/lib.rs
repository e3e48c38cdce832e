//! The sans-IO stream rewriters of `vscode-job-helper`, as a library so that
//! fuzz targets and tests outside the binary can drive them. The binary
//! (`src/main.rs`) does the IO around them.

pub mod bind_rewrite;
pub mod listening;

/// What the stream parsers' property tests feed them.
#[cfg(test)]
mod test_streams {
    use proptest::prelude::*;

    /// Streams of the `|`-separated words (the pieces a parser cares about)
    /// and random bytes, in any order: parsers must neither miss a word
    /// split across reads nor take noise for one.
    pub fn made_of(words: &'static str) -> impl Strategy<Value = Vec<u8>> {
        let words: Vec<&'static [u8]> = words.split('|').map(str::as_bytes).collect();
        let piece = prop_oneof![
            proptest::sample::select(words).prop_map(<[u8]>::to_vec),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|parts| parts.concat())
    }
}
