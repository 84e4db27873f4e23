//! Prepared keys on disk: `<key id>.prepared` beside `<key id>.key`, so a key is
//! decompressed and converted to the Fourier domain once, not by every process that
//! serves it (a restart, a replica on a shared key directory). The file is a cache: it
//! holds nothing secret (it is the evaluation key in another form), any doubt about it
//! (another fhec, another key file, a wrong length or CRC) means it is ignored and made
//! again, and writing it may fail without failing a request.
//!
//! Layout: a header of [`HEADER_LEN`] bytes (one JSON line padded with spaces), then
//! the bytes of [`PreparedKey::write_keys`]. The header names the key file's digest, so
//! a key file replaced under the same id invalidates its prepared form.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use fhec_runtime::{KeyId, PreparedKey, Server};

const HEADER_LEN: usize = 512;
const FORMAT: &str = "fhec-prepared-key/1";

#[derive(Serialize, Deserialize, PartialEq)]
struct Header {
    format: String,
    fhec: String,
    model: String,
    key: String,
    /// The SHA-256 its key file's header states.
    key_sha256: String,
    bytes: u64,
    crc32: u32,
}

fn header_for(server: &Server, id: KeyId, key_sha256: &str, crc32: u32) -> Header {
    Header {
        format: FORMAT.into(),
        fhec: env!("CARGO_PKG_VERSION").into(),
        model: server.part().model_id.to_string(),
        key: id.to_string(),
        key_sha256: key_sha256.into(),
        bytes: server.prepared_keys_len(),
        crc32,
    }
}

/// The digest a key file's header states (only its first line is read).
pub fn key_file_digest(key_file: &Path) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    File::open(key_file)
        .ok()?
        .take(512)
        .read_to_end(&mut head)
        .ok()?;
    fhec_runtime::frame::peek(&head)
        .ok()
        .map(|h| h.digest().to_string())
}

/// The prepared key stored at `path` for key `id` whose key file states `key_sha256`,
/// or `None` when there is none or it does not match (or is damaged).
pub fn load(server: &Server, id: KeyId, key_sha256: &str, path: &Path) -> Option<PreparedKey> {
    let mut input = BufReader::with_capacity(1 << 20, File::open(path).ok()?);
    let mut head = vec![0u8; HEADER_LEN];
    input.read_exact(&mut head).ok()?;
    let stored: Header = serde_json::from_slice(head.trim_ascii_end()).ok()?;
    let expected = header_for(server, id, key_sha256, stored.crc32);
    if stored != expected {
        return None;
    }
    let key = server.restore(id, &mut input, stored.crc32).ok()?;
    // nothing may follow the keys
    let mut rest = [0u8; 1];
    matches!(input.read(&mut rest), Ok(0)).then_some(key)
}

/// Stores `key` (made from a key file stating `key_sha256`) at `path`, whole or not at
/// all: written to a temporary file in the same directory, then renamed.
pub fn store(
    server: &Server,
    key: &PreparedKey,
    key_sha256: &str,
    path: &Path,
    tmp: PathBuf,
) -> std::io::Result<()> {
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&[b' '; HEADER_LEN])?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let crc32 = key.write_keys(&mut out)?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        let mut head = serde_json::to_vec(&header_for(server, key.key_id(), key_sha256, crc32))
            .map_err(std::io::Error::other)?;
        if head.len() >= HEADER_LEN {
            return Err(std::io::Error::other("prepared-key header too long"));
        }
        head.resize(HEADER_LEN - 1, b' ');
        head.push(b'\n');
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&head)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
