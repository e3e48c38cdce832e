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

/// A flag the rewriter replaces: which byte after it ends it (the end of
/// input does too), and what it becomes, given how many sockets have been
/// named so far.
struct Rule {
    flag: String,
    ends_at: Box<dyn Fn(u8) -> bool>,
    becomes: Box<dyn Fn(&mut usize) -> String>,
}

/// The rules, written out again independently of the rewriter.
fn rules() -> Vec<Rule> {
    let ends = |b: u8| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let socket = |made: &mut usize| {
        *made += 1;
        format!("{DIR}/server-1-{made}.sock")
    };
    let mut rules = vec![Rule {
        flag: "--on-port".into(),
        ends_at: Box::new(move |b| ends(b) && b != b'=' && b != b':'),
        becomes: Box::new(|_| "--on-socket".into()),
    }];
    for sep in ['=', ' '] {
        rules.push(Rule {
            flag: format!("--port{sep}0"),
            ends_at: Box::new(ends),
            becomes: Box::new(move |made| format!("--socket-path={}", socket(made))),
        });
        for host in ["127.0.0.1", "localhost"] {
            let flag = format!("--bind-addr{sep}{host}");
            let kept = flag.clone();
            rules.push(Rule {
                flag,
                ends_at: Box::new(ends),
                becomes: Box::new(move |made| format!("--socket {} {kept}", socket(made))),
            });
        }
    }
    rules
}

/// A plain scan over the whole input by [`rules`]: the first rule whose
/// flag starts here and ends right after it replaces it.
fn reference(input: &[u8]) -> Vec<u8> {
    let rules = rules();
    let mut out = Vec::new();
    let mut made = 0;
    let mut rest = input;
    while let Some(&byte) = rest.first() {
        let found = rules.iter().find(|rule| {
            rest.starts_with(rule.flag.as_bytes())
                && rest.get(rule.flag.len()).is_none_or(|&b| (rule.ends_at)(b))
        });
        match found {
            Some(rule) => {
                out.extend_from_slice((rule.becomes)(&mut made).as_bytes());
                rest = &rest[rule.flag.len()..];
            }
            None => {
                out.push(byte);
                rest = &rest[1..];
            }
        }
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
    let Some((input, whole)) = common::whatever_the_reads(data, run) else { return };
    assert_eq!(whole, reference(input), "not what the rules say");
});
