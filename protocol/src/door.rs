//! The door's handshake: how the shim's relay and the helper's door, the
//! only listener a session has on the cluster network, prove to each other
//! that they belong to the same session before a byte of VS Code's reaches
//! the server.
//!
//! Both ends hold the session's [`DoorKey`] (the shim makes it and hands it
//! to the step in its environment, like the nonce). Each end sends a fresh
//! random challenge and proves the key by an HMAC-SHA256 over both
//! challenges and its own role, so a recorded exchange is useless later (the
//! other side's challenge differs) and one side's proof never serves as the
//! other's (the role is part of what is signed).
//!
//! ```text
//! door  → relay   HELLO   "VSD1" door_challenge[32]
//! relay → door    PROOF   relay_challenge[32] HMAC(key, "relay" ‖ door_challenge ‖ relay_challenge)
//! door  → relay   ANSWER  status[1] HMAC(key, "door" ‖ relay_challenge ‖ door_challenge ‖ status)
//! ```
//!
//! The door answers only a relay that proved the key, and reaches the
//! server only after that; the status says what became of the connection
//! to the server. After `ANSWER` with [`Status::Forwarding`], the connection
//! carries VS Code's bytes unchanged.

use std::fmt;
use std::io::Read;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ProtocolError;

/// Starts the door's hello: a relay that connects to something else (a
/// stranger listening on the door's old port) finds out at once.
pub const MAGIC: &[u8; 4] = b"VSD1";
pub const CHALLENGE_LEN: usize = 32;
pub const PROOF_LEN: usize = 32;
pub const HELLO_LEN: usize = MAGIC.len() + CHALLENGE_LEN;
pub const PROOF_MESSAGE_LEN: usize = CHALLENGE_LEN + PROOF_LEN;
pub const ANSWER_LEN: usize = 1 + PROOF_LEN;
/// How long the relay waits for the door's part of the handshake (the door
/// may be busy with a burst: its backlog waits are in this too).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the door waits for the relay's proof. The relay answers the
/// hello within one round trip, so this is short: a stranger who opens
/// connections and sends nothing holds a door slot no longer than this.
pub const PROOF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

const RELAY_ROLE: &[u8] = b"vscode-slurm door handshake: relay";
const DOOR_ROLE: &[u8] = b"vscode-slurm door handshake: door";

/// The session's door key: 256 random bits as 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct DoorKey([u8; 32]);

impl DoorKey {
    pub fn generate() -> std::io::Result<DoorKey> {
        Ok(DoorKey(random()?))
    }

    /// Accepts only the shape [`DoorKey::as_hex`] makes, so a mangled
    /// environment is reported instead of weakening the key.
    pub fn parse(text: &str) -> Result<DoorKey, ProtocolError> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
            return Err(ProtocolError::MalformedDoorKey);
        }
        let mut key = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| ProtocolError::MalformedDoorKey)?;
            key[i] = u8::from_str_radix(text, 16).map_err(|_| ProtocolError::MalformedDoorKey)?;
        }
        Ok(DoorKey(key))
    }

    pub fn as_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, role: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes never fails.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(role);
        for part in parts {
            mac.update(part);
        }
        mac
    }
}

/// Keeps the key out of logs.
impl fmt::Debug for DoorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DoorKey(..)")
    }
}

pub type Challenge = [u8; CHALLENGE_LEN];

/// A fresh challenge from the kernel's random source.
pub fn challenge() -> std::io::Result<Challenge> {
    random()
}

fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// What the door did with the connection once the relay had proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected to the session's server: what follows is its bytes.
    Forwarding = 0,
    /// Nothing listens where the server was: it has exited.
    ServerGone = 1,
    /// Something listens there, but it is not the session's user's: the
    /// server has exited and someone else took its place.
    NotTheSessionsServer = 2,
    /// The server could not be reached for another reason (a time-out).
    Unreachable = 3,
}

impl Status {
    fn from_byte(byte: u8) -> Option<Status> {
        [Status::Forwarding, Status::ServerGone, Status::NotTheSessionsServer, Status::Unreachable]
            .into_iter()
            .find(|s| *s as u8 == byte)
    }
}

/// The door's first message.
pub fn hello(door_challenge: &Challenge) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    out[MAGIC.len()..].copy_from_slice(door_challenge);
    out
}

/// The door's challenge from its hello; `None` if the peer is not a door.
pub fn parse_hello(bytes: &[u8; HELLO_LEN]) -> Option<Challenge> {
    let (magic, rest) = bytes.split_at(MAGIC.len());
    if magic != MAGIC {
        return None;
    }
    rest.try_into().ok()
}

/// The relay's answer to a hello: its own challenge and its proof.
pub fn relay_proof(
    key: &DoorKey,
    door_challenge: &Challenge,
    relay_challenge: &Challenge,
) -> [u8; PROOF_MESSAGE_LEN] {
    let proof = key.mac(RELAY_ROLE, &[door_challenge, relay_challenge]).finalize().into_bytes();
    let mut out = [0u8; PROOF_MESSAGE_LEN];
    out[..CHALLENGE_LEN].copy_from_slice(relay_challenge);
    out[CHALLENGE_LEN..].copy_from_slice(&proof);
    out
}

/// The door's check of the relay's message: the relay's challenge if its
/// proof is right (compared in constant time).
pub fn check_relay_proof(
    key: &DoorKey,
    door_challenge: &Challenge,
    message: &[u8; PROOF_MESSAGE_LEN],
) -> Option<Challenge> {
    let (relay_challenge, proof) = message.split_at(CHALLENGE_LEN);
    let relay_challenge: Challenge = relay_challenge.try_into().ok()?;
    key.mac(RELAY_ROLE, &[door_challenge, &relay_challenge]).verify_slice(proof).ok()?;
    Some(relay_challenge)
}

/// The door's answer to a relay that proved itself.
pub fn door_answer(
    key: &DoorKey,
    relay_challenge: &Challenge,
    door_challenge: &Challenge,
    status: Status,
) -> [u8; ANSWER_LEN] {
    let status = [status as u8];
    let proof = key.mac(DOOR_ROLE, &[relay_challenge, door_challenge, &status]).finalize().into_bytes();
    let mut out = [0u8; ANSWER_LEN];
    out[0] = status[0];
    out[1..].copy_from_slice(&proof);
    out
}

/// The relay's check of the door's answer: its status if the door proved
/// the key for this exchange (compared in constant time).
pub fn check_door_answer(
    key: &DoorKey,
    relay_challenge: &Challenge,
    door_challenge: &Challenge,
    answer: &[u8; ANSWER_LEN],
) -> Option<Status> {
    let (status, proof) = answer.split_at(1);
    key.mac(DOOR_ROLE, &[relay_challenge, door_challenge, status]).verify_slice(proof).ok()?;
    Status::from_byte(status[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> DoorKey {
        DoorKey([byte; 32])
    }

    #[test]
    fn keys_round_trip_and_stay_out_of_logs() {
        let k = DoorKey::generate().unwrap();
        assert_eq!(DoorKey::parse(&k.as_hex()).unwrap(), k);
        assert_ne!(DoorKey::generate().unwrap(), k);
        assert_eq!(format!("{k:?}"), "DoorKey(..)");
        for bad in ["", "00", &"A".repeat(64), &"g".repeat(64), &"0".repeat(63), &"0".repeat(65)] {
            assert_eq!(DoorKey::parse(bad), Err(ProtocolError::MalformedDoorKey), "{bad}");
        }
    }

    #[test]
    fn an_honest_exchange_succeeds_both_ways() {
        let (door_c, relay_c) = (challenge().unwrap(), challenge().unwrap());
        let hello = hello(&door_c);
        assert_eq!(parse_hello(&hello), Some(door_c));
        let proof = relay_proof(&key(1), &door_c, &relay_c);
        assert_eq!(check_relay_proof(&key(1), &door_c, &proof), Some(relay_c));
        for status in
            [Status::Forwarding, Status::ServerGone, Status::NotTheSessionsServer, Status::Unreachable]
        {
            let answer = door_answer(&key(1), &relay_c, &door_c, status);
            assert_eq!(check_door_answer(&key(1), &relay_c, &door_c, &answer), Some(status));
        }
    }

    #[test]
    fn a_stranger_is_not_a_door() {
        let mut bytes = hello(&[7; CHALLENGE_LEN]);
        bytes[0] = b'H';
        assert_eq!(parse_hello(&bytes), None);
    }

    #[test]
    fn a_recorded_exchange_is_useless_with_fresh_challenges() {
        let (door_c, relay_c) = ([1; CHALLENGE_LEN], [2; CHALLENGE_LEN]);
        let recorded_proof = relay_proof(&key(9), &door_c, &relay_c);
        let recorded_answer = door_answer(&key(9), &relay_c, &door_c, Status::Forwarding);
        // Replayed at a door that sent another challenge.
        assert_eq!(check_relay_proof(&key(9), &[3; CHALLENGE_LEN], &recorded_proof), None);
        // Replayed at a relay that sent another challenge.
        assert_eq!(check_door_answer(&key(9), &[4; CHALLENGE_LEN], &door_c, &recorded_answer), None);
        // One role's proof never passes for the other's.
        let mut as_answer = [0u8; ANSWER_LEN];
        as_answer[1..].copy_from_slice(&recorded_proof[CHALLENGE_LEN..]);
        assert_eq!(check_door_answer(&key(9), &relay_c, &door_c, &as_answer), None);
    }

    #[test]
    fn a_flipped_status_is_caught() {
        let (door_c, relay_c) = ([5; CHALLENGE_LEN], [6; CHALLENGE_LEN]);
        let mut answer = door_answer(&key(3), &relay_c, &door_c, Status::ServerGone);
        answer[0] = Status::Forwarding as u8;
        assert_eq!(check_door_answer(&key(3), &relay_c, &door_c, &answer), None);
    }

    proptest! {
        #[test]
        fn another_key_never_passes(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), dc in any::<[u8; 32]>(), rc in any::<[u8; 32]>()) {
            prop_assume!(a != b);
            let proof = relay_proof(&DoorKey(a), &dc, &rc);
            prop_assert_eq!(check_relay_proof(&DoorKey(b), &dc, &proof), None);
            let answer = door_answer(&DoorKey(a), &rc, &dc, Status::Forwarding);
            prop_assert_eq!(check_door_answer(&DoorKey(b), &rc, &dc, &answer), None);
        }
    }
}
