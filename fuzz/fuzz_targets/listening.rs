//! `job-helper`'s `ListeningScanner`, the finder of `listeningOn==X==` lines
//! in the launch script's output: the result is the same whatever the
//! reads, its pieces spell the input again, every endpoint found is a
//! well-formed marker at a line start, the scanner holds back less than a
//! marker line's bound, and a stream without a marker line passes unchanged.

#![no_main]
use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use vscode_job_helper::listening::{ListeningScanner, Piece, Target, MAX_VALUE};

mod common;

const MARKER: &[u8] = b"listeningOn==";
const TERMINATOR: &[u8] = b"==";
const BOUND: usize = MARKER.len() + MAX_VALUE + TERMINATOR.len();

common::parser_of_pieces!(ListeningScanner);

fn run(reads: &[&[u8]]) -> Vec<Piece> {
    common::pieces(ListeningScanner::new(), reads, BOUND)
}

fuzz_target!(|data: &[u8]| {
    let Some((stream, whole)) = common::whatever_the_reads(data, run) else { return };

    let mut at = 0;
    for piece in &whole {
        let Piece::Listening(listening) = piece else {
            let Piece::Data(data) = piece else { unreachable!() };
            assert_eq!(data[..], stream[at..at + data.len()], "data changed");
            at += data.len();
            continue;
        };
        let original = &listening.original[..];
        assert_eq!(original, &stream[at..at + original.len()], "endpoint line changed");
        assert!(at == 0 || stream[at - 1] == b'\n', "endpoint not at a line start");
        at += original.len();
        let value = original
            .strip_prefix(MARKER)
            .and_then(|rest| rest.strip_suffix(TERMINATOR))
            .expect("endpoint without marker and terminator");
        assert!(!value.is_empty() && value.len() <= MAX_VALUE, "value of {} bytes", value.len());
        assert!(!value.contains(&b'\n'), "value across lines");
        assert!(!value.windows(2).any(|w| w == TERMINATOR), "not the first terminator");
        match &listening.target {
            Target::Port(port) | Target::HostPort(_, port) => assert_ne!(*port, 0),
            Target::Socket(path) => assert_eq!(path.as_os_str().as_bytes(), value),
        }
        let rewritten = listening.rewritten(4444, matches!(listening.target, Target::HostPort(..)));
        assert!(rewritten.starts_with(MARKER) && rewritten.ends_with(TERMINATOR));
    }
    assert_eq!(at, stream.len(), "bytes lost or added");

    let marker_line = stream.split(|&b| b == b'\n').any(|line| line.starts_with(MARKER));
    if !marker_line {
        let expected = if stream.is_empty() { vec![] } else { vec![Piece::Data(stream.to_vec())] };
        assert_eq!(whole, expected, "changed without a marker line");
    }
});
