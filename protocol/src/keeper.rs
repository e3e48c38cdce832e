//! What a session's helper and the job's keeper say over the keeper's unix
//! socket.
//!
//! The helper sends one spawn request: a header (this module's [`header`])
//! that carries the three pipe ends the launch script's shell gets as stdin,
//! stdout and stderr (SCM_RIGHTS, passed by the helper's `keeper::wire`),
//! then the program, its arguments, working directory and environment
//! ([`encode_payload`]).
//! The keeper answers with text lines ([`Answer`]): `pid N` once the shell
//! runs, `exit CODE` when it ends, and `notice TEXT` whenever the user must
//! be told something (a time-limit warning). The connection staying open is
//! what counts as "attached".

use std::io;
use std::path::PathBuf;

/// The socket's name inside the job's runtime directory.
pub const SOCKET_NAME: &str = "keeper.sock";
/// Starts a spawn request's header: which payload layout follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `VSK1`: program, working directory, environment. What a keeper
    /// started before program arguments existed understands, so a request
    /// without arguments (a launch script's shell) is still sent this way:
    /// a package upgrade must not lock new windows out of a running job.
    V1,
    /// `VSK2`: program, argument count, arguments, working directory,
    /// environment (a proxy window's sshd).
    V2,
}

impl Version {
    pub const fn magic(self) -> &'static [u8; 4] {
        match self {
            Version::V1 => b"VSK1",
            Version::V2 => b"VSK2",
        }
    }

    /// The oldest layout that can carry `request`.
    pub fn for_request(request: &SpawnRequest) -> Version {
        if request.args.is_empty() {
            Version::V1
        } else {
            Version::V2
        }
    }
}
/// The header: the version's magic and the payload's length (little-endian u32).
pub const HEADER_LEN: usize = 8;
/// A proxy window's sshd takes a handful.
pub const MAX_ARGS: usize = 16;
/// Environments are a few KiB; the bound keeps a confused peer from making
/// the keeper allocate without limit.
pub const MAX_REQUEST: usize = 1 << 20;

/// What the keeper needs to start the launch script's shell for a session.
#[derive(Debug, PartialEq, Eq)]
pub struct SpawnRequest {
    pub program: PathBuf,
    /// After the program's name: none for a launch script's shell, sshd's
    /// for a proxy window.
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

/// The keeper's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Pid(u32),
    Exit(i32),
    Notice(String),
}

impl Answer {
    pub fn line(&self) -> String {
        match self {
            Answer::Pid(pid) => format!("pid {pid}\n"),
            Answer::Exit(code) => format!("exit {code}\n"),
            Answer::Notice(text) => {
                format!("notice {}\n", text.replace(|c: char| c.is_control(), " "))
            }
        }
    }

    pub fn parse(line: &str) -> Option<Answer> {
        let (word, rest) = line.trim_end_matches('\n').split_once(' ')?;
        match word {
            "pid" => rest.parse().ok().map(Answer::Pid),
            "exit" => rest.parse().ok().map(Answer::Exit),
            "notice" => Some(Answer::Notice(rest.to_owned())),
            _ => None,
        }
    }
}

/// The payload in the oldest layout that carries `request` (see [`Version`]).
pub fn encode_payload(request: &SpawnRequest) -> io::Result<(Version, Vec<u8>)> {
    let version = Version::for_request(request);
    let mut payload = Vec::new();
    let mut field = |bytes: &[u8]| -> io::Result<()> {
        if bytes.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the spawn request"));
        }
        payload.extend_from_slice(bytes);
        payload.push(0);
        Ok(())
    };
    use std::os::unix::ffi::OsStrExt;
    if request.args.len() > MAX_ARGS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many arguments in the spawn request"));
    }
    field(request.program.as_os_str().as_bytes())?;
    if version == Version::V2 {
        // The count first: an argument may hold '=' like an environment entry.
        field(request.args.len().to_string().as_bytes())?;
        for arg in &request.args {
            field(arg.as_bytes())?;
        }
    }
    field(request.cwd.as_os_str().as_bytes())?;
    for (key, value) in &request.env {
        field(format!("{key}={value}").as_bytes())?;
    }
    if payload.len() > MAX_REQUEST {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the environment is too large to pass on"));
    }
    Ok((version, payload))
}

pub fn decode_payload(version: Version, payload: &[u8]) -> Option<SpawnRequest> {
    use std::os::unix::ffi::OsStrExt;
    let body = payload.strip_suffix(&[0])?;
    let mut fields = body.split(|&b| b == 0);
    let program = PathBuf::from(std::ffi::OsStr::from_bytes(fields.next()?));
    let count: usize = match version {
        Version::V1 => 0,
        Version::V2 => std::str::from_utf8(fields.next()?).ok()?.parse().ok()?,
    };
    if count > MAX_ARGS {
        return None;
    }
    let args = (0..count)
        .map(|_| std::str::from_utf8(fields.next()?).ok().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    let cwd = PathBuf::from(std::ffi::OsStr::from_bytes(fields.next()?));
    if !program.is_absolute() || !cwd.is_absolute() {
        return None;
    }
    let env = fields
        .map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (key, value) = text.split_once('=')?;
            (!key.is_empty()).then(|| (key.to_owned(), value.to_owned()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SpawnRequest { program, args, cwd, env })
}

/// The header that goes with the descriptors: magic and payload length.
pub fn header(version: Version, payload_len: usize) -> io::Result<[u8; HEADER_LEN]> {
    let len = u32::try_from(payload_len).map_err(io::Error::other)?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(version.magic());
    header[4..].copy_from_slice(&len.to_le_bytes());
    Ok(header)
}

/// The payload length a header announces, if it is a spawn request's and
/// within [`MAX_REQUEST`].
pub fn parse_header(header: &[u8; HEADER_LEN]) -> Option<(Version, usize)> {
    let version = [Version::V1, Version::V2].into_iter().find(|v| &header[..4] == v.magic())?;
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    (len <= MAX_REQUEST).then_some((version, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_answers_and_headers_round_trip() {
        let request = SpawnRequest {
            program: "/bin/bash".into(),
            args: vec![],
            cwd: "/home/alice".into(),
            env: vec![("HOME".into(), "/home/alice".into()), ("EMPTY".into(), String::new())],
        };
        let (version, payload) = encode_payload(&request).unwrap();
        assert_eq!(version, Version::V1, "a shell's request is one an older keeper reads");
        assert_eq!(decode_payload(version, &payload), Some(request));
        let sshd = SpawnRequest {
            program: "/usr/sbin/sshd".into(),
            args: vec!["-i".into(), "-o".into(), "LogLevel=INFO".into()],
            cwd: "/".into(),
            env: vec![("A".into(), "b".into())],
        };
        let (version, payload) = encode_payload(&sshd).unwrap();
        assert_eq!(version, Version::V2);
        assert_eq!(decode_payload(version, &payload), Some(sshd));
        for answer in [Answer::Pid(42), Answer::Exit(-1), Answer::Notice("job 7 ends in 2 minutes".into())] {
            assert_eq!(Answer::parse(&answer.line()), Some(answer));
        }
        assert_eq!(Answer::parse(&Answer::Notice("a\nb".into()).line()), Some(Answer::Notice("a b".into())));
        assert_eq!(Answer::parse("pid x\n"), None);
        assert_eq!(Answer::parse("hello\n"), None);
        assert_eq!(parse_header(&header(Version::V1, 1234).unwrap()), Some((Version::V1, 1234)));
        assert_eq!(parse_header(&header(Version::V2, 1234).unwrap()), Some((Version::V2, 1234)));
        assert_eq!(parse_header(&header(Version::V2, MAX_REQUEST + 1).unwrap()), None);
        assert_eq!(parse_header(b"HTTP/1.0"), None);
    }

    #[test]
    fn bad_payloads_are_refused() {
        use Version::{V1, V2};
        assert_eq!(decode_payload(V1, b""), None);
        assert_eq!(decode_payload(V1, b"bash\0/home\0"), None, "relative program");
        assert_eq!(decode_payload(V1, b"/bin/sh\0/\0NOEQUALS\0"), None);
        assert_eq!(decode_payload(V1, b"/bin/sh\0/\0=x\0"), None);
        assert!(decode_payload(V1, b"/bin/sh\0/\0A=b=c\0").is_some());
        assert_eq!(decode_payload(V2, b"/bin/sh\x0099\0/\0"), None, "too many arguments");
        assert_eq!(decode_payload(V2, b"/bin/sh\x002\0-c\0"), None, "fewer arguments than counted");
        assert_eq!(decode_payload(V2, b"/bin/sh\0/\0"), None, "a V1 payload read as V2");
    }
}
