//! Registered evaluation keys: files under the key directory (they survive restarts and
//! can be shared by replicas), their prepared forms stored beside them (so a key is
//! converted once, not per process: [`crate::prepared`]), and a memory-bounded cache of
//! prepared keys (Fourier bootstrap keys, encoded tables) in least-recently-used order.
//! An evicted key is restored from its stored prepared form when it is next used.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fhec_runtime::{KeyId, PreparedKey, Server};

use crate::ApiError;

pub struct KeyStore {
    /// `<key dir>/<model id>`: one model's keys, `<key id>.key` each.
    dir: PathBuf,
    server: Arc<Server>,
    /// Prepared keys, least recently used first.
    cache: Mutex<Vec<(KeyId, Arc<PreparedKey>)>>,
    /// Keys are prepared one at a time (each preparation is itself parallel), so a
    /// burst of requests for one new key prepares it once.
    preparing: Mutex<()>,
    /// Preparations done and the seconds they took (Fourier conversion, tables).
    preparations: Mutex<(u64, f64)>,
    /// Keys restored from their stored prepared form, and the seconds that took.
    restores: Mutex<(u64, f64)>,
    /// Most bytes of prepared keys kept; at least one key is always kept.
    bound: usize,
    /// Estimated bytes of one prepared key of this model.
    key_bytes: usize,
    /// Most keys registered on disk for this model.
    max_keys: usize,
    tmp_counter: AtomicU64,
}

/// Most prepared keys kept whatever their size (a model without bootstrap has tiny keys).
const MAX_PREPARED: usize = 256;

/// Registration outcome.
pub enum Registered {
    New(KeyId),
    Existing(KeyId),
}

impl KeyStore {
    pub fn open(
        dir: &Path,
        server: Arc<Server>,
        bound: usize,
        max_keys: usize,
    ) -> std::io::Result<Self> {
        let dir = dir.join(server.part().model_id.to_string());
        std::fs::create_dir_all(&dir)?;
        let (bsk, ksk) = server.part().params.eval_key_bytes();
        Ok(KeyStore {
            dir,
            server,
            cache: Mutex::new(Vec::new()),
            preparing: Mutex::new(()),
            preparations: Mutex::new((0, 0.0)),
            restores: Mutex::new((0, 0.0)),
            bound,
            key_bytes: bsk + ksk,
            max_keys,
            tmp_counter: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: KeyId) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    /// Where key `id`'s prepared form is stored ([`crate::prepared`]).
    pub fn prepared_path(&self, id: KeyId) -> PathBuf {
        self.dir.join(format!("{id}.prepared"))
    }

    fn tmp_path(&self, id: KeyId, what: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{id}.{what}.{}.{n}.tmp", std::process::id()))
    }

    /// Estimated memory of one prepared key of this model.
    pub fn prepared_key_bytes(&self) -> usize {
        self.key_bytes
    }

    pub fn prepared_count(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when the key is registered (prepared or on disk).
    pub fn exists(&self, id: KeyId) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(k, _)| *k == id)
            || self.path(id).exists()
    }

    /// Validates an evaluation key against the model and stores it. The same key again
    /// is accepted without change; another key under a registered id is refused.
    pub fn register(&self, bytes: &[u8]) -> Result<Registered, ApiError> {
        let key = self
            .server
            .evaluation_key(bytes)
            .map_err(|e| ApiError::bad_request(format!("evaluation key: {e}")))?;
        let id = key.key_id;
        let path = self.path(id);
        if path.exists() {
            let stored = std::fs::read(&path).map_err(ApiError::internal)?;
            return if stored == bytes {
                Ok(Registered::Existing(id))
            } else {
                Err(ApiError::conflict(format!(
                    "another evaluation key is registered as {id}"
                )))
            };
        }
        let registered = std::fs::read_dir(&self.dir)
            .map_err(ApiError::internal)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".key"))
            })
            .count();
        if registered >= self.max_keys {
            return Err(ApiError::new(
                507,
                format!(
                    "this server holds its maximum of {} evaluation keys",
                    self.max_keys
                ),
            ));
        }
        // whole or nothing: a temporary file renamed into place
        let tmp = self.tmp_path(id, "key");
        let written = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(ApiError::internal(e));
        }
        Ok(Registered::New(id))
    }

    /// The prepared key `id`: from the cache, else restored from its stored prepared
    /// form, else prepared from its key file and stored (slow: run it on the compute
    /// pool).
    pub fn prepared(&self, id: KeyId) -> Result<Arc<PreparedKey>, ApiError> {
        if let Some(k) = self.cached(id) {
            return Ok(k);
        }
        let _one_at_a_time = self.preparing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = self.cached(id) {
            return Ok(k);
        }
        let start = std::time::Instant::now();
        let key_digest = crate::prepared::key_file_digest(&self.path(id));
        if let Some(digest) = &key_digest {
            let stored = self.prepared_path(id);
            if let Some(key) = crate::prepared::load(&self.server, id, digest, &stored) {
                let mut r = self.restores.lock().unwrap_or_else(|e| e.into_inner());
                r.0 += 1;
                r.1 += start.elapsed().as_secs_f64();
                return Ok(self.keep(id, Arc::new(key)));
            }
        }
        let bytes = match std::fs::read(self.path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::not_found(format!(
                    "no evaluation key {id} is registered; POST it to /v1/keys"
                )))
            }
            Err(e) => return Err(ApiError::internal(e)),
        };
        // the file is checked again: the key directory may be shared or edited
        let key = self
            .server
            .evaluation_key(&bytes)
            .map_err(|e| ApiError::internal(format!("stored key {id}: {e}")))?;
        let prepared = Arc::new(self.server.prepare(&key).map_err(ApiError::internal)?);
        {
            let mut p = self.preparations.lock().unwrap_or_else(|e| e.into_inner());
            p.0 += 1;
            p.1 += start.elapsed().as_secs_f64();
        }
        // stored for the next process; a failure (a full disk) only costs that process
        // the conversion
        let worth_storing = self.server.prepared_keys_len() > 0;
        if let Some(h) = fhec_runtime::frame::peek(&bytes)
            .ok()
            .filter(|_| worth_storing)
        {
            let _ = crate::prepared::store(
                &self.server,
                &prepared,
                h.digest(),
                &self.prepared_path(id),
                self.tmp_path(id, "prepared"),
            );
        }
        Ok(self.keep(id, prepared))
    }

    /// Puts a prepared key in the cache, evicting the least recently used beyond the
    /// bound.
    fn keep(&self, id: KeyId, prepared: Arc<PreparedKey>) -> Arc<PreparedKey> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.push((id, prepared.clone()));
        while cache.len() > 1
            && (cache.len() * self.key_bytes > self.bound || cache.len() > MAX_PREPARED)
        {
            cache.remove(0);
        }
        prepared
    }

    /// Preparations done so far and the seconds they took in all.
    pub fn preparations(&self) -> (u64, f64) {
        *self.preparations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys restored from their stored prepared form so far, and the seconds that took.
    pub fn restores(&self) -> (u64, f64) {
        *self.restores.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, id: KeyId) -> Option<Arc<PreparedKey>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let i = cache.iter().position(|(k, _)| *k == id)?;
        let entry = cache.remove(i);
        let key = entry.1.clone();
        cache.push(entry); // most recently used last
        Some(key)
    }
}
