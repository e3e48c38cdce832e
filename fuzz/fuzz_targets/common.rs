//! What the fuzz targets share: how one input becomes a stream and the reads
//! it arrives in, and how a parser's output is gathered over them.

// Each target uses its part of this.
#![allow(dead_code, unused_macros, unused_imports)]

use std::fmt::Debug;

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

/// The stream in `data` and `run`'s output for it, once `run` has been
/// seen to give that same output however the stream arrives: whole, in
/// the reads the first byte of `data` draws, or byte by byte. `None` for
/// empty data.
pub fn whatever_the_reads<T: PartialEq + Debug>(
    data: &[u8],
    run: impl Fn(&[&[u8]]) -> T,
) -> Option<(&[u8], T)> {
    let (choice, stream) = split(data)?;
    let whole = run(&[stream]);
    assert_eq!(run(&reads(choice, stream)), whole, "other reads, other result");
    assert_eq!(run(&bytewise(stream)), whole, "byte-wise reads, other result");
    Some((stream, whole))
}

/// A piece of a parser's output: plain data, or something it found.
pub trait Piece: Sized {
    fn data(bytes: Vec<u8>) -> Self;
    fn as_data(&mut self) -> Option<&mut Vec<u8>>;
}

/// A parser that splits a stream into pieces, feeding on reads and
/// holding back what may still become a find.
pub trait Parser {
    type Piece: Piece;
    fn feed(&mut self, read: &[u8]) -> Vec<Self::Piece>;
    fn held_len(&self) -> usize;
    fn finish(&mut self) -> Vec<u8>;
}

/// The parsers under test name their methods alike: this implements
/// [`Parser`] for `$parser` with them, and [`Piece`] for the `Piece` in
/// scope, whose plain data is `Piece::Data`.
macro_rules! parser_of_pieces {
    ($parser:ty) => {
        impl common::Piece for Piece {
            fn data(bytes: Vec<u8>) -> Self {
                Piece::Data(bytes)
            }
            fn as_data(&mut self) -> Option<&mut Vec<u8>> {
                match self {
                    Piece::Data(data) => Some(data),
                    _ => None,
                }
            }
        }

        impl common::Parser for $parser {
            type Piece = Piece;
            fn feed(&mut self, read: &[u8]) -> Vec<Piece> {
                <$parser>::feed(self, read)
            }
            fn held_len(&self) -> usize {
                <$parser>::held_len(self)
            }
            fn finish(&mut self) -> Vec<u8> {
                <$parser>::finish(self)
            }
        }
    };
}
pub(crate) use parser_of_pieces;

/// Adds `piece` to `out`, joining data to the data before it and dropping
/// empty data, so that where the reads cut the stream does not show.
pub fn push<P: Piece>(out: &mut Vec<P>, mut piece: P) {
    if let Some(data) = piece.as_data() {
        if data.is_empty() {
            return;
        }
        if let Some(last) = out.last_mut().and_then(P::as_data) {
            last.append(data);
            return;
        }
    }
    out.push(piece);
}

/// What `parser` makes of `reads`, gathered with [`push`]; after every
/// read it must hold back less than `bound` bytes, and nothing once the
/// stream has ended.
pub fn pieces<S: Parser>(mut parser: S, reads: &[&[u8]], bound: usize) -> Vec<S::Piece> {
    let mut out = Vec::new();
    for read in reads {
        for piece in parser.feed(read) {
            push(&mut out, piece);
        }
        assert!(parser.held_len() < bound, "held {} bytes", parser.held_len());
    }
    push(&mut out, S::Piece::data(parser.finish()));
    assert_eq!(parser.held_len(), 0);
    out
}
