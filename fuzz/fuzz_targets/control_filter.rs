//! `protocol::ControlFilter`, the shim's control-line parser: the result is
//! the same whatever the reads, matches a line-by-line reading of the rules,
//! holds back less than `MAX_CONTROL_LINE` bytes, and every byte that is not
//! part of a control line of ours passes unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vscode_slurm_protocol::{decode, encode, ControlFilter, Nonce, Piece, MAX_CONTROL_LINE};

mod common;

/// The seed corpus's control lines carry this nonce.
const NONCE: &str = "0123456789abcdef0123456789abcdef";

fn push(out: &mut Vec<Piece>, piece: Piece) {
    match (out.last_mut(), piece) {
        (_, Piece::Data(data)) if data.is_empty() => {}
        (Some(Piece::Data(last)), Piece::Data(data)) => last.extend(data),
        (_, piece) => out.push(piece),
    }
}

fn run(nonce: &Nonce, reads: &[&[u8]]) -> Vec<Piece> {
    let mut filter = ControlFilter::new(nonce.clone());
    let mut out = Vec::new();
    for read in reads {
        for piece in filter.feed(read) {
            push(&mut out, piece);
        }
        assert!(filter.held_len() < MAX_CONTROL_LINE, "held {} bytes", filter.held_len());
    }
    push(&mut out, Piece::Data(filter.finish()));
    assert_eq!(filter.held_len(), 0);
    out
}

/// The rules over the whole stream, line by line: a complete line of at most
/// `MAX_CONTROL_LINE` bytes, newline included, that decodes with our nonce
/// is a control message, everything else is data. Also returns the bytes the
/// control lines took.
fn reference(nonce: &Nonce, stream: &[u8]) -> (Vec<Piece>, usize) {
    let mut out = Vec::new();
    let mut consumed = 0;
    for line in stream.split_inclusive(|&b| b == b'\n') {
        let message = match line.split_last() {
            Some((b'\n', body)) if line.len() <= MAX_CONTROL_LINE => decode(nonce, body),
            _ => None,
        };
        match message {
            Some(message) => {
                consumed += line.len();
                push(&mut out, Piece::Control(message));
            }
            None => push(&mut out, Piece::Data(line.to_vec())),
        }
    }
    (out, consumed)
}

fuzz_target!(|data: &[u8]| {
    let Some((choice, stream)) = common::split(data) else { return };
    let nonce = Nonce::parse(NONCE).unwrap();
    let whole = run(&nonce, &[stream]);
    assert_eq!(run(&nonce, &common::reads(choice, stream)), whole, "other reads, other result");
    assert_eq!(run(&nonce, &common::bytewise(stream)), whole, "byte-wise reads, other result");
    let (expected, consumed) = reference(&nonce, stream);
    assert_eq!(whole, expected, "not what the rules say");
    let mut data_len = 0;
    for piece in &whole {
        match piece {
            Piece::Data(data) => data_len += data.len(),
            Piece::Control(message) => {
                let line = encode(&nonce, message);
                assert_eq!(decode(&nonce, &line[..line.len() - 1]).as_ref(), Some(message));
            }
        }
    }
    assert_eq!(data_len + consumed, stream.len(), "bytes lost or added");
});
