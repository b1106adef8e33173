//! Mutual challenge-response authentication, as Python's
//! `multiprocessing.connection` does it (`deliver_challenge` /
//! `answer_challenge`): each side proves it knows the authkey by returning
//! HMAC-SHA256 of a fresh random nonce chosen by the other side. The key
//! itself never crosses the wire, and a recorded exchange is useless later.
//!
//! ```text
//! server → client   MAGIC ‖ nonce_s                      (48 bytes)
//! client → server   HMAC(key, "client" ‖ nonce_s) ‖ nonce_c   (64 bytes)
//! server → client   WELCOME ‖ limit ‖ HMAC(key, "server" ‖ nonce_c ‖ nonce_s ‖ limit)
//!                or FAILURE, and the server closes
//! ```
//!
//! `limit` is the server's frame limit (`u32`, little-endian), so a client
//! refuses a request the server would not take before sending it. The labels
//! keep a reply from being reflected back as the other side's proof. Until the exchange succeeds the server reads only these fixed-size
//! frames (nothing is decoded), under a deadline.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a nonce and of a MAC.
pub(crate) const NONCE_BYTES: usize = 32;
const MAC_BYTES: usize = 32;
/// Names the protocol and its version in the server's first frame.
const MAGIC: &[u8; 16] = b"shmpool-manager1";
const WELCOME: &[u8; 8] = b"#WELCOME";
const FAILURE: &[u8; 8] = b"#FAILURE";

/// The largest handshake frame; anything longer is not a client of ours.
pub(crate) const HANDSHAKE_LIMIT: usize = 64;

/// `N` random bytes from the kernel (`getrandom(2)`).
pub(crate) fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        let n = match rustix::rand::getrandom(
            &mut out[filled..],
            rustix::rand::GetRandomFlags::empty(),
        ) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        filled += n;
    }
    Ok(out)
}

fn mac(key: &[u8], label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(label);
    for part in parts {
        mac.update(part);
    }
    mac
}

/// The server's first frame.
pub(crate) fn challenge(nonce_s: &[u8; NONCE_BYTES]) -> Vec<u8> {
    [&MAGIC[..], nonce_s].concat()
}

/// The client's answer to the server's `challenge` frame, with its own nonce;
/// `None` if the frame is not a shmpool manager's challenge.
pub(crate) fn answer(key: &[u8], challenge: &[u8], nonce_c: &[u8; NONCE_BYTES]) -> Option<Vec<u8>> {
    let nonce_s = challenge.strip_prefix(&MAGIC[..])?;
    if nonce_s.len() != NONCE_BYTES {
        return None;
    }
    let proof = mac(key, b"client", &[nonce_s]).finalize().into_bytes();
    Some([&proof[..], nonce_c].concat())
}

/// The server's check of the client's answer: the frame to send back
/// (welcome with the frame limit and the server's own proof, or failure) and
/// whether it passed.
pub(crate) fn judge(
    key: &[u8],
    nonce_s: &[u8; NONCE_BYTES],
    answer: &[u8],
    frame_limit: u32,
) -> (Vec<u8>, bool) {
    if answer.len() != MAC_BYTES + NONCE_BYTES {
        return (FAILURE.to_vec(), false);
    }
    let (proof, nonce_c) = answer.split_at(MAC_BYTES);
    // `verify_slice` compares in constant time.
    if mac(key, b"client", &[nonce_s]).verify_slice(proof).is_err() {
        return (FAILURE.to_vec(), false);
    }
    let limit = frame_limit.to_le_bytes();
    let ours = mac(key, b"server", &[nonce_c, nonce_s, &limit])
        .finalize()
        .into_bytes();
    ([&WELCOME[..], &limit, &ours[..]].concat(), true)
}

/// The client's check of the server's verdict: the server's frame limit if
/// it proved it knows the key.
pub(crate) fn accept(
    key: &[u8],
    nonce_s: &[u8],
    nonce_c: &[u8; NONCE_BYTES],
    verdict: &[u8],
) -> Option<u32> {
    let rest = verdict.strip_prefix(&WELCOME[..])?;
    let (limit, proof) = rest.split_at_checked(4)?;
    mac(key, b"server", &[nonce_c, nonce_s, limit])
        .verify_slice(proof)
        .ok()?;
    Some(u32::from_le_bytes(limit.try_into().ok()?))
}

/// The nonce inside a `challenge` frame.
pub(crate) fn nonce_of(challenge: &[u8]) -> &[u8] {
    challenge.get(MAGIC.len()..).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_accept_the_same_key_and_refuse_another() {
        let nonce_s = random_bytes::<NONCE_BYTES>().unwrap();
        let nonce_c = random_bytes::<NONCE_BYTES>().unwrap();
        assert_ne!(nonce_s, nonce_c);
        let hello = challenge(&nonce_s);
        assert!(hello.len() <= HANDSHAKE_LIMIT);

        let reply = answer(b"secret", &hello, &nonce_c).unwrap();
        assert!(reply.len() <= HANDSHAKE_LIMIT);
        let (verdict, ok) = judge(b"secret", &nonce_s, &reply, 4096);
        assert!(ok && verdict.len() <= HANDSHAKE_LIMIT);
        assert_eq!(
            accept(b"secret", nonce_of(&hello), &nonce_c, &verdict),
            Some(4096)
        );
        // A client holding the right key refuses a server that does not.
        assert_eq!(accept(b"other", nonce_of(&hello), &nonce_c, &verdict), None);
        // A limit altered on the way fails the server's proof.
        let mut altered = verdict.clone();
        altered[WELCOME.len()] ^= 1;
        assert_eq!(
            accept(b"secret", nonce_of(&hello), &nonce_c, &altered),
            None
        );

        let wrong = answer(b"guess", &hello, &nonce_c).unwrap();
        let (verdict, ok) = judge(b"secret", &nonce_s, &wrong, 4096);
        assert!(!ok);
        assert_eq!(
            accept(b"secret", nonce_of(&hello), &nonce_c, &verdict),
            None
        );
        assert!(!judge(b"secret", &nonce_s, b"garbage", 4096).1);
        assert!(answer(b"secret", b"HTTP/1.1 200 OK", &nonce_c).is_none());
    }

    #[test]
    fn a_server_proof_cannot_be_reflected_as_a_client_proof() {
        let nonce = [5u8; NONCE_BYTES];
        let server_proof = mac(b"k", b"server", &[&nonce, &nonce])
            .finalize()
            .into_bytes();
        let reflected = [&server_proof[..], &nonce].concat();
        assert!(!judge(b"k", &nonce, &reflected, 1).1);
    }
}
