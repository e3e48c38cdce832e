//! What a session's helper and the job's keeper say over the keeper's unix
//! socket, defined once for both ends.
//!
//! The helper sends one spawn request: a header carrying the three pipe ends
//! the launch script's shell gets as stdin, stdout and stderr (SCM_RIGHTS),
//! then the program, working directory and environment. The keeper answers
//! with text lines: `pid N` once the shell runs, `exit CODE` when it ends,
//! and `notice TEXT` whenever the user must be told something (a time-limit
//! warning). The connection staying open is what counts as "attached".

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The socket's name inside the job's runtime directory.
pub const SOCKET_NAME: &str = "keeper.sock";
const MAGIC: &[u8; 4] = b"VSK1";
/// Environments are a few KiB; the bound keeps a confused peer from making
/// the keeper allocate without limit.
pub const MAX_REQUEST: usize = 1 << 20;

/// What the keeper needs to start the launch script's shell for a session.
#[derive(Debug, PartialEq, Eq)]
pub struct SpawnRequest {
    pub program: PathBuf,
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

fn encode_payload(request: &SpawnRequest) -> io::Result<Vec<u8>> {
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
    field(request.program.as_os_str().as_bytes())?;
    field(request.cwd.as_os_str().as_bytes())?;
    for (key, value) in &request.env {
        field(format!("{key}={value}").as_bytes())?;
    }
    if payload.len() > MAX_REQUEST {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the environment is too large to pass on"));
    }
    Ok(payload)
}

pub fn decode_payload(payload: &[u8]) -> Option<SpawnRequest> {
    use std::os::unix::ffi::OsStrExt;
    let body = payload.strip_suffix(&[0])?;
    let mut fields = body.split(|&b| b == 0);
    let program = PathBuf::from(std::ffi::OsStr::from_bytes(fields.next()?));
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
    Some(SpawnRequest { program, cwd, env })
}

/// The helper's side: sends the request with the shell's three stream ends.
pub fn send_spawn(socket: &mut UnixStream, request: &SpawnRequest, fds: [&OwnedFd; 3]) -> io::Result<()> {
    let payload = encode_payload(request)?;
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&u32::try_from(payload.len()).map_err(io::Error::other)?.to_le_bytes());
    let raw: [RawFd; 3] = fds.map(AsRawFd::as_raw_fd);
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&header)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )?;
    if sent != header.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "the keeper took part of the request header"));
    }
    socket.write_all(&payload)
}

/// The keeper's side of the header: the payload length and the three
/// descriptors, owned from here on. Called when the socket is readable.
pub fn recv_header(fd: RawFd) -> io::Result<(usize, [OwnedFd; 3])> {
    let mut header = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(&mut header)];
    let message = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed these descriptors in our table for
            // this message; nobody else owns them, and each is wrapped once.
            received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let bytes = message.bytes;
    if message.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors in the spawn request"));
    }
    if bytes != header.len() || &header[..4] != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a spawn request"));
    }
    let fds: [OwnedFd; 3] = received
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a spawn request needs three descriptors"))?;
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_REQUEST {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the spawn request is too large"));
    }
    Ok((len, fds))
}

/// Reads one answer line from a blocking stream (the helper's handshake).
pub fn read_answer(socket: &mut UnixStream) -> io::Result<Option<Answer>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        if socket.read(&mut byte)? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(Answer::parse(&String::from_utf8_lossy(&line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        let request = SpawnRequest {
            program: "/bin/bash".into(),
            cwd: "/home/alice".into(),
            env: vec![("HOME".into(), "/home/alice".into()), ("EMPTY".into(), String::new())],
        };
        assert_eq!(decode_payload(&encode_payload(&request).unwrap()), Some(request));
        for answer in [Answer::Pid(42), Answer::Exit(-1), Answer::Notice("job 7 ends in 2 minutes".into())] {
            assert_eq!(Answer::parse(&answer.line()), Some(answer));
        }
        assert_eq!(Answer::parse(&Answer::Notice("a\nb".into()).line()), Some(Answer::Notice("a b".into())));
        assert_eq!(Answer::parse("pid x\n"), None);
        assert_eq!(Answer::parse("hello\n"), None);
    }

    #[test]
    fn bad_payloads_are_refused() {
        assert_eq!(decode_payload(b""), None);
        assert_eq!(decode_payload(b"bash\0/home\0"), None, "relative program");
        assert_eq!(decode_payload(b"/bin/sh\0/\0NOEQUALS\0"), None);
        assert_eq!(decode_payload(b"/bin/sh\0/\0=x\0"), None);
        assert!(decode_payload(b"/bin/sh\0/\0A=b=c\0").is_some());
    }

    #[test]
    fn descriptors_travel_with_the_header() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..3).map(|_| nix::unistd::pipe().unwrap()).collect();
        let request = SpawnRequest { program: "/bin/sh".into(), cwd: "/".into(), env: vec![] };
        send_spawn(&mut client, &request, [&pipes[0].0, &pipes[1].1, &pipes[2].1]).unwrap();
        let (len, fds) = recv_header(server.as_raw_fd()).unwrap();
        let mut payload = vec![0u8; len];
        (&server).read_exact(&mut payload).unwrap();
        assert_eq!(decode_payload(&payload), Some(request));
        // The received write end of pipe 1 really is that pipe.
        nix::unistd::write(&fds[1], b"x").unwrap();
        let mut byte = [0u8; 1];
        nix::unistd::read(pipes[1].0.as_raw_fd(), &mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}
