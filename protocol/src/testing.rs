//! For the stream parsers' tests (here and in the helper): every way of
//! cutting a stream must give the same result, as reads may end anywhere.

/// `stream` cut at each of `cuts` (positions up to its length, any order).
pub fn chunks(stream: &[u8], cuts: impl IntoIterator<Item = usize>) -> Vec<&[u8]> {
    let mut points: Vec<usize> = cuts.into_iter().map(|cut| cut.min(stream.len())).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(&stream[start..point]);
        start = point;
    }
    chunks.push(&stream[start..]);
    chunks
}

/// A 64 MiB line without a newline: `start`, then `unit` again and again.
/// The parsers must pass it on as it comes, holding back only a bounded
/// prefix, whatever a hostile or broken script prints.
pub fn endless_line(start: &[u8], unit: &[u8]) -> Vec<u8> {
    const SIZE: usize = 64 << 20;
    let mut line = start.to_vec();
    while line.len() < SIZE && !unit.is_empty() {
        line.extend_from_slice(unit);
    }
    line.truncate(SIZE);
    line
}

/// Deterministic but irregular bytes (xorshift), so a relay test sees
/// misordered, lost or duplicated chunks as different bytes.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuts_in_any_order_give_ordered_chunks() {
        assert_eq!(super::chunks(b"abcd", [3, 1, 9]), [&b"a"[..], b"bc", b"d", b""]);
        assert_eq!(super::chunks(b"", []), [&b""[..]]);
    }
}
