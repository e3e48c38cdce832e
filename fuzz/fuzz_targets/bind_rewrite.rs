//! `job-helper`'s `BindRewriter`, the rewriter that moves the launch
//! script's servers to private sockets: the output is the same whatever the
//! reads, matches a plain scan over the whole input, and the rewriter holds
//! back at most one pattern's length; bytes that are not a whole pattern
//! pass unchanged.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vscode_job_helper::bind_rewrite::{BindRewriter, SocketNames};

mod common;

const LONGEST: usize = "--bind-addr=localhost".len();
const DIR: &str = "/run/vscode-slurm/42";

/// The rules, written out again independently of the rewriter: the flag, a
/// byte after it that ends it (or the end of input), and what it becomes.
fn reference(input: &[u8]) -> Vec<u8> {
    let ends = |b: u8| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let mut out = Vec::new();
    let mut made = 0;
    let mut i = 0;
    'scan: while i < input.len() {
        let mut rules: Vec<(String, Box<dyn Fn(u8) -> bool>, u8)> =
            vec![("--on-port".into(), Box::new(move |b| ends(b) && b != b'=' && b != b':'), 0)];
        for sep in ['=', ' '] {
            rules.push((format!("--port{sep}0"), Box::new(ends), 1));
            for host in ["127.0.0.1", "localhost"] {
                rules.push((format!("--bind-addr{sep}{host}"), Box::new(ends), 2));
            }
        }
        for (text, ends_at, kind) in &rules {
            let end = i + text.len();
            if input[i..].starts_with(text.as_bytes()) && input.get(end).is_none_or(|&b| ends_at(b)) {
                let replacement = match kind {
                    0 => "--on-socket".to_owned(),
                    1 => {
                        made += 1;
                        format!("--socket-path={DIR}/server-1-{made}.sock")
                    }
                    _ => {
                        made += 1;
                        format!("--socket {DIR}/server-1-{made}.sock {text}")
                    }
                };
                out.extend_from_slice(replacement.as_bytes());
                i = end;
                continue 'scan;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn run(reads: &[&[u8]]) -> Vec<u8> {
    let mut rewriter = BindRewriter::new(SocketNames::new(Path::new(DIR), 1));
    let mut out = Vec::new();
    for read in reads {
        out.extend(rewriter.feed(read));
        assert!(rewriter.held_len() <= LONGEST, "held {} bytes", rewriter.held_len());
    }
    out.extend(rewriter.finish());
    assert_eq!(rewriter.held_len(), 0);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((choice, input)) = common::split(data) else { return };
    let whole = run(&[input]);
    assert_eq!(run(&common::reads(choice, input)), whole, "other reads, other result");
    assert_eq!(run(&common::bytewise(input)), whole, "byte-wise reads, other result");
    assert_eq!(whole, reference(input), "not what the rules say");
});
