//! Rewrites loopback binds in VS Code's launch script to the published
//! address, so the server can be reached from the login node.
//!
//! The launch line is spelled many ways (quoted variables, written-out paths,
//! flags inside `LISTEN_ARGS="..."`), so matching is by flag, never by the
//! command's name. A loopback bind that slips through is silent: the server
//! then listens on the node's loopback and the relay gets "connection refused".

use std::net::IpAddr;

/// Flags that take a host, with how the replacement must be spelled.
const FLAGS: [(&str, Form); 3] =
    [("--host", Form::Host), ("--on-host", Form::Host), ("--bind-addr", Form::HostPort)];

/// Flag and value are joined by `=` or one space.
const SEPARATORS: [u8; 2] = [b'=', b' '];

const LOOPBACK_SPELLINGS: [&str; 2] = ["127.0.0.1", "localhost"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `--host` / `--on-host` take a bare address.
    Host,
    /// code-server's `--bind-addr` parses `HOST[:PORT]` like a URL authority,
    /// so an IPv6 address needs brackets.
    HostPort,
}

struct Pattern {
    /// Flag, separator and loopback address, e.g. `--host=127.0.0.1`.
    text: Vec<u8>,
    /// The bytes that replace `text`: same flag and separator, published address.
    replacement: Vec<u8>,
}

/// Streaming, sans-IO rewriter for the bytes VS Code sends to the shell.
///
/// VS Code waits for output after writing its script, so nothing may linger
/// here: only a suffix that could still become a pattern is held back (at
/// most one pattern's length), and the output does not depend on how the
/// input is split into reads.
pub struct BindRewriter {
    patterns: Vec<Pattern>,
    /// Always a prefix of some pattern, possibly a whole one.
    held: Vec<u8>,
    /// Set while `held` is a whole pattern whose following byte decides
    /// whether it was an address or only the start of a longer name.
    complete: Option<usize>,
    published_everywhere: bool,
    rewrites: usize,
}

impl BindRewriter {
    pub fn new(published: IpAddr) -> BindRewriter {
        let host = published.to_string();
        let host_port = match published {
            IpAddr::V4(_) => host.clone(),
            IpAddr::V6(_) => format!("[{host}]"),
        };
        let mut patterns = Vec::new();
        for (flag, form) in FLAGS {
            for separator in SEPARATORS {
                for loopback in LOOPBACK_SPELLINGS {
                    let mut text = flag.as_bytes().to_vec();
                    text.push(separator);
                    let mut replacement = text.clone();
                    text.extend_from_slice(loopback.as_bytes());
                    replacement.extend_from_slice(match form {
                        Form::Host => host.as_bytes(),
                        Form::HostPort => host_port.as_bytes(),
                    });
                    patterns.push(Pattern { text, replacement });
                }
            }
        }
        BindRewriter {
            patterns,
            held: Vec::new(),
            complete: None,
            published_everywhere: published.is_unspecified(),
            rewrites: 0,
        }
    }

    /// How many binds were rewritten so far.
    pub fn rewrites(&self) -> usize {
        self.rewrites
    }

    pub fn feed(&mut self, mut input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 32);
        while !input.is_empty() {
            if self.held.is_empty() {
                // Every pattern starts with '-': everything before the next one
                // passes at once, which keeps long inputs cheap.
                let skip = input.iter().position(|&b| b == b'-').unwrap_or(input.len());
                out.extend_from_slice(&input[..skip]);
                input = &input[skip..];
                if input.is_empty() {
                    break;
                }
            }
            self.push(input[0], &mut out);
            input = &input[1..];
        }
        out
    }

    /// How many bytes are held back because they could still become a
    /// pattern: at most the longest pattern's length.
    #[cfg(any(test, fuzzing))]
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// End of input ends a pattern as well as any other boundary does.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.complete.take() {
            Some(index) => self.rewrite(index, &mut out),
            None => out.append(&mut self.held),
        }
        out
    }

    fn push(&mut self, byte: u8, out: &mut Vec<u8>) {
        if let Some(index) = self.complete.take() {
            if is_boundary(byte) {
                self.rewrite(index, out);
                // A boundary byte is never '-', so it cannot start a pattern.
                out.push(byte);
                return;
            }
        }
        self.held.push(byte);
        let mut partial = false;
        for (index, pattern) in self.patterns.iter().enumerate() {
            if pattern.text.starts_with(&self.held) {
                partial = true;
                if pattern.text.len() == self.held.len() {
                    self.complete = Some(index);
                }
            }
        }
        if !partial {
            // The first held byte is settled as data; the rest may still
            // start a pattern, so it goes through the matcher again.
            let held = std::mem::take(&mut self.held);
            out.push(held[0]);
            for &byte in &held[1..] {
                self.push(byte, out);
            }
        }
    }

    fn rewrite(&mut self, index: usize, out: &mut Vec<u8>) {
        let pattern = &self.patterns[index];
        let from = String::from_utf8_lossy(&pattern.text);
        let to = String::from_utf8_lossy(&pattern.replacement);
        if self.published_everywhere {
            tracing::warn!(
                "rewrote `{from}` to `{to}`: the server will listen on every interface of this node, \
                 reachable from other nodes too"
            );
        } else {
            tracing::info!("rewrote `{from}` to `{to}` in the launch script");
        }
        out.extend_from_slice(&pattern.replacement);
        self.held.clear();
        self.rewrites += 1;
    }
}

/// `127.0.0.10` or `localhost.example` are other hosts; `:` starts a port.
fn is_boundary(byte: u8) -> bool {
    !(byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4() -> IpAddr {
        "10.77.1.11".parse().unwrap()
    }

    fn rewrite_with(addr: IpAddr, input: &[u8]) -> Vec<u8> {
        let mut rewriter = BindRewriter::new(addr);
        let mut out = rewriter.feed(input);
        out.extend(rewriter.finish());
        out
    }

    fn rewrite(input: &str) -> String {
        String::from_utf8(rewrite_with(v4(), input.as_bytes())).unwrap()
    }

    fn chunked(addr: IpAddr, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut rewriter = BindRewriter::new(addr);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            out.extend(rewriter.feed(&input[start..cut]));
            start = cut;
        }
        out.extend(rewriter.feed(&input[start..]));
        out.extend(rewriter.finish());
        out
    }

    #[test]
    fn every_flag_and_separator_is_rewritten() {
        let cases = [
            ("--host=127.0.0.1 --port=0", "--host=10.77.1.11 --port=0"),
            ("--host 127.0.0.1 --port=0", "--host 10.77.1.11 --port=0"),
            ("--on-host=127.0.0.1 --on-port", "--on-host=10.77.1.11 --on-port"),
            ("--on-host 127.0.0.1 --on-port", "--on-host 10.77.1.11 --on-port"),
            ("--bind-addr=127.0.0.1:8080 --auth none", "--bind-addr=10.77.1.11:8080 --auth none"),
            ("--bind-addr 127.0.0.1:8080", "--bind-addr 10.77.1.11:8080"),
            ("--bind-addr=127.0.0.1", "--bind-addr=10.77.1.11"),
            ("--host=localhost\n", "--host=10.77.1.11\n"),
            ("--on-host localhost", "--on-host 10.77.1.11"),
            ("--bind-addr=localhost:0", "--bind-addr=10.77.1.11:0"),
        ];
        for (input, expected) in cases {
            assert_eq!(rewrite(input), expected, "{input}");
        }
    }

    #[test]
    fn real_launch_lines_are_rewritten() {
        let legacy = "\"$VSCH_SERVER_SCRIPT\" --start-server --host=127.0.0.1 --accept-server-license-terms \
                      --enable-remote-auto-shutdown --port=0 &> \"$SERVER_LOGFILE\" &\n";
        assert_eq!(rewrite(legacy), legacy.replace("127.0.0.1", "10.77.1.11"));
        let exec = "LISTEN_ARGS=\"--on-host=127.0.0.1 --on-port\"\n";
        assert_eq!(rewrite(exec), "LISTEN_ARGS=\"--on-host=10.77.1.11 --on-port\"\n");
        let quoted = "code-server --bind-addr '127.0.0.1:0'";
        assert_eq!(rewrite(quoted), quoted, "quoted values are not a supported spelling");
    }

    #[test]
    fn near_misses_are_untouched() {
        for input in [
            "--host=127.0.0.10",
            "--host=127.0.0.1.5",
            "--host=127.0.0.1-x",
            "--hostname=127.0.0.1",
            "--host==127.0.0.1",
            "--host  127.0.0.1",
            "--host=localhostx",
            "--host=localhost.example",
            "--bind-addr=127.0.0.12:80",
            "--port=127.0.0.1",
            "-host=127.0.0.1",
            "--host:127.0.0.1",
            "--host=128.0.0.1",
            "--on-hosts=127.0.0.1",
        ] {
            assert_eq!(rewrite(input), input, "{input}");
        }
    }

    #[test]
    fn boundaries_include_quotes_ports_and_end_of_input() {
        assert_eq!(rewrite("--host=127.0.0.1\"x"), "--host=10.77.1.11\"x");
        assert_eq!(rewrite("--host=127.0.0.1:9"), "--host=10.77.1.11:9");
        assert_eq!(rewrite("--host=127.0.0.1"), "--host=10.77.1.11");
        assert_eq!(rewrite("--host=127.0.0.1\0"), "--host=10.77.1.11\0");
        assert_eq!(rewrite("x--host=127.0.0.1;"), "x--host=10.77.1.11;");
    }

    #[test]
    fn overlapping_starts_are_found() {
        assert_eq!(rewrite("---host=127.0.0.1 "), "---host=10.77.1.11 ");
        assert_eq!(rewrite("--host=--host=127.0.0.1 "), "--host=--host=10.77.1.11 ");
        assert_eq!(rewrite("--on--on-host=localhost "), "--on--on-host=10.77.1.11 ");
        assert_eq!(
            rewrite("--host=127.0.0.1 --host=localhost --host 127.0.0.1\n"),
            "--host=10.77.1.11 --host=10.77.1.11 --host 10.77.1.11\n"
        );
    }

    #[test]
    fn ipv6_is_bracketed_only_in_host_port_form() {
        let v6: IpAddr = "fd00::5".parse().unwrap();
        let out = rewrite_with(
            v6,
            b"--host=127.0.0.1 --on-host 127.0.0.1 --bind-addr=127.0.0.1:80 --bind-addr=localhost",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "--host=fd00::5 --on-host fd00::5 --bind-addr=[fd00::5]:80 --bind-addr=[fd00::5]"
        );
    }

    #[test]
    fn rewrites_are_counted() {
        let mut rewriter = BindRewriter::new(v4());
        rewriter.feed(b"--host=127.0.0.1 --host=127.0.0.10 --on-host=localhost");
        assert_eq!(rewriter.rewrites(), 1);
        rewriter.finish();
        assert_eq!(rewriter.rewrites(), 2);
    }

    #[test]
    fn script_ending_in_newline_leaves_nothing_held() {
        let script =
            b"echo start\n\"$S\" --start-server --host=127.0.0.1 --port=0 &\necho --host=127.0.0.1\n";
        let mut rewriter = BindRewriter::new(v4());
        let out = rewriter.feed(script);
        assert!(rewriter.held.is_empty());
        assert!(rewriter.complete.is_none());
        assert!(out.ends_with(b"echo --host=10.77.1.11\n"));
        assert!(rewriter.finish().is_empty());
    }

    #[test]
    fn only_a_possible_pattern_start_is_held() {
        let mut rewriter = BindRewriter::new(v4());
        assert_eq!(rewriter.feed(b"abc --ho"), b"abc ");
        assert_eq!(rewriter.held, b"--ho");
        assert_eq!(rewriter.feed(b"x"), b"--hox");
        assert!(rewriter.held.is_empty());
        assert_eq!(rewriter.feed(b"--host=127.0.0.1"), b"");
        assert_eq!(rewriter.feed(b" "), b"--host=10.77.1.11 ");
    }

    #[test]
    fn huge_input_without_newline_keeps_the_buffer_small() {
        let mut rewriter = BindRewriter::new(v4());
        let mut unit = vec![b'x'; 4000];
        unit.extend_from_slice(b"--host=127.0.0.1 -- --ho ");
        let chunk: Vec<u8> = unit.iter().copied().cycle().take(1 << 20).collect();
        let mut total = 0;
        for _ in 0..64 {
            total += rewriter.feed(&chunk).len();
            assert!(rewriter.held.len() <= "--bind-addr=localhost".len());
        }
        total += rewriter.finish().len();
        // Each rewrite turns the 9 bytes of 127.0.0.1 into the 10 of 10.77.1.11.
        assert!(rewriter.rewrites() > 64 * 200);
        assert_eq!(total, 64 * chunk.len() + rewriter.rewrites());
    }

    fn script_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"--host=127.0.0.1".to_vec()),
            Just(b"--host 127.0.0.1".to_vec()),
            Just(b"--on-host=localhost".to_vec()),
            Just(b"--bind-addr=127.0.0.1:".to_vec()),
            Just(b"--bind-addr 127.0.0.1".to_vec()),
            Just(b"--hostname".to_vec()),
            Just(b"127.0.0.1".to_vec()),
            Just(b"-".to_vec()),
            Just(b"--".to_vec()),
            Just(b" ".to_vec()),
            Just(b"=".to_vec()),
            Just(b"0".to_vec()),
            Just(b"\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|parts| parts.concat())
    }

    fn cuts_for(len: usize, raw: &[prop::sample::Index]) -> Vec<usize> {
        let mut cuts: Vec<usize> = raw.iter().map(|i| i.index(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    /// Reference: the same rules written as a plain scan over the whole input.
    fn reference(addr: IpAddr, input: &[u8]) -> Vec<u8> {
        reference_counted(addr, input).0
    }

    /// The reference's output and how many binds it rewrote.
    fn reference_counted(addr: IpAddr, input: &[u8]) -> (Vec<u8>, usize) {
        let rewriter = BindRewriter::new(addr);
        let mut out = Vec::new();
        let mut rewrites = 0;
        let mut i = 0;
        'outer: while i < input.len() {
            for pattern in &rewriter.patterns {
                let end = i + pattern.text.len();
                if input[i..].starts_with(&pattern.text) && input.get(end).is_none_or(|&b| is_boundary(b)) {
                    out.extend_from_slice(&pattern.replacement);
                    rewrites += 1;
                    i = end;
                    continue 'outer;
                }
            }
            out.push(input[i]);
            i += 1;
        }
        (out, rewrites)
    }

    proptest! {
        #[test]
        fn any_split_gives_the_reference_output(
            input in script_strategy(),
            raw_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            v6 in any::<bool>(),
        ) {
            let addr: IpAddr = if v6 { "fd00::5".parse().unwrap() } else { v4() };
            let expected = reference(addr, &input);
            prop_assert_eq!(&rewrite_with(addr, &input), &expected);
            prop_assert_eq!(&chunked(addr, &input, &cuts_for(input.len(), &raw_cuts)), &expected);
            let every_byte: Vec<usize> = (1..input.len()).collect();
            prop_assert_eq!(&chunked(addr, &input, &every_byte), &expected);
        }

        #[test]
        fn bytes_without_patterns_pass_unchanged(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assume!(!input.windows(2).any(|w| w == b"--"));
            prop_assert_eq!(rewrite_with(v4(), &input), input);
        }

        #[test]
        fn held_bytes_are_always_a_pattern_prefix(input in script_strategy()) {
            let mut rewriter = BindRewriter::new(v4());
            let out = rewriter.feed(&input);
            let held = rewriter.held.clone();
            prop_assert!(held.is_empty() || rewriter.patterns.iter().any(|p| p.text.starts_with(&held)));
            prop_assert!(input.ends_with(&held));
            if !input.ends_with(b"\n") {
                return Ok(());
            }
            prop_assert!(held.is_empty());
            prop_assert_eq!(out, reference(v4(), &input));
        }
    }

    /// The longest pattern, `--bind-addr=localhost`: the most ever held.
    const MAX_HELD: usize = "--bind-addr=localhost".len();

    /// Runs a fresh rewriter over `chunks`, checking after every read that
    /// the held bytes stay bounded; returns the output and the rewrite count.
    fn chunked_bounded(addr: IpAddr, chunks: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut rewriter = BindRewriter::new(addr);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(rewriter.feed(chunk));
            assert!(rewriter.held_len() <= MAX_HELD, "held {:?}", rewriter.held);
        }
        out.extend(rewriter.finish());
        assert_eq!(rewriter.held_len(), 0);
        (out, rewriter.rewrites())
    }

    fn split_at<'a>(input: &'a [u8], raw: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts_for(input.len(), raw) {
            chunks.push(&input[start..cut]);
            start = cut;
        }
        chunks.push(&input[start..]);
        chunks
    }

    fn pattern_texts() -> Vec<Vec<u8>> {
        BindRewriter::new(v4()).patterns.into_iter().map(|p| p.text).collect()
    }

    /// Bytes that may follow a pattern and keep it from matching.
    const NOT_BOUNDARIES: &[u8] = b"0a9Z.-";

    /// Patterns, their near misses and what breaks them, in random bytes
    /// (NUL and invalid UTF-8 included).
    fn hostile_strategy() -> impl Strategy<Value = Vec<u8>> {
        let texts = pattern_texts();
        let piece = prop_oneof![
            prop::sample::select(texts.clone()),
            (prop::sample::select(texts.clone()), prop::sample::select(b"0a.-:\"' \n\0\xff=".to_vec()))
                .prop_map(|(text, next)| [text, vec![next]].concat()),
            (prop::sample::select(texts), any::<prop::sample::Index>())
                .prop_map(|(text, cut)| text[..cut.index(text.len())].to_vec()),
            prop::sample::select(b"-hostnbidar=127.0lc \0\xff\n:".to_vec()).prop_map(|b| vec![b]),
            Just(b"\xc3(\xf0\x28\x8c".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(piece, 0..32).prop_map(|parts| parts.concat())
    }

    /// Random bytes and near misses of every pattern: a pattern cut short,
    /// or followed by a byte that makes it another host.
    fn near_miss_strategy() -> impl Strategy<Value = Vec<u8>> {
        let texts = pattern_texts();
        let piece = prop_oneof![
            (prop::sample::select(texts.clone()), prop::sample::select(NOT_BOUNDARIES.to_vec()))
                .prop_map(|(text, next)| [text, vec![next]].concat()),
            (prop::sample::select(texts), any::<prop::sample::Index>())
                .prop_map(|(text, cut)| text[..cut.index(text.len())].to_vec()),
            proptest::collection::vec(any::<u8>(), 0..24),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|parts| parts.concat())
    }

    #[test]
    fn nul_and_invalid_utf8_around_a_bind_survive() {
        let input = b"\xff\xfe\0--host=127.0.0.1\0\xc3(--on-host localhost\xff--bind-addr=127.0.0.1\xf0";
        let expected =
            b"\xff\xfe\0--host=10.77.1.11\0\xc3(--on-host 10.77.1.11\xff--bind-addr=10.77.1.11\xf0";
        assert_eq!(rewrite_with(v4(), input), expected);
    }

    #[test]
    fn a_64_mib_line_of_near_misses_passes_unchanged_with_bounded_memory() {
        let mut unit =
            b"--host=127.0.0.10\0\xff--bind-addr=localhost.x --on-host 127.0.0.1-\xc3(--on-hos".to_vec();
        unit.extend_from_slice(&[b'q'; 1500]);
        let mut input = Vec::with_capacity(64 << 20);
        while input.len() < 64 << 20 {
            input.extend_from_slice(&unit);
        }
        input.truncate(64 << 20);
        let mut rewriter = BindRewriter::new(v4());
        let mut passed = 0;
        for chunk in input.chunks(64 << 10) {
            let out = rewriter.feed(chunk);
            assert_eq!(out, input[passed..passed + out.len()]);
            passed += out.len();
            assert!(rewriter.held_len() <= MAX_HELD);
        }
        let tail = rewriter.finish();
        assert_eq!(tail, input[passed..]);
        assert_eq!(rewriter.rewrites(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn hostile_bytes_follow_the_reference_under_any_split(
            input in hostile_strategy(),
            raw_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            v6 in any::<bool>(),
        ) {
            let addr: IpAddr = if v6 { "fd00::5".parse().unwrap() } else { v4() };
            let expected = reference_counted(addr, &input);
            prop_assert_eq!(&chunked_bounded(addr, &[&input]), &expected);
            prop_assert_eq!(&chunked_bounded(addr, &split_at(&input, &raw_cuts)), &expected);
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(&chunked_bounded(addr, &bytes), &expected);
        }

        #[test]
        fn near_misses_in_random_bytes_pass_unchanged(
            input in near_miss_strategy(),
            raw_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            // Random bytes could, very rarely, spell a whole pattern.
            prop_assume!(reference_counted(v4(), &input).1 == 0);
            prop_assert_eq!(chunked_bounded(v4(), &split_at(&input, &raw_cuts)), (input.clone(), 0));
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(chunked_bounded(v4(), &bytes), (input, 0));
        }
    }
}
