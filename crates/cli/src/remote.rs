//! `fhec serve` (the HTTP server, `fhec-server`) and `fhec remote` (a client that talks
//! to one): docs/DEPLOYMENT.md#the-http-server.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fhec::files::{self, about, MAX_PART_BYTES};
use fhec::{keydir, npy};
use fhec_runtime::{Client, EncryptedOutputs, EvaluationKey, SecretKey};

/// Options of `fhec serve`.
pub struct ServeOptions<'a> {
    pub addr: &'a str,
    pub key_dir: &'a Path,
    pub config: fhec_server::Config,
}

pub fn serve(server_path: &Path, o: ServeOptions<'_>) -> Result<ExitCode> {
    let server = files::load_server(server_path)?;
    let model_id = server.part().model_id;
    let pbs = server.info().pbs_per_sample;
    let state = fhec_server::AppState::new(server, o.key_dir, o.config)?;
    // the async runtime only moves bytes: FHE work runs on the server's compute pool
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(o.addr)
            .await
            .with_context(|| format!("{}: cannot listen", o.addr))?;
        let addr = listener.local_addr()?;
        // one line on stdout, which scripts and tests read for the bound address
        println!(
            "fhec serve: listening on http://{addr} (model {model_id}, {pbs} PBS per sample, keys in {})",
            state.key_dir().display()
        );
        fhec_server::serve(listener, state, shutdown_signal()).await?;
        eprintln!("fhec serve: stopped after finishing the requests in flight");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("fhec serve: shutting down, finishing the requests in flight");
}

/// A server's answer: status and body (read up to `limit` bytes).
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Vec<u8>,
}

struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    fn new(url: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Http {
            agent,
            base: url.trim_end_matches('/').to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn answer(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
    ) -> Result<Answer> {
        let mut r = response.map_err(|e| anyhow!("{}: {e}", self.url(path)))?;
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut body = Vec::new();
        r.body_mut()
            .as_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| anyhow!("{}: reading the answer: {e}", self.url(path)))?;
        if body.len() as u64 > limit {
            bail!("{}: answer larger than {limit} bytes", self.url(path));
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    fn get(&self, path: &str, limit: u64) -> Result<Answer> {
        let r = self.agent.get(self.url(path)).call();
        self.answer(path, r, limit)
    }

    fn post(&self, path: &str, body: &[u8], limit: u64) -> Result<Answer> {
        let r = self
            .agent
            .post(self.url(path))
            .header("content-type", "application/octet-stream")
            .send(body);
        self.answer(path, r, limit)
    }

    /// The server's error message for a non-2xx answer.
    fn failure(&self, path: &str, a: &Answer) -> anyhow::Error {
        let message = serde_json::from_slice::<serde_json::Value>(&a.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&a.body).chars().take(200).collect());
        anyhow!("{}: {} {message}", self.url(path), a.status)
    }
}

/// Options of `fhec remote`.
pub struct RemoteOptions<'a> {
    pub url: &'a str,
    pub keys: &'a Path,
    pub input: &'a Path,
    pub output: Option<&'a Path>,
    pub limit: Option<usize>,
    pub force: bool,
}

/// Where `remote` remembers which servers hold this key set's evaluation key.
const REGISTERED_FILE: &str = "registered";

pub fn remote(o: RemoteOptions<'_>) -> Result<ExitCode> {
    if let Some(out) = o.output {
        files::guard_overwrite(out, npy::is_fhec_npz(out), o.force)?;
    }
    let http = Http::new(o.url);
    let t = Instant::now();
    let a = http.get("/v1/client", MAX_PART_BYTES)?;
    if a.status != 200 {
        return Err(http.failure("/v1/client", &a));
    }
    // the client part comes from the server: checked before any key is made
    let client =
        Client::from_bytes(&a.body).map_err(|e| anyhow!("{}: {e}", http.url("/v1/client")))?;
    let model = client.part().model_id;
    eprintln!(
        "remote: client part of model {model} from {} ({} bytes)",
        o.url,
        a.body.len()
    );
    let (secret, evaluation_bytes) = keys_for_remote(&client, o.keys)?;
    let mut samples = files::load_samples(o.input, client.graph())?;
    if let Some(n) = o.limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        samples.truncate(n);
    }
    let registered = o.keys.join(REGISTERED_FILE);
    let marker = format!("{} {}", http.base, secret.key_id);
    let already = std::fs::read_to_string(&registered)
        .map(|s| s.lines().any(|l| l == marker))
        .unwrap_or(false);
    if !already {
        upload(&http, &evaluation_bytes)?;
        remember(&registered, &marker)?;
    }
    let inputs = client.encrypt(&secret, &samples).map_err(about(o.input))?;
    let body = inputs.to_bytes();
    let path = format!("/v1/predict?key={}", secret.key_id);
    let part = client.part();
    let per_sample: usize = part
        .output_sizes()
        .iter()
        .map(|n| n * ((part.keys.master_dimension() + 1) * part.output_bits as usize).div_ceil(8))
        .sum();
    let limit = (per_sample * samples.len() + (1 << 20)) as u64;
    eprintln!(
        "remote: {} samples encrypted ({} bytes); evaluating on the server…",
        samples.len(),
        body.len()
    );
    let evaluation = Instant::now();
    let mut reuploaded = false;
    let mut busy = 0;
    let answer = loop {
        let a = http.post(&path, &body, limit)?;
        match a.status {
            200 => break a,
            // the server lost the key (another replica, a fresh key directory): once more
            404 if !reuploaded => {
                eprintln!(
                    "remote: the server does not hold the evaluation key; uploading it again"
                );
                upload(&http, &evaluation_bytes)?;
                reuploaded = true;
            }
            503 if busy < 30 => {
                busy += 1;
                let wait = a.retry_after.unwrap_or(1).clamp(1, 30);
                eprintln!("remote: the server is busy; retrying in {wait} s");
                std::thread::sleep(Duration::from_secs(wait));
            }
            _ => return Err(http.failure(&path, &a)),
        }
    };
    eprintln!(
        "remote: evaluated in {:.2} s; {} bytes back",
        evaluation.elapsed().as_secs_f64(),
        answer.body.len()
    );
    let outputs = EncryptedOutputs::from_bytes(&answer.body)
        .map_err(|e| anyhow!("{}: {e}", http.url("/v1/predict")))?;
    let results = client
        .decrypt(&secret, &outputs)
        .map_err(|e| anyhow!("{}: {e}", http.url("/v1/predict")))?;
    if results.len() != samples.len() {
        bail!(
            "{}: {} results for {} samples",
            http.url("/v1/predict"),
            results.len(),
            samples.len()
        );
    }
    let outputs: Vec<_> = results.into_iter().map(|r| r.outputs).collect();
    eprintln!(
        "{} samples in {:.2} s ({:.1} ms/sample)",
        outputs.len(),
        t.elapsed().as_secs_f64(),
        1e3 * t.elapsed().as_secs_f64() / outputs.len() as f64
    );
    crate::deploy::emit_outputs(client.graph(), &outputs, o.output)?;
    Ok(ExitCode::SUCCESS)
}

/// The keys in `dir`, made there when it has none; with the evaluation key's file.
fn keys_for_remote(client: &Client, dir: &Path) -> Result<(SecretKey, Vec<u8>)> {
    if keydir::is_empty(dir) {
        eprintln!(
            "remote: generating keys ({:.1} MB evaluation key)…",
            EvaluationKey::body_bytes(&client.part().keys) as f64 / 1e6
        );
        let t = Instant::now();
        let (secret, evaluation) = fhec::progress::keygen(client);
        keydir::save(dir, &secret, &evaluation)?;
        eprintln!(
            "remote: keys generated in {:.1} s and saved to {}",
            t.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    let secret = keydir::load_secret(dir, client)?;
    let path = keydir::evaluation_key_path(dir);
    let body = EvaluationKey::body_bytes(&client.part().keys);
    let bytes = files::read_limited(
        &path,
        (body + (2 << 20)) as u64,
        "an evaluation key of this model",
    )?;
    let header = fhec_runtime::frame::peek(&bytes).map_err(about(&path))?;
    if header.kind != fhec_runtime::Kind::EvaluationKey || header.key != Some(secret.key_id) {
        bail!(
            "{}: not the evaluation key of {} (key {})",
            path.display(),
            keydir::secret_key_path(dir).display(),
            secret.key_id
        );
    }
    Ok((secret, bytes))
}

fn upload(http: &Http, key: &[u8]) -> Result<()> {
    let t = Instant::now();
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "remote: uploading the evaluation key ({:.1} MB){}",
        key.len() as f64 / 1e6,
        if tty { "…" } else { "" }
    );
    let a = http.post("/v1/keys", key, 1 << 20)?;
    if !(a.status == 200 || a.status == 201) {
        return Err(http.failure("/v1/keys", &a));
    }
    eprintln!("remote: uploaded in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Appends `line` to the `registered` file of the key directory.
fn remember(path: &Path, line: &str) -> Result<()> {
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    text.push_str(line);
    text.push('\n');
    files::write_atomic(path, text.as_bytes(), false)
}
