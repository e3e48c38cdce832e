//! Both ends of the door handshake over a live connection, bounded by
//! [`HANDSHAKE_TIMEOUT`] (relay) and [`PROOF_TIMEOUT`] (door). What is said is defined in
//! `vscode_slurm_protocol::door`; this only moves it.

use std::fmt;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use vscode_slurm_protocol::door::{
    self, Challenge, DoorKey, Status, ANSWER_LEN, HANDSHAKE_TIMEOUT, HELLO_LEN, PROOF_MESSAGE_LEN,
    PROOF_TIMEOUT,
};

/// Why a handshake failed, for one log line.
#[derive(Debug)]
pub enum Failure {
    /// The peer does not speak the door's protocol (or sent nothing in time).
    NotADoor,
    /// The peer spoke it but did not prove the session's key.
    WrongProof,
    /// The other end did not finish its part in time.
    TimedOut,
    Io(io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotADoor => f.write_str("it does not speak the door protocol"),
            Failure::WrongProof => f.write_str("it did not prove the session's key"),
            Failure::TimedOut => f.write_str("the handshake did not finish in time"),
            Failure::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Failure::NotADoor
        } else {
            Failure::Io(e)
        }
    }
}

/// The relay's side: proves the key to the door at the other end of
/// `stream` and checks the door's proof. Returns what the door did with the
/// connection; with [`Status::Forwarding`] the stream now reaches the server.
pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &DoorKey,
) -> Result<Status, Failure> {
    timeout(HANDSHAKE_TIMEOUT, async {
        let mut hello = [0u8; HELLO_LEN];
        stream.read_exact(&mut hello).await?;
        let door_challenge = door::parse_hello(&hello).ok_or(Failure::NotADoor)?;
        let relay_challenge = door::challenge().map_err(Failure::Io)?;
        stream.write_all(&door::relay_proof(key, &door_challenge, &relay_challenge)).await?;
        let mut answer = [0u8; ANSWER_LEN];
        stream.read_exact(&mut answer).await.map_err(|e| match e.kind() {
            // A door that closes instead of answering refused our proof.
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Failure::WrongProof,
            _ => Failure::Io(e),
        })?;
        door::check_door_answer(key, &relay_challenge, &door_challenge, &answer).ok_or(Failure::WrongProof)
    })
    .await
    .unwrap_or(Err(Failure::TimedOut))
}

/// The door's side, first half: greets the peer and checks its proof.
/// Nothing about the server is said or done before this succeeds.
pub async fn admit<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &DoorKey,
) -> Result<Admitted, Failure> {
    let door_challenge = door::challenge().map_err(Failure::Io)?;
    timeout(PROOF_TIMEOUT, async {
        stream.write_all(&door::hello(&door_challenge)).await?;
        let mut proof = [0u8; PROOF_MESSAGE_LEN];
        stream.read_exact(&mut proof).await?;
        let relay_challenge =
            door::check_relay_proof(key, &door_challenge, &proof).ok_or(Failure::WrongProof)?;
        Ok(Admitted { door_challenge, relay_challenge })
    })
    .await
    .unwrap_or(Err(Failure::TimedOut))
}

/// A relay that proved the key, waiting for the door's answer.
pub struct Admitted {
    door_challenge: Challenge,
    relay_challenge: Challenge,
}

impl Admitted {
    /// The door's side, second half: proves the key back, with what became
    /// of the connection to the server.
    pub async fn answer<S: AsyncWrite + Unpin>(
        self,
        stream: &mut S,
        key: &DoorKey,
        status: Status,
    ) -> io::Result<()> {
        let answer = door::door_answer(key, &self.relay_challenge, &self.door_challenge, status);
        timeout(HANDSHAKE_TIMEOUT, stream.write_all(&answer))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "the relay stopped reading")))
    }
}
