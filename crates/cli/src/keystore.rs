//! Keys on disk: `client.key` (secret, stays with the client) and `server.key`
//! (evaluation keys, what a server receives), each a header line then bincode.

use std::path::Path;

use anyhow::{bail, Context, Result};
use fhec_backend_tfhe::{generate_keys, ClientKey, KeyParams, ServerKey};

const CLIENT_HEADER: &[u8] = b"FHEC-CLIENT-KEY 2\n";
const SERVER_HEADER: &[u8] = b"FHEC-SERVER-KEY 2\n";

fn write(path: &Path, header: &[u8], value: &impl serde::Serialize) -> Result<()> {
    let mut bytes = header.to_vec();
    bincode::serialize_into(&mut bytes, value)?;
    std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}

fn read<T: serde::de::DeserializeOwned>(path: &Path, header: &[u8]) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if !bytes.starts_with(header) {
        bail!("{}: not an fhec key file of this version", path.display());
    }
    bincode::deserialize(&bytes[header.len()..])
        .map_err(|e| anyhow::anyhow!("{}: corrupted key file: {e}", path.display()))
}

/// Loads the keys in `dir`, or generates and saves them there when `dir` is absent or
/// empty. Returns the keys and whether they were generated.
pub fn load_or_generate(dir: &Path, params: &KeyParams) -> Result<(ClientKey, ServerKey, bool)> {
    let (cpath, spath) = (dir.join("client.key"), dir.join("server.key"));
    let empty = !dir.exists()
        || std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if empty {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let (c, s) = generate_keys(params);
        write(&cpath, CLIENT_HEADER, &c)?;
        restrict_to_owner(&cpath)?;
        write(&spath, SERVER_HEADER, &s)?;
        return Ok((c, s, true));
    }
    let c: ClientKey = read(&cpath, CLIENT_HEADER)?;
    let s: ServerKey = read(&spath, SERVER_HEADER)?;
    if c.params != *params || s.params != *params {
        bail!("{}: these keys were generated for other parameters than this model's; use another --keys directory", dir.display());
    }
    Ok((c, s, false))
}

/// The secret key file is readable by its owner only.
fn restrict_to_owner(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("{}: cannot restrict permissions", path.display()))?;
    }
    Ok(())
}
