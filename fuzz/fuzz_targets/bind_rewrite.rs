//! `job-helper`'s `BindRewriter`, the rewriter of the launch script's
//! loopback binds: the output is the same whatever the reads, matches a
//! plain scan over the whole input, and the rewriter holds back at most one
//! pattern's length; bytes that are not a whole pattern pass unchanged.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use vscode_job_helper::bind_rewrite::BindRewriter;

mod common;

/// Chosen by the input's first byte; `0.0.0.0` takes the warning path.
const PUBLISHED: [&str; 4] = ["10.77.1.11", "fd00::5", "0.0.0.0", "127.0.0.1"];

/// The rules, written out again independently of the rewriter: flag,
/// separator, loopback spelling, and a byte that is not part of a host name
/// (or the end) after it.
const FLAGS: [(&str, bool); 3] = [("--host", false), ("--on-host", false), ("--bind-addr", true)];
const LONGEST: usize = "--bind-addr=localhost".len();

fn patterns(published: IpAddr) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut patterns = Vec::new();
    for (flag, host_port) in FLAGS {
        for separator in ["=", " "] {
            for loopback in ["127.0.0.1", "localhost"] {
                let address = match published {
                    IpAddr::V6(v6) if host_port => format!("[{v6}]"),
                    _ => published.to_string(),
                };
                patterns.push((
                    format!("{flag}{separator}{loopback}").into_bytes(),
                    format!("{flag}{separator}{address}").into_bytes(),
                ));
            }
        }
    }
    patterns
}

fn is_boundary(byte: u8) -> bool {
    !(byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-')
}

fn reference(published: IpAddr, input: &[u8]) -> (Vec<u8>, usize) {
    let patterns = patterns(published);
    let mut out = Vec::new();
    let mut rewrites = 0;
    let mut i = 0;
    'scan: while i < input.len() {
        for (text, replacement) in &patterns {
            let end = i + text.len();
            if input[i..].starts_with(text) && input.get(end).is_none_or(|&b| is_boundary(b)) {
                out.extend_from_slice(replacement);
                rewrites += 1;
                i = end;
                continue 'scan;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    (out, rewrites)
}

fn run(published: IpAddr, reads: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut rewriter = BindRewriter::new(published);
    let mut out = Vec::new();
    for read in reads {
        out.extend(rewriter.feed(read));
        assert!(rewriter.held_len() <= LONGEST, "held {} bytes", rewriter.held_len());
    }
    out.extend(rewriter.finish());
    assert_eq!(rewriter.held_len(), 0);
    (out, rewriter.rewrites())
}

fuzz_target!(|data: &[u8]| {
    let Some((choice, input)) = common::split(data) else { return };
    let published: IpAddr = PUBLISHED[usize::from(choice >> 6)].parse().unwrap();
    let whole = run(published, &[input]);
    assert_eq!(run(published, &common::reads(choice, input)), whole, "other reads, other result");
    assert_eq!(run(published, &common::bytewise(input)), whole, "byte-wise reads, other result");
    let expected = reference(published, input);
    assert_eq!(whole, expected, "not what the rules say");
    if expected.1 == 0 {
        assert_eq!(whole.0, input, "changed without a rule");
    }
});
