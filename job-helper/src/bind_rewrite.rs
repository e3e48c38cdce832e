//! Rewrites the launch script's loopback binds so that the server listens
//! where other users cannot reach it: on a unix socket in the job's private
//! runtime directory where the server can (legacy `--port=0` becomes
//! `--socket-path=…`, code-server gets `--socket …`), through the exec
//! server's own socket mode (`--on-port` becomes `--on-socket`), and on
//! loopback otherwise. The only way in from the network is then the helper's
//! door (see `vscode_slurm_door::door`).
//!
//! The launch line is spelled many ways (quoted variables, written-out paths,
//! flags inside `LISTEN_ARGS="..."`), so matching is by flag, never by the
//! command's name.

use std::path::{Path, PathBuf};

/// Where converted servers put their sockets: `DIR/server-PID-N.sock`, the
/// helper's pid keeping windows of one job apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketNames {
    dir: PathBuf,
    pid: u32,
}

/// A unix socket path must fit `sun_path` (108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

impl SocketNames {
    /// `None` when `dir` cannot hold sockets safely spelled into a shell
    /// script (too long, or characters the shell would interpret).
    pub fn new(dir: &Path, pid: u32) -> Option<SocketNames> {
        let text = dir.to_str()?;
        let plain = text.starts_with('/')
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
        let names = SocketNames { dir: dir.to_path_buf(), pid };
        (plain && names.path(u32::MAX).as_os_str().len() <= MAX_SOCKET_PATH).then_some(names)
    }

    pub fn path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("server-{}-{n}.sock", self.pid))
    }

    /// Whether `path` is one this helper handed out.
    pub fn is_ours(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("server-{}-", self.pid)) && n.ends_with(".sock"))
    }
}

/// What a pattern becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conversion {
    /// Legacy server `--port=0`: `--socket-path=SOCKET`.
    LegacyPort,
    /// Exec server `--on-port`: `--on-socket` (the server picks the path).
    ExecPort,
    /// code-server `--bind-addr 127.0.0.1…`: `--socket SOCKET` in front of
    /// it; code-server ignores the bind address once it has a socket.
    CodeServer,
}

impl Conversion {
    /// Which byte may follow the pattern for it to be the whole flag.
    fn ends_at(self, byte: u8) -> bool {
        match self {
            // `--on-port=8080` or `--on-port:` name a port of their own: leave them.
            Conversion::ExecPort => is_boundary(byte) && byte != b'=' && byte != b':',
            Conversion::LegacyPort | Conversion::CodeServer => is_boundary(byte),
        }
    }
}

struct Pattern {
    text: Vec<u8>,
    conversion: Conversion,
}

/// What the rewriter changed so far, for the announcer: it must tell VS
/// Code a port in the form VS Code asked for, whatever the server now
/// listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversions {
    pub count: usize,
    /// An exec server was moved to a socket: its `listeningOn` must read
    /// `HOST:PORT` again.
    pub exec_server: bool,
}

/// Streaming, sans-IO rewriter for the bytes VS Code sends to the shell.
///
/// VS Code waits for output after writing its script, so nothing may linger
/// here: only a suffix that could still become a pattern is held back (at
/// most one pattern's length), and the output does not depend on how the
/// input is split into reads.
pub struct BindRewriter {
    patterns: Vec<Pattern>,
    sockets: Option<SocketNames>,
    /// Always a prefix of some pattern, possibly a whole one.
    held: Vec<u8>,
    /// Set while `held` is a whole pattern whose following byte decides
    /// whether it was the flag or only the start of a longer word.
    complete: Option<usize>,
    sockets_made: u32,
    conversions: Conversions,
}

impl BindRewriter {
    /// Without `sockets` (no runtime directory), only the exec server's own
    /// socket mode is used; other servers stay on loopback.
    pub fn new(sockets: Option<SocketNames>) -> BindRewriter {
        let mut patterns = vec![Pattern { text: b"--on-port".to_vec(), conversion: Conversion::ExecPort }];
        if sockets.is_some() {
            for separator in ['=', ' '] {
                patterns.push(Pattern {
                    text: format!("--port{separator}0").into_bytes(),
                    conversion: Conversion::LegacyPort,
                });
                for loopback in ["127.0.0.1", "localhost"] {
                    patterns.push(Pattern {
                        text: format!("--bind-addr{separator}{loopback}").into_bytes(),
                        conversion: Conversion::CodeServer,
                    });
                }
            }
        }
        BindRewriter {
            patterns,
            sockets,
            held: Vec::new(),
            complete: None,
            sockets_made: 0,
            conversions: Conversions::default(),
        }
    }

    pub fn conversions(&self) -> &Conversions {
        &self.conversions
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
            if self.patterns[index].conversion.ends_at(byte) {
                self.rewrite(index, out);
                self.held.clear();
                // The byte after a pattern may start the next one ('-' never
                // ends one, so it cannot be here; anything else is data).
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
        let mut socket = || {
            self.sockets_made += 1;
            let path = self.sockets.as_ref().map(|s| s.path(self.sockets_made)).unwrap_or_default();
            path.to_string_lossy().into_owned()
        };
        let replacement = match pattern.conversion {
            Conversion::LegacyPort => format!("--socket-path={}", socket()).into_bytes(),
            Conversion::ExecPort => b"--on-socket".to_vec(),
            Conversion::CodeServer => {
                let mut bytes = format!("--socket {} ", socket()).into_bytes();
                bytes.extend_from_slice(&self.patterns[index].text);
                bytes
            }
        };
        let from = String::from_utf8_lossy(&self.patterns[index].text);
        tracing::info!(
            "rewrote `{from}` to `{}` in the launch script: the server listens where only this session reaches it",
            String::from_utf8_lossy(&replacement)
        );
        out.extend_from_slice(&replacement);
        self.held.clear();
        self.conversions.count += 1;
        self.conversions.exec_server |= self.patterns[index].conversion == Conversion::ExecPort;
    }
}

/// `0.5`, `127.0.0.10` or `localhost.example` are other values; `:` starts a port.
fn is_boundary(byte: u8) -> bool {
    !(byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names() -> SocketNames {
        SocketNames::new(Path::new("/run/vscode-slurm/42"), 7).unwrap()
    }

    fn rewrite_with(sockets: Option<SocketNames>, input: &[u8]) -> Vec<u8> {
        let mut rewriter = BindRewriter::new(sockets);
        let mut out = rewriter.feed(input);
        out.extend(rewriter.finish());
        out
    }

    fn rewrite(input: &str) -> String {
        String::from_utf8(rewrite_with(Some(names()), input.as_bytes())).unwrap()
    }

    fn chunked(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut rewriter = BindRewriter::new(Some(names()));
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
    fn real_launch_lines_move_to_private_sockets() {
        let legacy = "\"$VSCH_SERVER_SCRIPT\" --start-server --host=127.0.0.1 --accept-server-license-terms \
                      --enable-remote-auto-shutdown --port=0 &> \"$SERVER_LOGFILE\" &\n";
        assert_eq!(
            rewrite(legacy),
            legacy.replace("--port=0", "--socket-path=/run/vscode-slurm/42/server-7-1.sock"),
            "the host flag stays loopback"
        );
        assert_eq!(
            rewrite("LISTEN_ARGS=\"--on-host=127.0.0.1 --on-port\"\n"),
            "LISTEN_ARGS=\"--on-host=127.0.0.1 --on-socket\"\n"
        );
        assert_eq!(
            rewrite("\"$CODE_SERVER\" --bind-addr 127.0.0.1:0 --auth none"),
            "\"$CODE_SERVER\" --socket /run/vscode-slurm/42/server-7-1.sock --bind-addr 127.0.0.1:0 --auth none"
        );
        assert_eq!(
            rewrite("--port 0 --bind-addr=localhost --port=0\n"),
            "--socket-path=/run/vscode-slurm/42/server-7-1.sock \
             --socket /run/vscode-slurm/42/server-7-2.sock --bind-addr=localhost \
             --socket-path=/run/vscode-slurm/42/server-7-3.sock\n"
        );
    }

    #[test]
    fn near_misses_are_untouched() {
        for input in [
            "--port=01",
            "--port=0.5",
            "--port=80",
            "--ports=0",
            "--on-port=8080",
            "--on-port:1",
            "--on-ports",
            "--on-port-x",
            "--bind-addr=127.0.0.10:80",
            "--bind-addr=localhostx",
            "--bind-addr=10.0.0.1:80",
            "--host=127.0.0.1",
            "-port=0",
        ] {
            assert_eq!(rewrite(input), input, "{input}");
        }
    }

    #[test]
    fn without_a_runtime_dir_only_the_exec_server_moves() {
        let input = b"--port=0 --bind-addr 127.0.0.1:0 --on-port\n";
        let out = rewrite_with(None, input);
        assert_eq!(out, b"--port=0 --bind-addr 127.0.0.1:0 --on-socket\n");
    }

    #[test]
    fn conversions_are_counted_and_the_exec_server_remembered() {
        let mut rewriter = BindRewriter::new(Some(names()));
        rewriter.feed(b"--port=0 --port=00 ");
        assert_eq!(rewriter.conversions(), &Conversions { count: 1, exec_server: false });
        rewriter.feed(b"--on-port");
        rewriter.finish();
        assert_eq!(rewriter.conversions(), &Conversions { count: 2, exec_server: true });
    }

    #[test]
    fn socket_names_are_plain_short_and_recognised() {
        let n = names();
        assert!(n.is_ours(&n.path(3)));
        assert!(!n.is_ours(Path::new("/run/vscode-slurm/42/server-8-3.sock")));
        assert!(!n.is_ours(Path::new("/tmp/server-7-3.sock")));
        assert_eq!(SocketNames::new(Path::new("/run/with space"), 1), None);
        assert_eq!(SocketNames::new(Path::new("/run/$(x)"), 1), None);
        assert_eq!(SocketNames::new(Path::new("relative"), 1), None);
        assert_eq!(SocketNames::new(&Path::new("/").join("d".repeat(90)), 1), None);
    }

    #[test]
    fn only_a_possible_pattern_start_is_held() {
        let mut rewriter = BindRewriter::new(Some(names()));
        assert_eq!(rewriter.feed(b"abc --po"), b"abc ");
        assert_eq!(rewriter.held, b"--po");
        assert_eq!(rewriter.feed(b"x"), b"--pox");
        assert!(rewriter.held.is_empty());
        assert_eq!(rewriter.feed(b"--port=0"), b"");
        assert_eq!(rewriter.feed(b" "), b"--socket-path=/run/vscode-slurm/42/server-7-1.sock ");
    }

    #[test]
    fn huge_input_without_newline_keeps_the_buffer_small() {
        let mut rewriter = BindRewriter::new(Some(names()));
        let chunk = b"x --port --on-portx --bind-addr=127.0.0.1 ".repeat(200);
        let mut total = 0;
        for _ in 0..64 {
            total += rewriter.feed(&chunk).len();
            assert!(rewriter.held_len() <= "--bind-addr=localhost".len());
        }
        total += rewriter.finish().len();
        assert!(rewriter.conversions().count >= 64 * 200);
        assert!(total > 64 * chunk.len());
    }

    fn script_strategy() -> impl Strategy<Value = Vec<u8>> {
        crate::test_streams::made_of("--port=0|--port 0|--on-port|--bind-addr=127.0.0.1:|--bind-addr localhost|--host=127.0.0.1|127.0.0.1|-|--| |=|0|\n")
    }

    /// Reference: the same rules as a plain scan over the whole input.
    fn reference(input: &[u8]) -> Vec<u8> {
        let rewriter = BindRewriter::new(Some(names()));
        let mut out = Vec::new();
        let mut made = 0;
        let mut i = 0;
        'outer: while i < input.len() {
            for pattern in &rewriter.patterns {
                let end = i + pattern.text.len();
                if input[i..].starts_with(&pattern.text)
                    && input.get(end).is_none_or(|&b| pattern.conversion.ends_at(b))
                {
                    let text = String::from_utf8_lossy(&pattern.text).into_owned();
                    let mut next = || {
                        made += 1;
                        names().path(made).display().to_string()
                    };
                    let replacement = match pattern.conversion {
                        Conversion::LegacyPort => format!("--socket-path={}", next()),
                        Conversion::ExecPort => "--on-socket".to_owned(),
                        Conversion::CodeServer => format!("--socket {} {text}", next()),
                    };
                    out.extend_from_slice(replacement.as_bytes());
                    i = end;
                    continue 'outer;
                }
            }
            out.push(input[i]);
            i += 1;
        }
        out
    }

    proptest! {
        #[test]
        fn any_split_gives_the_reference_output(
            input in script_strategy(),
            raw_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let expected = reference(&input);
            prop_assert_eq!(&rewrite_with(Some(names()), &input), &expected);
            let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(&chunked(&input, &cuts), &expected);
            let every_byte: Vec<usize> = (1..input.len()).collect();
            prop_assert_eq!(&chunked(&input, &every_byte), &expected);
        }

        #[test]
        fn bytes_without_patterns_pass_unchanged(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assume!(!input.windows(2).any(|w| w == b"--"));
            prop_assert_eq!(rewrite_with(Some(names()), &input), input);
        }
    }
}
