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

common::parser_of_pieces!(ControlFilter);

fn run(nonce: &Nonce, reads: &[&[u8]]) -> Vec<Piece> {
    common::pieces(ControlFilter::new(nonce.clone()), reads, MAX_CONTROL_LINE)
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
                common::push(&mut out, Piece::Control(message));
            }
            None => common::push(&mut out, Piece::Data(line.to_vec())),
        }
    }
    (out, consumed)
}

fuzz_target!(|data: &[u8]| {
    let nonce = Nonce::parse(NONCE).unwrap();
    let Some((stream, whole)) = common::whatever_the_reads(data, |reads| run(&nonce, reads)) else { return };
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
