//! Every message and name that crosses a process boundary, defined once:
//! the control lines between `vscode-shim` (login node) and
//! `vscode-job-helper` (compute node) and the environment they and the SPANK
//! plugin pass (here), the door handshake between the shim's relay and the
//! helper's door ([`door`]), the keeper socket's messages ([`keeper`]), the
//! plugin's options, the job name and the job Comment ([`slurm`]), and the
//! duration grammar users and admins write ([`duration`]).
//!
//! Every binary links this crate, so a change here changes all sides.
//!
//! The helper shares one byte stream with VS Code's launch script (the step's
//! stdout), so control lines are in-band. They carry a per-session secret
//! nonce that only the shim and the helper know (it travels in the step's
//! environment, which other users cannot read), so anything the script or a
//! server prints that merely looks like a control line is passed on as data.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;

/// Environment variables, grouped by who sets them.
pub mod env {
    /// Set by the shim for the job step: the session's secret nonce.
    pub const NONCE: &str = "VSCODE_SLURM_NONCE";
    /// Set by the shim for the job step: the key both ends of the door
    /// handshake prove they hold (see [`crate::door`]). Never on a command
    /// line, never in the launch script's environment.
    pub const DOOR_KEY: &str = "VSCODE_SLURM_DOOR_KEY";
    /// Set by the shim: the login-side port VS Code will be told to use.
    pub const RELAY_PORT: &str = "VSCODE_SLURM_RELAY_PORT";
    /// What the helper takes out of the environment before the launch
    /// script runs: the script, and everything it starts, must not learn
    /// the session's secrets.
    pub const HIDDEN_FROM_SCRIPT: [&str; 3] = [NONCE, DOOR_KEY, RELAY_PORT];
    /// Set by the SPANK plugin in the step: the address the helper's door listens on,
    /// which is also the address the login node reaches it at.
    pub const BIND_ADDR: &str = "VSCODE_SLURM_BIND_ADDR";
    /// Set by the SPANK plugin: the job-scoped runtime directory (0700, the
    /// user's), removed by the epilog.
    pub const RUNTIME_DIR: &str = "VSCODE_SLURM_RUNTIME_DIR";
    /// Set by the SPANK plugin when known: the job's end time, Unix seconds.
    pub const JOB_END: &str = "VSCODE_SLURM_JOB_END";
    /// Set by the SPANK plugin in the keeper's step: how long, in seconds,
    /// the job outlives its last window (the user's `--linger`, capped by
    /// the site's `linger_max`).
    pub const LINGER: &str = "VSCODE_SLURM_LINGER";
}

pub mod door;
pub mod duration;
pub mod helper;
pub mod htcondor;
pub mod keeper;
pub mod proxy;
pub mod slurm;
#[doc(hidden)]
pub mod testing;

/// Every control line starts with this, at the start of a line.
pub const CONTROL_PREFIX: &[u8] = b"@@vscode-slurm@@ ";

/// Longer candidate lines are not control lines; the bound keeps the shim's
/// memory flat whatever the script prints.
pub const MAX_CONTROL_LINE: usize = 512;

/// A per-session secret: 128 random bits as 32 lowercase hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Nonce(String);

impl Nonce {
    pub fn generate() -> std::io::Result<Nonce> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Nonce(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// Accepts only the shape `generate` makes, so a mangled environment is
    /// reported instead of silently weakening the session's secret.
    pub fn parse(text: &str) -> Result<Nonce, ProtocolError> {
        let well_formed =
            text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if well_formed {
            Ok(Nonce(text.to_owned()))
        } else {
            Err(ProtocolError::MalformedNonce)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares without an early exit so timing does not leak how many
    /// leading characters of a forged nonce were right.
    fn matches(&self, candidate: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        if ours.len() != candidate.len() {
            return false;
        }
        ours.iter().zip(candidate).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Keeps the secret out of logs.
impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    MalformedNonce,
    MalformedDoorKey,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::MalformedNonce => f.write_str("the session nonce is not 32 lowercase hex digits"),
            ProtocolError::MalformedDoorKey => f.write_str("the door key is not 64 lowercase hex digits"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// What the helper tells the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Where the server's door is reachable from the login node (the relay
    /// authenticates there, see [`door`]). Sent before the rewritten
    /// `listeningOn` line so the relay knows its target before VS Code can
    /// connect.
    Endpoint(SocketAddr),
    /// The launch script's shell runs: the window has its place in the job.
    /// Until then the shim keeps VS Code's script to itself, so a job that
    /// was ending when the window tried to join loses none of it.
    Ready,
    /// Something the user must see even though VS Code shows only the
    /// connection log: the shim prints it on stderr (a time-limit warning).
    Notice(String),
}

/// Keeps a notice on one short line whatever it was made from.
fn notice_text(text: &str) -> String {
    let room = MAX_CONTROL_LINE - CONTROL_PREFIX.len() - 32 - " notice \n".len() - 1;
    let mut clean: String =
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned();
    while clean.len() > room {
        clean.pop();
    }
    clean
}

/// The bytes of one control line, newline included.
pub fn encode(nonce: &Nonce, message: &ControlMessage) -> Vec<u8> {
    let body = match message {
        ControlMessage::Endpoint(addr) => format!("endpoint {addr}"),
        ControlMessage::Notice(text) => format!("notice {}", notice_text(text)),
        ControlMessage::Ready => "ready".to_owned(),
    };
    let mut line = CONTROL_PREFIX.to_vec();
    line.extend_from_slice(format!("{} {body}\n", nonce.as_str()).as_bytes());
    line
}

/// Parses one complete line (without its newline) if it is a control line
/// carrying `nonce`; anything else is `None` and stays data.
pub fn decode(nonce: &Nonce, line: &[u8]) -> Option<ControlMessage> {
    let rest = line.strip_prefix(CONTROL_PREFIX)?;
    let rest = std::str::from_utf8(rest).ok()?;
    let mut words = rest.split(' ');
    if !nonce.matches(words.next()?.as_bytes()) {
        return None;
    }
    if let Some(text) = rest.split_once(' ').and_then(|(_, after)| after.strip_prefix("notice ")) {
        return (!text.chars().any(char::is_control)).then(|| ControlMessage::Notice(text.to_owned()));
    }
    if rest.split_once(' ').map(|(_, after)| after) == Some("ready") {
        return Some(ControlMessage::Ready);
    }
    let message = match (words.next()?, words.next()?) {
        ("endpoint", addr) => ControlMessage::Endpoint(addr.parse().ok()?),
        _ => return None,
    };
    words.next().is_none().then_some(message)
}

/// One piece of the filtered stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(Vec<u8>),
    Control(ControlMessage),
}

/// Separates this session's control lines from the bytes meant for VS Code.
///
/// Bytes pass through as soon as they cannot start a control line; only a
/// line start that still matches [`CONTROL_PREFIX`] is held back, and never
/// more than [`MAX_CONTROL_LINE`] bytes. The result does not depend on how
/// the stream is split into reads.
pub struct ControlFilter {
    nonce: Nonce,
    at_line_start: bool,
    held: Vec<u8>,
}

impl ControlFilter {
    pub fn new(nonce: Nonce) -> ControlFilter {
        ControlFilter { nonce, at_line_start: true, held: Vec::new() }
    }

    pub fn feed(&mut self, mut input: &[u8]) -> Vec<Piece> {
        let mut out = Output::default();
        while !input.is_empty() {
            if !self.at_line_start && self.held.is_empty() {
                // Mid-line: everything up to and including the next newline is data.
                match input.iter().position(|&b| b == b'\n') {
                    Some(newline) => {
                        out.data(&input[..=newline]);
                        input = &input[newline + 1..];
                        self.at_line_start = true;
                    }
                    None => {
                        out.data(input);
                        input = &[];
                    }
                }
                continue;
            }
            let byte = input[0];
            input = &input[1..];
            self.at_line_start = false;
            self.held.push(byte);
            let len = self.held.len();
            if len <= CONTROL_PREFIX.len() {
                if self.held[len - 1] != CONTROL_PREFIX[len - 1] {
                    self.release(&mut out);
                }
            } else if byte == b'\n' {
                match decode(&self.nonce, &self.held[..len - 1]) {
                    Some(message) => {
                        self.held.clear();
                        out.control(message);
                    }
                    None => self.release(&mut out),
                }
                self.at_line_start = true;
            } else if len >= MAX_CONTROL_LINE {
                self.release(&mut out);
            }
            if byte == b'\n' {
                self.at_line_start = true;
            }
        }
        out.pieces
    }

    /// How many bytes are held back waiting for the bytes that decide whether
    /// they are a control line: always less than [`MAX_CONTROL_LINE`].
    #[cfg(any(test, fuzzing))]
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Whether bytes are held back, waiting for the ones that decide.
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Gives up on what is held when the stream goes quiet mid-line: the
    /// helper writes a control line whole, so a line start that stays
    /// unfinished is the stream's own bytes (an exec server speaking over
    /// the launch stream waits for them). The rest of the line is data.
    pub fn give_up_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Releases whatever is held at end of stream: an unfinished line is data.
    pub fn finish(&mut self) -> Vec<u8> {
        self.at_line_start = true;
        std::mem::take(&mut self.held)
    }

    fn release(&mut self, out: &mut Output) {
        out.data(&self.held);
        self.held.clear();
    }
}

#[derive(Default)]
struct Output {
    pieces: Vec<Piece>,
}

impl Output {
    fn data(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(Piece::Data(last)) = self.pieces.last_mut() {
            last.extend_from_slice(bytes);
        } else {
            self.pieces.push(Piece::Data(bytes.to_vec()));
        }
    }

    fn control(&mut self, message: ControlMessage) {
        self.pieces.push(Piece::Control(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nonce() -> Nonce {
        Nonce::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn notices_round_trip_on_one_line() {
        let message = ControlMessage::Notice("job 7 ends in 2 minutes: save your work".into());
        let line = encode(&nonce(), &message);
        assert_eq!(decode(&nonce(), &line[..line.len() - 1]), Some(message));
        let hostile = ControlMessage::Notice(format!("a\nb\r{}", "x".repeat(2000)));
        let line = encode(&nonce(), &hostile);
        assert!(line.len() <= MAX_CONTROL_LINE, "{}", line.len());
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let Some(ControlMessage::Notice(text)) = decode(&nonce(), &line[..line.len() - 1]) else {
            panic!("not a notice")
        };
        assert!(text.starts_with("a b xxx"), "{text}");
        let ready = encode(&nonce(), &ControlMessage::Ready);
        assert_eq!(decode(&nonce(), &ready[..ready.len() - 1]), Some(ControlMessage::Ready));
        let forged = b"@@vscode-slurm@@ ffffffffffffffffffffffffffffffff notice hi";
        assert_eq!(decode(&nonce(), forged), None);
    }

    fn endpoint() -> ControlMessage {
        ControlMessage::Endpoint("10.77.1.11:40000".parse().unwrap())
    }

    /// Runs the filter over `chunks` and merges adjacent data, so results of
    /// different splits can be compared.
    fn run(chunks: &[&[u8]]) -> Vec<Piece> {
        run_checking(chunks, |_| {})
    }

    /// `run`, calling `check` with the filter after every read.
    fn run_checking(chunks: &[&[u8]], check: impl Fn(&ControlFilter)) -> Vec<Piece> {
        let mut filter = ControlFilter::new(nonce());
        let mut out = Output::default();
        for chunk in chunks {
            for piece in filter.feed(chunk) {
                match piece {
                    Piece::Data(d) => out.data(&d),
                    Piece::Control(m) => out.control(m),
                }
            }
            check(&filter);
        }
        out.data(&filter.finish());
        assert_eq!(filter.held_len(), 0, "finish hands back everything held");
        out.pieces
    }

    #[test]
    fn generated_nonces_parse_and_differ() {
        let a = Nonce::generate().unwrap();
        let b = Nonce::generate().unwrap();
        assert!(Nonce::parse(a.as_str()).is_ok());
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "Nonce(..)");
    }

    #[test]
    fn malformed_nonces_are_rejected() {
        for bad in ["", "short", "0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcdeg"] {
            assert_eq!(Nonce::parse(bad), Err(ProtocolError::MalformedNonce), "{bad}");
        }
    }

    #[test]
    fn a_held_line_start_given_up_is_data_to_the_end_of_its_line() {
        let mut filter = ControlFilter::new(nonce());
        assert_eq!(filter.feed(b"frame\n@@vscode"), vec![Piece::Data(b"frame\n".to_vec())]);
        assert!(filter.is_holding());
        assert_eq!(filter.give_up_held(), b"@@vscode");
        assert!(!filter.is_holding());
        let rest = format!("-slurm@@ {} ready\n", nonce().as_str());
        assert_eq!(filter.feed(rest.as_bytes()), vec![Piece::Data(rest.as_bytes().to_vec())]);
        // The next line start is watched again.
        let line = encode(&nonce(), &ControlMessage::Ready);
        assert_eq!(filter.feed(&line), vec![Piece::Control(ControlMessage::Ready)]);
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let line = encode(&nonce(), &endpoint());
        assert!(line.ends_with(b"\n"));
        assert_eq!(decode(&nonce(), &line[..line.len() - 1]), Some(endpoint()));
        let v6 = ControlMessage::Endpoint("[fd00::5]:7".parse().unwrap());
        let line = encode(&nonce(), &v6);
        assert_eq!(decode(&nonce(), &line[..line.len() - 1]), Some(v6));
    }

    #[test]
    fn control_line_is_consumed_and_ordered_before_following_data() {
        let mut stream = b"abc: start\n".to_vec();
        stream.extend(encode(&nonce(), &endpoint()));
        stream.extend(b"listeningOn==40000==\n");
        assert_eq!(
            run(&[&stream]),
            vec![
                Piece::Data(b"abc: start\n".to_vec()),
                Piece::Control(endpoint()),
                Piece::Data(b"listeningOn==40000==\n".to_vec()),
            ]
        );
    }

    #[test]
    fn wrong_nonce_and_near_misses_stay_data() {
        let forged = encode(&Nonce::parse("ffffffffffffffffffffffffffffffff").unwrap(), &endpoint());
        let mid_line = [b"x".as_slice(), &encode(&nonce(), &endpoint())].concat();
        let trailing = [&encode(&nonce(), &endpoint())[..CONTROL_PREFIX.len() + 50], b" extra\n"].concat();
        for stream in [forged, mid_line, trailing, b"@@vscode-slurm@@\n".to_vec(), b"@@vscode".to_vec()] {
            assert_eq!(run(&[&stream]), vec![Piece::Data(stream.clone())]);
        }
    }

    #[test]
    fn long_prefixed_line_is_released_without_growing() {
        let mut filter = ControlFilter::new(nonce());
        let mut line = CONTROL_PREFIX.to_vec();
        line.extend(std::iter::repeat_n(b'z', 10 * MAX_CONTROL_LINE));
        let pieces = filter.feed(&line);
        assert_eq!(pieces, vec![Piece::Data(line)]);
        assert!(filter.held.is_empty());
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        let control = Just(encode(&nonce(), &endpoint()));
        let forged = Just(encode(&Nonce::parse("00000000000000000000000000000000").unwrap(), &endpoint()));
        let prefix_only = Just(CONTROL_PREFIX.to_vec());
        let noise = proptest::collection::vec(any::<u8>(), 0..40);
        let newline = Just(b"\n".to_vec());
        proptest::collection::vec(prop_oneof![control, forged, prefix_only, noise, newline], 0..12)
            .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_result(stream in stream_strategy(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
            let whole = run(&[&stream]);
            let chunks = split_at(&stream, &cuts);
            prop_assert_eq!(run(&chunks), whole.clone());
            // Data out is exactly the input minus the consumed control lines.
            let data: Vec<u8> = whole.iter().flat_map(|p| match p { Piece::Data(d) => d.clone(), _ => vec![] }).collect();
            let controls = whole.iter().filter(|p| matches!(p, Piece::Control(_))).count();
            prop_assert_eq!(data.len() + controls * encode(&nonce(), &endpoint()).len(), stream.len());
        }
    }

    /// Reference: the rules as a plain pass over the whole stream, line by
    /// line. A complete line (newline included) of at most
    /// [`MAX_CONTROL_LINE`] bytes that decodes with our nonce is a control
    /// message; every other byte is data. Also returns the bytes consumed by
    /// control lines.
    fn reference(stream: &[u8]) -> (Vec<Piece>, usize) {
        let mut out = Output::default();
        let mut consumed = 0;
        for line in stream.split_inclusive(|&b| b == b'\n') {
            let message = match line.split_last() {
                Some((b'\n', body)) if line.len() <= MAX_CONTROL_LINE => decode(&nonce(), body),
                _ => None,
            };
            match message {
                Some(message) => {
                    out.control(message);
                    consumed += line.len();
                }
                None => out.data(line),
            }
        }
        (out.pieces, consumed)
    }

    /// Like `run`, checking after every read that the held bytes stay bounded.
    fn run_bounded(chunks: &[&[u8]]) -> Vec<Piece> {
        run_checking(chunks, |filter| {
            assert!(filter.held_len() < MAX_CONTROL_LINE, "held {}", filter.held_len())
        })
    }

    fn split_at<'a>(stream: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        crate::testing::chunks(stream, cuts.iter().map(|i| i.index(stream.len() + 1)))
    }

    /// Control lines, their near misses and the bytes that break them:
    /// NUL, invalid UTF-8, CR, lines around the length bound.
    fn hostile_strategy() -> impl Strategy<Value = Vec<u8>> {
        let ours = |addr: &str| encode(&nonce(), &ControlMessage::Endpoint(addr.parse().unwrap()));
        let body = |rest: &[u8]| [CONTROL_PREFIX, nonce().as_str().as_bytes(), rest].concat();
        let piece = prop_oneof![
            Just(ours("10.77.1.11:40000")),
            Just(ours("10.77.1.11:40000")),
            Just(ours("[fd00::5]:7")),
            Just(encode(&Nonce::parse("0123456789abcdef0123456789abcdee").unwrap(), &endpoint())),
            Just(body(b" endpoint 10.77.1.11:40000\r\n")),
            Just(body(b" endpoint 10.77.1.11:40000 \n")),
            Just(body(b" endpoint \xff10.77.1.11:1\n")),
            Just(body(b" endpoint 10.77.1.11:1\0\n")),
            Just(body(b" endpoint  10.77.1.11:1\n")),
            Just(body(b" endpoint 10.77.1.11\n")),
            Just(body(b" ")),
            Just(CONTROL_PREFIX.to_vec()),
            Just(CONTROL_PREFIX[..5].to_vec()),
            (MAX_CONTROL_LINE - 40..MAX_CONTROL_LINE + 40).prop_map(move |n| {
                let mut line = body(b" endpoint 10.77.1.11:1 ");
                line.resize(n, b'x');
                line.push(b'\n');
                line
            }),
            Just(b"\n".to_vec()),
            Just(b"\0".to_vec()),
            Just(b"\xff\xfe\xc3".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..24),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|parts| parts.concat())
    }

    #[test]
    fn reference_agrees_on_the_examples() {
        let mut stream = b"abc: start\n".to_vec();
        stream.extend(encode(&nonce(), &endpoint()));
        stream.extend(b"@@vscode\0\xff\n");
        let (pieces, consumed) = reference(&stream);
        assert_eq!(pieces, run(&[&stream]));
        assert_eq!(consumed, encode(&nonce(), &endpoint()).len());
    }

    #[test]
    fn a_64_mib_line_passes_unchanged_with_bounded_memory() {
        // One line, no newline, starting like a control line of ours; NUL,
        // invalid UTF-8 and more prefixes inside.
        let start = [CONTROL_PREFIX, nonce().as_str().as_bytes(), b" endpoint "].concat();
        let unit = [b"\0\xff\xfe\xc3(".as_slice(), CONTROL_PREFIX, &[b'q'; 977]].concat();
        let stream = crate::testing::endless_line(&start, &unit);
        let mut filter = ControlFilter::new(nonce());
        let mut passed = 0;
        for chunk in stream.chunks(64 << 10) {
            for piece in filter.feed(chunk) {
                let Piece::Data(data) = piece else { panic!("not a control line: {piece:?}") };
                assert_eq!(data, stream[passed..passed + data.len()]);
                passed += data.len();
            }
            assert!(filter.held_len() < MAX_CONTROL_LINE);
        }
        assert_eq!(passed, stream.len(), "everything passed before the stream ended");
        assert!(filter.finish().is_empty());
        // The next line is a line start again.
        let mut next = b"\n".to_vec();
        next.extend(encode(&nonce(), &endpoint()));
        assert_eq!(filter.feed(&next), vec![Piece::Data(b"\n".to_vec()), Piece::Control(endpoint())]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn hostile_streams_follow_the_reference_under_any_split(
            stream in hostile_strategy(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let (expected, consumed) = reference(&stream);
            prop_assert_eq!(&run_bounded(&[&stream]), &expected);
            prop_assert_eq!(&run_bounded(&split_at(&stream, &cuts)), &expected);
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&run_bounded(&bytes), &expected);
            let data: usize = expected.iter().map(|p| match p { Piece::Data(d) => d.len(), _ => 0 }).sum();
            prop_assert_eq!(data + consumed, stream.len());
        }

        #[test]
        fn random_bytes_pass_unchanged_under_any_split(
            stream in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            // Without the nonce nothing can be a control line, whatever else it holds.
            let expected = if stream.is_empty() { vec![] } else { vec![Piece::Data(stream.clone())] };
            prop_assert_eq!(&run_bounded(&split_at(&stream, &cuts)), &expected);
        }
    }
}
