//! What the fuzz targets share: how one input becomes a stream and the reads
//! it arrives in.

/// Splits an input into its first byte, which chooses how the stream is read
/// (and, for some targets, a setting), and the stream itself.
pub fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(&choice, stream)| (choice, stream))
}

/// The stream as reads of pseudo-random sizes from 1 to `2^(choice % 8)`
/// bytes, with an empty read now and then, all drawn from `choice`.
pub fn reads(choice: u8, stream: &[u8]) -> Vec<&[u8]> {
    let max = 1usize << (choice % 8);
    let mut state = (u32::from(choice) << 16) | 0x9e37;
    let mut next = move || {
        // xorshift32: cheap, and the same reads for the same input.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as usize
    };
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let r = next();
        if r % 16 == 0 {
            chunks.push(&rest[..0]);
        }
        let (chunk, tail) = rest.split_at((1 + r % max).min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// The stream one byte per read.
pub fn bytewise(stream: &[u8]) -> Vec<&[u8]> {
    stream.chunks(1).collect()
}
