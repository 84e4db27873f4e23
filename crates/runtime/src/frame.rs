//! The frame every fhec file shares (docs/FORMATS.md): one ASCII header line, then the
//! payload.
//!
//! ```text
//! FHEC-<KIND> <format version> <model id> <key id or -> <payload bytes> <sha-256 of payload>\n
//! ```
//!
//! The header says what the file is, which model (and which key set) it belongs to and
//! how long it is, so a reader refuses a file of the wrong kind, version, model or key
//! before parsing it, and never allocates more than the bytes it was handed. The digest
//! catches truncation and corruption; it is not an authenticity check.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// Version of every fhec file format; a file of another version is refused.
pub const FORMAT_VERSION: u32 = 3;

/// The header line ends within this many bytes.
const MAX_HEADER: usize = 300;

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The developer artifact: both parts and the whole float model.
    Model,
    /// What a client needs: key parameters, quantizers, the post-processing tail.
    Client,
    /// What a server needs: the circuit and its parameters.
    Server,
    /// The client's secret keys.
    SecretKey,
    /// The keys a server evaluates with.
    EvaluationKey,
    /// Encrypted model inputs (seeded).
    Inputs,
    /// Encrypted circuit outputs.
    Outputs,
}

const KINDS: [Kind; 7] = [
    Kind::Model,
    Kind::Client,
    Kind::Server,
    Kind::SecretKey,
    Kind::EvaluationKey,
    Kind::Inputs,
    Kind::Outputs,
];

impl Kind {
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Model => "FHEC-MODEL",
            Kind::Client => "FHEC-CLIENT",
            Kind::Server => "FHEC-SERVER",
            Kind::SecretKey => "FHEC-SECRET-KEY",
            Kind::EvaluationKey => "FHEC-EVALUATION-KEY",
            Kind::Inputs => "FHEC-INPUTS",
            Kind::Outputs => "FHEC-OUTPUTS",
        }
    }

    /// What the kind is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Model => "a compiled model (developer artifact)",
            Kind::Client => "a client part",
            Kind::Server => "a server part",
            Kind::SecretKey => "a secret key",
            Kind::EvaluationKey => "an evaluation key",
            Kind::Inputs => "encrypted inputs",
            Kind::Outputs => "encrypted outputs",
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.tag() == tag)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub [u8; 16]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_hex16(s).map($name).ok_or_else(|| format!("'{s}' is not 32 hex digits"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Identity of a compiled model: a digest of its circuit, parameters and client
    /// spec. Every file made for the model carries it.
    ModelId
);
id_type!(
    /// Identity of one key set: 128 random bits drawn at key generation. Ciphertexts and
    /// evaluation keys carry it, so a ciphertext is never used with another key.
    KeyId
);

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl ModelId {
    /// The id of serializable content: the digest of its CBOR.
    pub fn digest_of_value<T: Serialize>(value: &T) -> Self {
        Self::digest_of(&crate::parts::cbor(value))
    }

    /// The first 128 bits of the SHA-256 of `bytes`.
    pub fn digest_of(bytes: &[u8]) -> Self {
        let d = Sha256::digest(bytes);
        ModelId(array(&d))
    }
}

impl KeyId {
    pub fn from_u128(v: u128) -> Self {
        KeyId(v.to_le_bytes())
    }
}

/// A parsed header line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub version: u32,
    pub model: ModelId,
    pub key: Option<KeyId>,
    pub payload_len: usize,
    digest: String,
}

impl Header {
    /// The SHA-256 of the payload, as the header states it (hex).
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Frames `payload` as a file of `kind`.
pub fn frame(kind: Kind, model: ModelId, key: Option<KeyId>, payload: &[u8]) -> Vec<u8> {
    let key = key.map_or_else(|| "-".to_string(), |k| k.to_string());
    let mut out = format!(
        "{} {FORMAT_VERSION} {model} {key} {} {}\n",
        kind.tag(),
        payload.len(),
        sha256_hex(payload)
    )
    .into_bytes();
    // one allocation holds the payload: no stale copy of it (a secret key) is freed
    out.reserve_exact(payload.len());
    out.extend_from_slice(payload);
    out
}

/// Reads the header line only: what a file claims to be, before anything is checked
/// beyond the line's syntax (commands use it to name a file given in the wrong place).
pub fn peek(bytes: &[u8]) -> Result<Header, Error> {
    let not_ours = || Error::Format("not an fhec file (no fhec header)".into());
    let nl = bytes
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or_else(not_ours)?;
    let line = std::str::from_utf8(&bytes[..nl]).map_err(|_| not_ours())?;
    let fields: Vec<&str> = line.split(' ').collect();
    let tag = fields.first().copied().unwrap_or_default();
    let kind = match Kind::from_tag(tag) {
        Some(k) => k,
        // FHEC-ARTIFACT, FHEC-CLIENT-KEY, FHEC-SERVER-KEY: fhec's files before version 3
        None if tag.starts_with("FHEC-") && tag.is_ascii() => {
            return Err(Error::Format(format!(
                "{tag}: a file of an older fhec format; recompile the model (and make keys again) with this fhec"
            )))
        }
        None => return Err(not_ours()),
    };
    let version: u32 = fields
        .get(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Format("bad format version in the header".into()))?;
    if version != FORMAT_VERSION {
        return Err(Error::Format(format!(
            "{} of format version {version}; this fhec reads version {FORMAT_VERSION}: {}",
            kind.describe(),
            match kind {
                Kind::Model | Kind::Client | Kind::Server => "recompile the model",
                _ => "make it again with this fhec",
            }
        )));
    }
    if fields.len() != 6 {
        return Err(Error::Format("malformed fhec header".into()));
    }
    let model = fields[2]
        .parse()
        .map_err(|e| Error::Format(format!("model id: {e}")))?;
    let key = match fields[3] {
        "-" => None,
        k => Some(
            k.parse()
                .map_err(|e| Error::Format(format!("key id: {e}")))?,
        ),
    };
    let payload_len = fields[4]
        .parse()
        .map_err(|_| Error::Format("bad payload size in the header".into()))?;
    Ok(Header {
        kind,
        version,
        model,
        key,
        payload_len,
        digest: fields[5].to_string(),
    })
}

/// Checks the header and the digest of a file that must be of `kind`; returns the
/// header and the payload.
pub fn unframe(bytes: &[u8], kind: Kind) -> Result<(Header, &[u8]), Error> {
    let h = peek(bytes)?;
    if h.kind != kind {
        return Err(Error::Format(format!(
            "this is {} ({}), not {}",
            h.kind.describe(),
            h.kind.tag(),
            kind.describe()
        )));
    }
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Err(Error::Format("no header line".into()));
    };
    let start = newline + 1;
    let payload = &bytes[start..];
    if payload.len() != h.payload_len {
        return Err(Error::Format(format!(
            "corrupted (truncated or padded): the payload is {} bytes, the header says {}",
            payload.len(),
            h.payload_len
        )));
    }
    if sha256_hex(payload) != h.digest {
        return Err(Error::Format(
            "corrupted: the payload does not match its SHA-256 digest".into(),
        ));
    }
    Ok((h, payload))
}

/// The most bytes a well-formed file of `kind` can need beyond its payload.
pub const HEADER_BYTES: usize = MAX_HEADER;

/// A binary payload: `u32` little-endian length of a JSON description, the JSON, then
/// the binary body it describes.
#[allow(clippy::expect_used)] // plain structs serialize to memory; nothing here can fail
pub(crate) fn binary_payload<M: Serialize>(meta: &M, body_len: usize) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("metadata serializes");
    let mut out = Vec::with_capacity(4 + meta.len() + body_len);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out
}

/// Largest JSON description of a binary payload.
const MAX_META: usize = 1 << 20;

pub(crate) fn split_binary<M: serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<(M, &[u8]), Error> {
    let bad = |m: String| Error::Format(format!("corrupted payload: {m}"));
    let len = payload
        .get(..4)
        .map(|b| u32::from_le_bytes(array(b)) as usize)
        .ok_or_else(|| bad("no description".into()))?;
    if len > MAX_META || 4 + len > payload.len() {
        return Err(bad(format!("a description of {len} bytes")));
    }
    let meta = serde_json::from_slice(&payload[4..4 + len]).map_err(|e| bad(e.to_string()))?;
    Ok((meta, &payload[4 + len..]))
}

/// Bytes `count` values of `bits` bits take, packed.
pub(crate) fn packed_len(count: usize, bits: u32) -> usize {
    (count * bits as usize).div_ceil(8)
}

/// Appends `values` (each below 2^bits) as a little-endian bit stream, padded to a byte.
pub(crate) fn pack_bits(values: &[u64], bits: u32, out: &mut Vec<u8>) {
    if bits == 64 {
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        return;
    }
    let (mut acc, mut filled) = (0u128, 0u32);
    for &v in values {
        acc |= (v as u128) << filled;
        filled += bits;
        while filled >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out.push(acc as u8);
    }
}

/// The inverse of [`pack_bits`]: `count` values from `bytes` (exactly
/// `packed_len(count, bits)` long).
pub(crate) fn unpack_bits(bytes: &[u8], bits: u32, count: usize) -> Vec<u64> {
    debug_assert_eq!(bytes.len(), packed_len(count, bits));
    if bits == 64 {
        return bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(array(c)))
            .collect();
    }
    let mask = (1u128 << bits) - 1;
    let (mut acc, mut filled) = (0u128, 0u32);
    let mut it = bytes.iter();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        while filled < bits {
            acc |= (*it.next().unwrap_or(&0) as u128) << filled;
            filled += 8;
        }
        out.push((acc & mask) as u64);
        acc >>= bits;
        filled -= bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_at_every_width() {
        for bits in 1..=64u32 {
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let values: Vec<u64> = (0..37u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & max)
                .collect();
            let mut packed = Vec::new();
            pack_bits(&values, bits, &mut packed);
            assert_eq!(packed.len(), packed_len(values.len(), bits));
            assert_eq!(
                unpack_bits(&packed, bits, values.len()),
                values,
                "{bits} bits"
            );
        }
    }

    #[test]
    fn a_frame_round_trips_and_refuses_what_is_not_itself() {
        let model = ModelId::digest_of(b"m");
        let key = KeyId::from_u128(7);
        let bytes = frame(Kind::Inputs, model, Some(key), b"payload");
        let (h, p) = unframe(&bytes, Kind::Inputs).unwrap();
        assert_eq!((h.model, h.key, p), (model, Some(key), &b"payload"[..]));
        let wrong = unframe(&bytes, Kind::Outputs).unwrap_err().to_string();
        assert!(wrong.contains("encrypted inputs"), "{wrong}");
        let cut = unframe(&bytes[..bytes.len() - 1], Kind::Inputs).unwrap_err();
        assert!(cut.to_string().contains("truncated"), "{cut}");
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let bad = unframe(&flipped, Kind::Inputs).unwrap_err().to_string();
        assert!(bad.contains("SHA-256"), "{bad}");
        let old = String::from_utf8(bytes.clone())
            .unwrap()
            .replacen(" 3 ", " 2 ", 1);
        let e = unframe(old.as_bytes(), Kind::Inputs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
        assert!(unframe(b"PK\x03\x04", Kind::Inputs).is_err());
    }
}

/// The first `N` bytes of `bytes` as an array (zero-filled if shorter; callers pass
/// exact chunks).
pub(crate) fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = bytes.len().min(N);
    a[..n].copy_from_slice(&bytes[..n]);
    a
}
