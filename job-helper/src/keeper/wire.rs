//! The keeper socket's transport: the spawn request's header travels with
//! the shell's three pipe ends (SCM_RIGHTS). What is said is defined in
//! `vscode_slurm_protocol::keeper`.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vscode_slurm_protocol::keeper::{self, encode_payload};
pub use vscode_slurm_protocol::keeper::{decode_payload, Answer, SpawnRequest, Version, SOCKET_NAME};

/// The helper's side: sends the request with the shell's three stream ends.
pub fn send_spawn(socket: &mut UnixStream, request: &SpawnRequest, fds: [&OwnedFd; 3]) -> io::Result<()> {
    let (version, payload) = encode_payload(request)?;
    let header = keeper::header(version, payload.len())?;
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

/// The keeper's side of the header: the payload's layout and length and the
/// three descriptors, owned from here on. Called when the socket is readable.
pub fn recv_header(fd: RawFd) -> io::Result<(Version, usize, [OwnedFd; 3])> {
    let mut header = [0u8; keeper::HEADER_LEN];
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
    let (version, len) = match keeper::parse_header(&header) {
        Some(parsed) if bytes == header.len() => parsed,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "not a spawn request, or too large")),
    };
    let fds: [OwnedFd; 3] = received
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a spawn request needs three descriptors"))?;
    Ok((version, len, fds))
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
    fn descriptors_travel_with_the_header() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..3).map(|_| nix::unistd::pipe().unwrap()).collect();
        let request =
            SpawnRequest { program: "/bin/sh".into(), args: vec!["-e".into()], cwd: "/".into(), env: vec![] };
        send_spawn(&mut client, &request, [&pipes[0].0, &pipes[1].1, &pipes[2].1]).unwrap();
        let (version, len, fds) = recv_header(server.as_raw_fd()).unwrap();
        let mut payload = vec![0u8; len];
        (&server).read_exact(&mut payload).unwrap();
        assert_eq!(decode_payload(version, &payload), Some(request));
        // The received write end of pipe 1 really is that pipe.
        nix::unistd::write(&fds[1], b"x").unwrap();
        let mut byte = [0u8; 1];
        nix::unistd::read(pipes[1].0.as_raw_fd(), &mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}
