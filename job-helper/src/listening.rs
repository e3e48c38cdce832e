//! Finds the `listeningOn==X==` lines of the launch script's output.
//!
//! VS Code connects as soon as it reads that line, through the login node, so
//! the shim has to learn the server's real endpoint first (a control line
//! just before it), and VS Code has to be told the relay's port instead of
//! the server's.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const MARKER: &[u8] = b"listeningOn==";
const TERMINATOR: &[u8] = b"==";

/// Longer values are not endpoints; the bound keeps memory flat whatever the
/// script prints.
pub const MAX_VALUE: usize = 4096;
/// Longer lines are not the script's `ID: start` or `ID: end` markers.
const MAX_MARKER_LINE: usize = 128;

/// What the launch script said the server listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `listeningOn==PORT==` (legacy server on the host it was told).
    Port(u16),
    /// `listeningOn==HOST:PORT==` (exec server).
    HostPort(IpAddr, u16),
    /// `listeningOn==/path==` (socket mode); reachable only through a bridge.
    Socket(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub target: Target,
    /// The line's `listeningOn==X==` bytes as the script printed them.
    pub original: Vec<u8>,
}

impl Listening {
    /// What VS Code gets for a server that cannot be served safely: a value
    /// it cannot dial, so it fails at once instead of connecting to whatever
    /// listens on that address on the login node.
    pub fn unusable() -> Vec<u8> {
        [MARKER, b"unavailable".as_slice(), TERMINATOR].concat()
    }

    /// The line VS Code gets: the relay's port, as `127.0.0.1:PORT` where
    /// VS Code asked for a host and port (an exec server), else bare (a
    /// socket is offered as a TCP port because the relay, not ssh, carries
    /// the connection).
    pub fn rewritten(&self, relay_port: u16, host_port: bool) -> Vec<u8> {
        let value =
            if host_port { format!("{}:{relay_port}", Ipv4Addr::LOCALHOST) } else { relay_port.to_string() };
        [MARKER, value.as_bytes(), TERMINATOR].concat()
    }
}

/// One piece of the scanned stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(Vec<u8>),
    Listening(Listening),
}

/// Streaming, sans-IO scanner for the shell's stdout.
///
/// Only a line that still begins like `listeningOn==` is held back, up to
/// [`MAX_VALUE`] bytes of value; everything else passes as soon as it is
/// fed, and the result does not depend on how the stream is split into
/// reads. Markers are taken only at a line start, as every launch script
/// prints them; that keeps the control line, emitted in front of the
/// marker, at a line start too.
///
/// Only the launch script's own output is scanned: once its `ID: end` line
/// (the id from its `ID: start` line) has passed, every later byte passes
/// untouched. Newer Remote-SSH builds speak to an exec server over this very
/// stream after the end marker (`listeningOn====`, empty), and their bytes
/// are none of our business.
pub struct ListeningScanner {
    at_line_start: bool,
    held: Vec<u8>,
    /// How much of [`MARKER`] the passed-through data ends with, to say in
    /// the log when a marker went to VS Code unchanged.
    passed_marker: usize,
    /// The current line's first bytes (up to [`MAX_MARKER_LINE`]), to
    /// recognise the script's markers.
    line: Vec<u8>,
    line_too_long: bool,
    /// The id from the script's `ID: start` line.
    script_id: Option<Vec<u8>>,
    script_ended: bool,
}

impl Default for ListeningScanner {
    fn default() -> Self {
        ListeningScanner::new()
    }
}

impl ListeningScanner {
    pub fn new() -> ListeningScanner {
        ListeningScanner {
            at_line_start: true,
            held: Vec::new(),
            passed_marker: 0,
            line: Vec::new(),
            line_too_long: false,
            script_id: None,
            script_ended: false,
        }
    }

    /// Whether the launch script's end marker has passed: from then on
    /// nothing is scanned (nor, on the way in, rewritten).
    pub fn script_ended(&self) -> bool {
        self.script_ended
    }

    pub fn feed(&mut self, mut input: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        while !input.is_empty() {
            if self.script_ended {
                append_data(&mut out, input);
                break;
            }
            // Up to the end of the current line: a line may end the script.
            let end = input.iter().position(|&b| b == b'\n').map_or(input.len(), |i| i + 1);
            let (line, rest) = input.split_at(end);
            self.scan(line, &mut out);
            self.follow_line(line);
            input = rest;
        }
        out
    }

    /// Learns the script's id from its start marker and notices its end.
    fn follow_line(&mut self, bytes: &[u8]) {
        let room = MAX_MARKER_LINE.saturating_sub(self.line.len());
        self.line_too_long |= bytes.len() > room;
        self.line.extend_from_slice(&bytes[..room.min(bytes.len())]);
        if bytes.last() != Some(&b'\n') {
            return;
        }
        let text = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !self.line_too_long {
            // The first start marker is the script's: a later `x: start`
            // line is output that must not move the end.
            if let Some(id) =
                text.strip_suffix(b": start").filter(|id| is_script_id(id) && self.script_id.is_none())
            {
                self.script_id = Some(id.to_vec());
            } else if self.script_id.as_deref().is_some_and(|id| text.strip_suffix(b": end") == Some(id)) {
                self.script_ended = true;
            }
        }
        self.line.clear();
        self.line_too_long = false;
    }

    fn scan(&mut self, mut input: &[u8], out: &mut Vec<Piece>) {
        while !input.is_empty() {
            if self.held.is_empty() && !self.at_line_start {
                let end = input.iter().position(|&b| b == b'\n').map_or(input.len(), |i| i + 1);
                self.at_line_start = input[end - 1] == b'\n';
                self.pass(&input[..end], out);
                input = &input[end..];
                continue;
            }
            self.at_line_start = false;
            self.held.push(input[0]);
            input = &input[1..];
            self.step(out);
        }
    }

    /// How many bytes are held back because they could still become a
    /// marker line: at most the marker, [`MAX_VALUE`] and the terminator.
    #[cfg(any(test, fuzzing))]
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// An unfinished marker at end of stream is data.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        self.watch(&held);
        self.at_line_start = true;
        held
    }

    /// Advances after the byte just appended to `held`.
    fn step(&mut self, out: &mut Vec<Piece>) {
        let len = self.held.len();
        let byte = self.held[len - 1];
        if byte == b'\n' {
            self.release(out);
            self.at_line_start = true;
        } else if len <= MARKER.len() {
            if byte != MARKER[len - 1] {
                self.release(out);
            }
        } else if len >= MARKER.len() + TERMINATOR.len() && self.held.ends_with(TERMINATOR) {
            let value = &self.held[MARKER.len()..len - TERMINATOR.len()];
            match parse_target(value) {
                Some(target) => {
                    out.push(Piece::Listening(Listening { target, original: std::mem::take(&mut self.held) }))
                }
                // No port at all: the exec server speaks over this stream
                // itself (newer Remote-SSH builds). Nothing to relay.
                None if value.is_empty() => {
                    tracing::info!(
                        "listeningOn is empty: the server speaks over the launch stream; passed on as is"
                    );
                    let held = std::mem::take(&mut self.held);
                    append_data(out, &held);
                }
                None => self.release(out),
            }
        } else if len >= MARKER.len() + MAX_VALUE + TERMINATOR.len() {
            self.release(out);
        }
    }

    fn release(&mut self, out: &mut Vec<Piece>) {
        let held = std::mem::take(&mut self.held);
        self.pass(&held, out);
    }

    fn pass(&mut self, data: &[u8], out: &mut Vec<Piece>) {
        if data.is_empty() {
            return;
        }
        self.watch(data);
        match out.last_mut() {
            Some(Piece::Data(last)) => last.extend_from_slice(data),
            _ => out.push(Piece::Data(data.to_vec())),
        }
    }

    fn watch(&mut self, data: &[u8]) {
        for &byte in data {
            if byte == MARKER[self.passed_marker] {
                self.passed_marker += 1;
                if self.passed_marker == MARKER.len() {
                    self.passed_marker = 0;
                    tracing::warn!(
                        "passed a `listeningOn==` marker to VS Code unchanged: it is not at a line start \
                         or its value is not PORT, HOST:PORT or a socket path; VS Code will try to reach \
                         it on the login node"
                    );
                }
            } else {
                // No proper prefix of the marker is also its suffix, so a
                // mismatch can only restart at its first byte.
                self.passed_marker = usize::from(byte == MARKER[0]);
            }
        }
    }
}

fn append_data(out: &mut Vec<Piece>, data: &[u8]) {
    match out.last_mut() {
        Some(Piece::Data(last)) => last.extend_from_slice(data),
        _ => out.push(Piece::Data(data.to_vec())),
    }
}

/// Remote-SSH's ids are random hex; other launchers use letters too.
fn is_script_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn parse_target(value: &[u8]) -> Option<Target> {
    if value.first() == Some(&b'/') {
        return (!value.contains(&0)).then(|| Target::Socket(PathBuf::from(OsStr::from_bytes(value))));
    }
    let value = std::str::from_utf8(value).ok()?;
    match value.rsplit_once(':') {
        None => parse_port(value).map(Target::Port),
        Some((host, port)) => {
            let port = parse_port(port)?;
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let host = match host {
                "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
                _ => host.parse().ok()?,
            };
            Some(Target::HostPort(host, port))
        }
    }
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&port| port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs the scanner over `chunks`, merging adjacent data so that results
    /// of different splits compare equal.
    fn run(chunks: &[&[u8]]) -> Vec<Piece> {
        let mut scanner = ListeningScanner::new();
        let mut out: Vec<Piece> = Vec::new();
        let mut push = |piece: Piece| match (out.last_mut(), piece) {
            (_, Piece::Data(d)) if d.is_empty() => {}
            (Some(Piece::Data(last)), Piece::Data(d)) => last.extend(d),
            (_, piece) => out.push(piece),
        };
        for chunk in chunks {
            scanner.feed(chunk).into_iter().for_each(&mut push);
        }
        push(Piece::Data(scanner.finish()));
        out
    }

    fn listening(target: Target, original: &str) -> Piece {
        Piece::Listening(Listening { target, original: original.as_bytes().to_vec() })
    }

    fn data(text: &str) -> Piece {
        Piece::Data(text.as_bytes().to_vec())
    }

    #[test]
    fn every_form_is_found() {
        let out = run(&[b"abc: start\nlisteningOn==5555==\nlisteningOn==127.0.0.1:6666==\n\
            listeningOn==/run/user/1/vscode.sock==\nlisteningOn==[fd00::5]:7==\nabc: end\n"]);
        assert_eq!(
            out,
            vec![
                data("abc: start\n"),
                listening(Target::Port(5555), "listeningOn==5555=="),
                data("\n"),
                listening(
                    Target::HostPort("127.0.0.1".parse().unwrap(), 6666),
                    "listeningOn==127.0.0.1:6666=="
                ),
                data("\n"),
                listening(
                    Target::Socket("/run/user/1/vscode.sock".into()),
                    "listeningOn==/run/user/1/vscode.sock=="
                ),
                data("\n"),
                listening(Target::HostPort("fd00::5".parse().unwrap(), 7), "listeningOn==[fd00::5]:7=="),
                data("\nabc: end\n"),
            ]
        );
    }

    #[test]
    fn stream_start_is_a_line_start_and_trailing_bytes_pass() {
        let out = run(&[b"listeningOn==localhost:1==\r\n"]);
        assert_eq!(
            out,
            vec![
                listening(Target::HostPort("127.0.0.1".parse().unwrap(), 1), "listeningOn==localhost:1=="),
                data("\r\n")
            ]
        );
    }

    #[test]
    fn malformed_or_mid_line_markers_stay_data() {
        for stream in [
            "x listeningOn==5555==\n",
            "listeningOn====\n",
            "listeningOn==0==\n",
            "listeningOn==70000==\n",
            "listeningOn==host.example:80==\n",
            "listeningOn==127.0.0.1:==\n",
            "listeningOn==12a==\n",
            "listeningOn==5555\n==\n",
            "listeningOn=5555==\n",
            "listeningOn==5555",
            "listeningOn==/a\0b==\n",
            "ListeningOn==5555==\n",
        ] {
            assert_eq!(run(&[stream.as_bytes()]), vec![data(stream)], "{stream:?}");
        }
    }

    #[test]
    fn first_terminator_ends_the_value() {
        let out = run(&[b"listeningOn==5555===x\n"]);
        assert_eq!(out, vec![listening(Target::Port(5555), "listeningOn==5555=="), data("=x\n")]);
    }

    #[test]
    fn every_occurrence_is_reported() {
        let out = run(&[b"listeningOn==1==\nlisteningOn==1==\n"]);
        assert_eq!(out.iter().filter(|p| matches!(p, Piece::Listening(_))).count(), 2);
    }

    #[test]
    fn rewritten_keeps_the_form() {
        let line = |target, host_port| Listening { target, original: Vec::new() }.rewritten(4444, host_port);
        assert_eq!(line(Target::Port(5), false), b"listeningOn==4444==");
        assert_eq!(
            line(Target::HostPort("10.0.0.1".parse().unwrap(), 5), true),
            b"listeningOn==127.0.0.1:4444=="
        );
        assert_eq!(line(Target::Socket("/s".into()), false), b"listeningOn==4444==");
        assert_eq!(line(Target::Socket("/s".into()), true), b"listeningOn==127.0.0.1:4444==");
    }

    #[test]
    fn only_a_line_start_marker_is_held() {
        let mut scanner = ListeningScanner::new();
        assert_eq!(scanner.feed(b"abc\nlisten"), vec![data("abc\n")]);
        assert_eq!(scanner.held, b"listen");
        assert_eq!(scanner.feed(b"ing"), vec![]);
        assert_eq!(scanner.feed(b"x"), vec![data("listeningx")]);
        assert!(scanner.held.is_empty());
        assert_eq!(scanner.feed(b" listeningOn==1"), vec![data(" listeningOn==1")]);
        assert!(scanner.held.is_empty());
        assert_eq!(scanner.feed(b"\n"), vec![data("\n")]);
        assert!(scanner.held.is_empty());
    }

    #[test]
    fn huge_line_without_newline_keeps_the_buffer_small() {
        // One 64 MiB line that starts like a marker and never ends, with NUL,
        // invalid UTF-8 and marker pieces inside but no terminator.
        let unit = [b"\0\xff\xfe\xc3(=listeningOn=x".as_slice(), &[b'7'; 991]].concat();
        let stream = vscode_slurm_protocol::testing::endless_line(b"listeningOn==7777", &unit);
        let mut scanner = ListeningScanner::new();
        let mut passed = 0;
        for chunk in stream.chunks(64 << 10) {
            let out: Vec<Vec<u8>> = scanner
                .feed(chunk)
                .into_iter()
                .map(|piece| match piece {
                    Piece::Data(data) => data,
                    other => panic!("not an endpoint: {other:?}"),
                })
                .collect();
            let out = out.concat();
            assert_eq!(out, stream[passed..passed + out.len()]);
            passed += out.len();
            assert!(scanner.held_len() < MARKER.len() + MAX_VALUE + TERMINATOR.len());
        }
        assert_eq!(passed, stream.len(), "everything passed before the stream ended");
        assert!(scanner.finish().is_empty());
        // The next line is a line start again.
        assert_eq!(
            scanner.feed(b"\nlisteningOn==5==\n"),
            vec![data("\n"), listening(Target::Port(5), "listeningOn==5=="), data("\n")]
        );
    }

    #[test]
    fn longest_value_is_accepted_and_one_more_byte_is_not() {
        let path = format!("/{}", "p".repeat(MAX_VALUE - 1));
        let line = format!("listeningOn=={path}==\n");
        assert_eq!(run(&[line.as_bytes()]).len(), 2);
        let line = format!("listeningOn=={path}p==\n");
        assert_eq!(run(&[line.as_bytes()]), vec![data(&line)]);
    }

    #[test]
    fn after_the_scripts_end_marker_nothing_is_scanned() {
        let script = b"x1: start\nlisteningOn====\nx1: end\n";
        let tail = b"listeningOn==5555==\n--on-port\n";
        let out = run(&[script, tail]);
        assert_eq!(out, vec![Piece::Data([script.as_slice(), tail].concat())]);
        // Another id's end, a long line ending like one, or an end before a
        // start: still the script's output.
        for stream in [
            "x1: start\ny2: end\nlisteningOn==5==\n",
            "x1: end\nlisteningOn==5==\n",
            "x1: start\ny2: start\ny2: end\nlisteningOn==5==\n",
            &format!("x1: start\n{}x1: end\nlisteningOn==5==\n", "y".repeat(200)),
        ] {
            let out = run(&[stream.as_bytes()]);
            assert!(out.iter().any(|p| matches!(p, Piece::Listening(_))), "{stream:?}: {out:?}");
        }
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        crate::test_streams::made_of("listeningOn==5555==|listeningOn==127.0.0.1:6666==|listeningOn==/tmp/s.sock==|listeningOn==|listening|==|\n|1")
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_result(
            stream in stream_strategy(),
            raw_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let whole = run(&[&stream]);
            prop_assert_eq!(&run(&split_at(&stream, &raw_cuts)), &whole);
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&run(&bytes), &whole);
            // Nothing is lost or added: the pieces spell the input again.
            let spelled: Vec<u8> = whole.iter().flat_map(|p| match p {
                Piece::Data(d) => d.clone(),
                Piece::Listening(l) => l.original.clone(),
            }).collect();
            prop_assert_eq!(spelled, stream);
        }

        #[test]
        fn bytes_without_markers_pass_unchanged(
            stream in proptest::collection::vec(any::<u8>(), 0..2048),
            raw_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let expected = if stream.is_empty() { vec![] } else { vec![Piece::Data(stream.clone())] };
            prop_assert_eq!(&run(&[&stream]), &expected);
            prop_assert_eq!(&run_bounded(&split_at(&stream, &raw_cuts)), &expected);
        }

        /// Arbitrary bytes after the end marker, markers and bind flags
        /// among them, come out identical however the stream is cut.
        #[test]
        fn bytes_after_the_end_marker_pass_untouched(
            script in stream_strategy(),
            tail in crate::test_streams::made_of("listeningOn==5555==|listeningOn====|ab: end|ab: start|--on-port|--port=0|\n|\0|\u{ff}|x"),
            raw_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let head = [b"\nab: start\n".as_slice(), &script, b"\nab: end\n"].concat();
            let stream = [head.as_slice(), &tail].concat();
            let mut scanner = ListeningScanner::new();
            let mut out = Vec::new();
            for chunk in split_at(&stream, &raw_cuts) {
                for piece in scanner.feed(chunk) {
                    match piece {
                        Piece::Data(d) => out.extend(d),
                        Piece::Listening(l) => {
                            prop_assert!(out.len() < head.len(), "an endpoint taken after the end marker");
                            out.extend(l.original)
                        }
                    }
                }
            }
            out.extend(scanner.finish());
            prop_assert!(scanner.script_ended());
            prop_assert_eq!(out, stream);
        }

        #[test]
        fn a_line_ending_in_newline_leaves_nothing_held(stream in stream_strategy()) {
            let mut scanner = ListeningScanner::new();
            scanner.feed(&stream);
            scanner.feed(b"\n");
            prop_assert!(scanner.held.is_empty());
        }
    }

    /// Like `run`, checking after every read that the held bytes stay bounded.
    fn run_bounded(chunks: &[&[u8]]) -> Vec<Piece> {
        let mut scanner = ListeningScanner::new();
        let mut out = Vec::new();
        for chunk in chunks {
            for piece in scanner.feed(chunk) {
                match piece {
                    Piece::Data(d) => push_data(&mut out, &d),
                    piece => out.push(piece),
                }
            }
            assert!(scanner.held_len() < MARKER.len() + MAX_VALUE + TERMINATOR.len());
        }
        push_data(&mut out, &scanner.finish());
        assert_eq!(scanner.held_len(), 0);
        out
    }

    fn push_data(out: &mut Vec<Piece>, bytes: &[u8]) {
        match out.last_mut() {
            _ if bytes.is_empty() => {}
            Some(Piece::Data(last)) => last.extend_from_slice(bytes),
            _ => out.push(Piece::Data(bytes.to_vec())),
        }
    }

    fn split_at<'a>(stream: &'a [u8], raw: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        vscode_slurm_protocol::testing::chunks(stream, raw.iter().map(|i| i.index(stream.len() + 1)))
    }

    /// Reference: the rules as a plain pass over the whole stream, line by
    /// line. A line that starts with the marker, whose first terminator
    /// after it ends a value of at most [`MAX_VALUE`] bytes that parses, is
    /// an endpoint up to that terminator; every other byte is data.
    fn reference(stream: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        for line in stream.split_inclusive(|&b| b == b'\n') {
            let found = line.strip_prefix(MARKER).and_then(|rest| {
                let len = rest.windows(TERMINATOR.len()).position(|w| w == TERMINATOR)?;
                let target = if len <= MAX_VALUE { parse_target(&rest[..len])? } else { return None };
                Some((target, MARKER.len() + len + TERMINATOR.len()))
            });
            match found {
                Some((target, end)) => {
                    out.push(Piece::Listening(Listening { target, original: line[..end].to_vec() }));
                    push_data(&mut out, &line[end..]);
                }
                None => push_data(&mut out, line),
            }
        }
        out
    }

    /// Markers of every form, their near misses and the bytes that break
    /// them: NUL, invalid UTF-8, CR, values around the length bound.
    fn hostile_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            prop::sample::select(vec![
                b"listeningOn==5555==".to_vec(),
                b"listeningOn==127.0.0.1:6666==".to_vec(),
                b"listeningOn==[fd00::5]:7==".to_vec(),
                b"listeningOn==localhost:1==".to_vec(),
                b"listeningOn==/run/user/1/vscode.sock==".to_vec(),
            ]),
            prop::sample::select(vec![
                b"listeningOn==/a\0b==".to_vec(),
                b"listeningOn==\xff==".to_vec(),
                b"listeningOn==0==".to_vec(),
                b"listeningOn==70000==".to_vec(),
                b"listeningOn==[fd00::5:7==".to_vec(),
                b"listeningOn==".to_vec(),
                b"listening".to_vec(),
            ]),
            prop::sample::select(vec![
                b"==".to_vec(),
                b"=".to_vec(),
                b"\n".to_vec(),
                b"\r\n".to_vec(),
                b"\0".to_vec(),
                b"\xff\xfe\xc3".to_vec(),
                b"1".to_vec(),
                b":".to_vec(),
            ]),
            (MAX_VALUE - 20..MAX_VALUE + 20).prop_map(|n| {
                let mut line = b"listeningOn==/".to_vec();
                line.resize(MARKER.len() + n, b'p');
                line.extend_from_slice(TERMINATOR);
                line
            }),
            proptest::collection::vec(any::<u8>(), 0..12),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|parts| parts.concat())
    }

    #[test]
    fn reference_agrees_on_the_examples() {
        let stream =
            b"abc\nlisteningOn==5555===x\nx listeningOn==1==\nlisteningOn==x==5==\nlisteningOn==/s==";
        assert_eq!(reference(stream), run(&[stream]));
        assert_eq!(reference(stream).iter().filter(|p| matches!(p, Piece::Listening(_))).count(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn hostile_streams_follow_the_reference_under_any_split(
            stream in hostile_strategy(),
            raw_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let expected = reference(&stream);
            prop_assert_eq!(&run_bounded(&[&stream]), &expected);
            prop_assert_eq!(&run_bounded(&split_at(&stream, &raw_cuts)), &expected);
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&run_bounded(&bytes), &expected);
        }
    }
}
