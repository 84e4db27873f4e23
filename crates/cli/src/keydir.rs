//! A key directory: `client.key`, the secret key (mode 0600 from its creation, never
//! sent anywhere), and `evaluation.key`, the file the server receives.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fhec_runtime::{frame, Client, EvaluationKey, SecretKey, Server};

use crate::files::{about, read_limited, write_atomic};

pub const SECRET_KEY_FILE: &str = "client.key";
pub const EVALUATION_KEY_FILE: &str = "evaluation.key";

pub fn secret_key_path(dir: &Path) -> PathBuf {
    dir.join(SECRET_KEY_FILE)
}

pub fn evaluation_key_path(dir: &Path) -> PathBuf {
    dir.join(EVALUATION_KEY_FILE)
}

/// True when `dir` does not exist or holds nothing.
pub fn is_empty(dir: &Path) -> bool {
    !dir.exists()
        || std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
}

/// Writes fresh keys into `dir` (created owner-only if absent); refuses to replace keys
/// already there.
pub fn save(dir: &Path, secret: &SecretKey, evaluation: &EvaluationKey) -> Result<()> {
    let (s, e) = (secret_key_path(dir), evaluation_key_path(dir));
    for p in [&s, &e] {
        if p.exists() {
            bail!(
                "{}: keys already exist; fhec never replaces keys (use another directory)",
                p.display()
            );
        }
    }
    if !dir.exists() {
        create_private_dir(dir)?;
    }
    write_atomic(&s, &secret.to_bytes(), true)?;
    write_atomic(&e, &evaluation.to_bytes(), false)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("{}: cannot create", dir.display()))
}

/// Limit for a key file whose body takes `body` bytes.
fn key_limit(body: usize) -> u64 {
    (body + (1 << 20) + frame::HEADER_BYTES) as u64
}

/// The secret key in `dir`, checked against the client part.
pub fn load_secret(dir: &Path, client: &Client) -> Result<SecretKey> {
    let path = secret_key_path(dir);
    let part = client.part();
    let dims = part.keys.master_dimension()
        + part
            .keys
            .partitions
            .iter()
            .map(|p| p.params.lwe_dimension)
            .sum::<usize>();
    let bytes = zeroize::Zeroizing::new(read_limited(
        &path,
        key_limit(dims / 8 + 16),
        "a secret key of this model",
    )?);
    client.secret_key(&bytes).map_err(about(&path))
}

/// An evaluation key file, checked against the server part.
pub fn load_evaluation(path: &Path, server: &Server) -> Result<EvaluationKey> {
    let body = EvaluationKey::body_bytes(&server.part().params.keys);
    let bytes = read_limited(path, key_limit(body), "an evaluation key of this model")?;
    server.evaluation_key(&bytes).map_err(about(path))
}
