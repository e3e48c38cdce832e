//! Zero-copy relaying between two sockets (TCP or unix) with splice(2), for
//! the shim's relay and the helper's door alike.
//!
//! Each direction moves bytes socket → pipe → socket inside the kernel: the
//! pages the network stack received are handed to the pipe and from there to
//! the other socket, never copied through a buffer of ours. A copy through
//! user space costs two copies per byte on top of the second TCP hop; here
//! that is about four times the relay's CPU per GiB (see `cargo bench -p
//! vscode-shim --bench relay`).
//!
//! The sockets stay tokio's: readiness comes from its event loop (no
//! polling, no timers), and each splice is a nonblocking call made only when
//! the socket is ready, inside tokio's `async_io`, which clears the
//! readiness and waits again when the call would block.
//!
//! What the relay guarantees about the connection:
//! - one side's EOF becomes `shutdown(SHUT_WR)` on the other (half-close is
//!   passed through), and the relay ends when both directions have;
//! - an error on either side (a reset, a failed write) ends the relay at
//!   once, and the caller closes both sockets by dropping them, so no
//!   connection outlives its partner.
//!
//! Kernels or sockets that cannot splice answer EINVAL before anything
//! moves; the connection is then relayed by [`copy_bidirectional`] instead,
//! and so are all later ones (said once in the log).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::{copy_bidirectional, AsyncRead, AsyncWrite, Interest, Ready};
use tokio::net::{TcpStream, UnixStream};

/// A tokio socket splice can drive: tokio's TCP and unix streams offer the
/// same readiness calls, but no trait of tokio's names them.
pub trait Socket: AsRawFd + AsyncRead + AsyncWrite + Unpin {
    fn io<R>(
        &self,
        interest: Interest,
        call: impl FnMut() -> io::Result<R>,
    ) -> impl Future<Output = io::Result<R>>;
    fn ready_for(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>>;
    fn pending_error(&self) -> io::Result<Option<io::Error>>;
}

macro_rules! socket {
    ($type:ty) => {
        impl Socket for $type {
            fn io<R>(
                &self,
                interest: Interest,
                call: impl FnMut() -> io::Result<R>,
            ) -> impl Future<Output = io::Result<R>> {
                self.async_io(interest, call)
            }
            fn ready_for(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> {
                self.ready(interest)
            }
            fn pending_error(&self) -> io::Result<Option<io::Error>> {
                self.take_error()
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

/// What a direction's pipe grows to once it carries bulk data (a splice
/// that fills half the pipe): fewer, larger splices and wake-ups per byte,
/// about half the relay's CPU per GiB of a 64 KiB pipe here. 1 MiB is the
/// most an unprivileged process may ask for (`fs.pipe-max-size`).
///
/// Pipes start at the kernel's default (64 KiB) because pipe space counts
/// against a per-user budget (`fs.pipe-user-pages-soft`, 64 MiB) that all
/// of a user's processes on the login node share, and most connections only
/// ever carry small messages. Over budget, growing fails and the pipe keeps
/// working at its size.
pub const BULK_PIPE_SIZE: usize = 1 << 20;

/// Set once splice has been seen to be unsupported; later connections go
/// straight to the user-space copy.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
/// Set once a pipe could not be made (out of descriptors, say), so the log
/// says it once, not per connection.
static NO_PIPES_LOGGED: AtomicBool = AtomicBool::new(false);

/// Relays between `client` and `server` until both directions have ended
/// (`Ok` with the bytes moved up and down) or either side fails (`Err`).
/// Either way the caller drops, and so closes, both sockets.
pub async fn relay<C: Socket, S: Socket>(client: &mut C, server: &mut S) -> io::Result<(u64, u64)> {
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return copy_bidirectional(client, server).await;
    }
    let pipes = Pipe::new().and_then(|up| Ok((up, Pipe::new()?)));
    let (up_pipe, down_pipe) = match pipes {
        Ok(pipes) => pipes,
        Err(e) => {
            if !NO_PIPES_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!("cannot make pipes for the relay ({e}); copying through user space instead");
            }
            return copy_bidirectional(client, server).await;
        }
    };
    // Shared by both directions; an atomic only because tokio::spawn wants Send.
    let moved = AtomicBool::new(false);
    let result = tokio::select! {
        done = async {
            tokio::try_join!(pump(client, server, up_pipe, &moved), pump(server, client, down_pipe, &moved))
        } => done,
        e = first_error(client, server) => Err(e),
    };
    match result {
        Ok(counts) => Ok(counts),
        // EINVAL before a single byte or EOF moved: splice does not work on
        // these sockets (not a property of this connection's data).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !moved.load(Ordering::Relaxed) => {
            if !UNSUPPORTED.swap(true, Ordering::Relaxed) {
                tracing::warn!("splice(2) is not supported here ({e}); relaying through user-space copies");
            }
            copy_bidirectional(client, server).await
        }
        Err(e) => Err(e),
    }
}

/// One direction: `from` → pipe → `to`, until `from` reaches EOF, which is
/// passed on as a half-close of `to`. Returns the bytes moved.
///
/// The pipe is always empty when this splices into it, so a splice into it
/// that would block means `from` has nothing to read (not that the pipe is
/// full), which is what clearing the read readiness must mean.
async fn pump<F: Socket, T: Socket>(from: &F, to: &T, mut pipe: Pipe, moved: &AtomicBool) -> io::Result<u64> {
    let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
    let mut grown = false;
    let mut total = 0u64;
    loop {
        let n = from.io(Interest::READABLE, || splice(from_fd, pipe.write_fd(), pipe.capacity)).await?;
        moved.store(true, Ordering::Relaxed);
        if n == 0 {
            shutdown(to_fd, Shutdown::Write).map_err(io::Error::from)?;
            return Ok(total);
        }
        if !grown && n * 2 >= pipe.capacity {
            grown = true;
            pipe.grow(BULK_PIPE_SIZE);
        }
        let mut left = n;
        while left > 0 {
            let sent = to.io(Interest::WRITABLE, || splice(pipe.read_fd(), to_fd, left)).await?;
            if sent == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= sent;
        }
        total += n as u64;
    }
}

/// Ends the relay when either socket reports an error (a reset, say), even
/// while neither direction is reading from it: after a half-close, or while
/// the direction that reads it waits to write. Never returns otherwise.
async fn first_error<C: Socket, S: Socket>(client: &C, server: &S) -> io::Error {
    let (error, ready) = tokio::select! {
        ready = client.ready_for(Interest::ERROR) => (client.pending_error(), ready),
        ready = server.ready_for(Interest::ERROR) => (server.pending_error(), ready),
    };
    if let Err(e) = ready {
        return e;
    }
    match error {
        Ok(Some(e)) | Err(e) => e,
        // A pump took the error first; it ends the relay all the same.
        Ok(None) => io::Error::new(io::ErrorKind::ConnectionReset, "the connection failed"),
    }
}

// ---------------------------------------------------------------------------
// The unsafe layer: three system calls on descriptors this module owns or
// borrows for the duration of the call. Nothing else here is unsafe.

/// An anonymous pipe, both ends nonblocking and close-on-exec.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it holds at most, as the kernel says.
    capacity: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [-1 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given,
        // which has room for exactly two; on failure it writes nothing.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success both descriptors are fresh and owned by no one
        // else; OwnedFd closes each exactly once.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_GETPIPE_SZ takes no argument and touches no memory of
        // ours; the descriptor is open for the duration of the call.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let capacity = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
        Ok(Pipe { read, write, capacity })
    }

    /// Best effort: a pipe that cannot grow (the user's pipe budget is
    /// spent) works at its size, only with more system calls per byte.
    fn grow(&mut self, size: usize) {
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours;
        // the descriptor is open for the duration of the call.
        let got = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        if let Ok(got) = usize::try_from(got) {
            self.capacity = got;
        }
    }

    fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

/// Moves up to `len` bytes from `from` to `to`, one of which must be a pipe,
/// without copying them through user space. Returns 0 at EOF of `from`, and
/// `WouldBlock` when it would have to wait (both flags below and the
/// sockets' own O_NONBLOCK make sure it never does).
///
/// SPLICE_F_MOVE asks the kernel to move pages instead of copying where it
/// can; SPLICE_F_NONBLOCK makes the pipe end nonblocking for this call.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets mean "use and advance the descriptors' own
    // positions" (required for pipes and sockets), so the kernel reads and
    // writes no memory of ours; the descriptors are borrowed from owners
    // that outlive this call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    // A negative count is the only failure; anything else fits in usize.
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    /// Bounds every wait in these tests; none is a timing assertion.
    const BOUND: Duration = Duration::from_secs(20);

    /// A connected pair of sockets: (the end we keep, the end the relay gets).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, accepted) = tokio::join!(connect, listener.accept());
        (ours.unwrap(), accepted.unwrap().0)
    }

    /// client ⇄ [relay] ⇄ server, the relay running as its own task.
    async fn relayed() -> (TcpStream, TcpStream, tokio::task::JoinHandle<io::Result<(u64, u64)>>) {
        let (client, mut relay_client) = socket_pair().await;
        let (mut relay_server, server) = socket_pair().await;
        let task = tokio::spawn(async move { relay(&mut relay_client, &mut relay_server).await });
        (client, server, task)
    }

    #[tokio::test]
    async fn both_directions_at_once_arrive_exactly() {
        // Edge cases, then random sizes up to 6 MiB (the seed is in any failure message).
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        let random = vscode_slurm_protocol::testing::pseudo_random(16, seed);
        let size =
            |i: usize| u32::from_le_bytes([random[i], random[i + 1], random[i + 2], 0]) as usize % (6 << 20);
        let sizes = [(0, 1), (1, 0), (65_537, 1_000_003), (size(0), size(4)), (size(8), size(12))];
        for (i, (up_len, down_len)) in sizes.into_iter().enumerate() {
            let (client, server, task) = relayed().await;
            let up = vscode_slurm_protocol::testing::pseudo_random(up_len, 1 + i as u64);
            let down = vscode_slurm_protocol::testing::pseudo_random(down_len, 100 + i as u64);
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let (sent_up, sent_down) = (up.clone(), down.clone());
            let exchange = async {
                tokio::join!(
                    async move {
                        client_write.write_all(&sent_up).await.unwrap();
                        client_write.shutdown().await.unwrap();
                    },
                    async move {
                        server_write.write_all(&sent_down).await.unwrap();
                        server_write.shutdown().await.unwrap();
                    },
                    async move {
                        let mut got = Vec::new();
                        server_read.read_to_end(&mut got).await.unwrap();
                        got
                    },
                    async move {
                        let mut got = Vec::new();
                        client_read.read_to_end(&mut got).await.unwrap();
                        got
                    },
                )
            };
            let (_, _, got_up, got_down) = timeout(BOUND, exchange).await.expect("exchange finished");
            assert_eq!(got_up.len(), up.len(), "seed {seed}");
            assert!(got_up == up, "upstream bytes differ ({up_len} bytes, seed {seed})");
            assert_eq!(got_down.len(), down.len(), "seed {seed}");
            assert!(got_down == down, "downstream bytes differ ({down_len} bytes, seed {seed})");
            let counts = timeout(BOUND, task).await.expect("relay ended").unwrap().unwrap();
            assert_eq!(counts, (up_len as u64, down_len as u64));
        }
    }

    #[tokio::test]
    async fn half_close_passes_through_and_the_other_way_stays_open() {
        let (mut client, mut server, task) = relayed().await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        timeout(BOUND, server.read_to_end(&mut got)).await.expect("server saw EOF").unwrap();
        assert_eq!(got, b"request");
        // The server can still answer after the client's half-close.
        server.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        timeout(BOUND, client.read_exact(&mut answer)).await.expect("answer arrived").unwrap();
        assert_eq!(&answer, b"answer");
        assert!(!task.is_finished());
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        timeout(BOUND, client.read_to_end(&mut rest)).await.expect("client saw EOF").unwrap();
        assert!(rest.is_empty());
        assert_eq!(timeout(BOUND, task).await.expect("relay ended").unwrap().unwrap(), (7, 6));
    }

    #[tokio::test]
    async fn a_reset_on_one_side_closes_the_other() {
        // Client resets (close with unread data sends RST) while the server is idle.
        let (client, mut server, task) = relayed().await;
        let mut server_probe = [0u8; 1];
        client.set_zero_linger().unwrap();
        drop(client);
        let seen = timeout(BOUND, server.read(&mut server_probe)).await.expect("server side closed");
        assert!(matches!(seen, Ok(0) | Err(_)), "{seen:?}");
        assert!(timeout(BOUND, task).await.expect("relay ended").unwrap().is_err());

        // The client half-closes, then resets: the relay only reads the
        // server by then, so only the error watch can notice.
        let (mut client, mut server, task) = relayed().await;
        client.shutdown().await.unwrap();
        let mut eof = Vec::new();
        timeout(BOUND, server.read_to_end(&mut eof)).await.expect("server saw EOF").unwrap();
        client.set_zero_linger().unwrap();
        drop(client);
        assert!(timeout(BOUND, task).await.expect("relay ended").unwrap().is_err());
        // The relay closed its side: the server's writes soon fail.
        let failed = timeout(BOUND, async {
            loop {
                if server.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        failed.await.expect("a write to the closed connection failed");
    }

    #[test]
    fn pipes_start_at_the_default_and_grow() {
        let mut pipe = Pipe::new().unwrap();
        assert!(pipe.capacity >= 4096, "{}", pipe.capacity);
        pipe.grow(BULK_PIPE_SIZE);
        // SAFETY: F_GETPIPE_SZ only returns a number.
        let size = unsafe { libc::fcntl(pipe.read_fd(), libc::F_GETPIPE_SZ) };
        assert_eq!(size as usize, pipe.capacity);
        assert_eq!(pipe.capacity, BULK_PIPE_SIZE);
    }

    #[test]
    fn splice_between_two_pipes_moves_bytes() {
        let (a, b) = (Pipe::new().unwrap(), Pipe::new().unwrap());
        let written = nix::unistd::write(&a.write, b"hello").unwrap();
        assert_eq!(written, 5);
        assert_eq!(splice(a.read_fd(), b.write_fd(), 100).unwrap(), 5);
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(b.read_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        // Nothing left: would block, not EOF (the write end is still open).
        assert_eq!(splice(a.read_fd(), b.write_fd(), 100).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let Pipe { read, write, .. } = a;
        drop(write);
        assert_eq!(splice(read.as_raw_fd(), b.write_fd(), 100).unwrap(), 0);
    }
}
