//! `fhec bench-serve`: the HTTP server under concurrent load on loopback, next to the
//! same evaluation in one process (what `fhec run` does). Prints figures, asserts
//! nothing.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fhec::files;
use fhec_runtime::{Client, EncryptedOutputs, Server};

pub struct Options {
    pub clients: usize,
    pub requests: usize,
    pub samples_per_request: usize,
}

pub fn bench_serve(server_path: &Path, input: &Path, o: Options) -> Result<ExitCode> {
    let bytes = files::read_limited(
        server_path,
        files::MAX_PART_BYTES.min(files::memory_budget()),
        "a server part",
    )?;
    let server = Server::from_bytes(&bytes).map_err(files::about(server_path))?;
    let client = Client::new(server.part().client.clone())?;
    let pbs = server.info().pbs_per_sample;
    let samples = files::load_samples(input, client.graph())?;
    let (clients, per_request) = (o.clients.max(1), o.samples_per_request.max(1));
    let total_requests = clients * o.requests.max(1);
    let t = Instant::now();
    let (secret, evaluation) = client.keygen();
    println!(
        "{}: {pbs} PBS/sample; {clients} clients × {} requests × {per_request} samples; keygen {:.1} s",
        server_path.display(),
        o.requests.max(1),
        t.elapsed().as_secs_f64()
    );
    // every request encrypted beforehand: the figures are the server's
    let requests: Vec<Vec<u8>> = (0..total_requests)
        .map(|r| {
            let batch: Vec<_> = (0..per_request)
                .map(|i| samples[(r * per_request + i) % samples.len()].clone())
                .collect();
            client.encrypt(&secret, &batch).map(|x| x.to_bytes())
        })
        .collect::<Result<_, _>>()?;

    // one process: what `fhec run` does, sample batch after sample batch
    let prepared = server.prepare(&evaluation)?;
    let t = Instant::now();
    let one = total_requests.min(4);
    for r in &requests[..one] {
        let inputs = fhec_runtime::EncryptedInputs::from_bytes(r)?;
        server.run(&prepared, &inputs, &|_, _| {})?;
    }
    let direct = t.elapsed().as_secs_f64() / one as f64;
    drop(prepared);

    let key_dir = std::env::temp_dir().join(format!("fhec-bench-serve-{}", std::process::id()));
    let state = fhec_server::AppState::new(server, &key_dir, fhec_server::Config::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(fhec_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |path: &str, body: &[u8]| -> Result<Vec<u8>> {
        loop {
            let mut r = agent
                .post(format!("{url}{path}"))
                .send(body)
                .map_err(|e| anyhow!("{path}: {e}"))?;
            let status = r.status().as_u16();
            let b = r.body_mut().with_config().limit(1 << 32).read_to_vec()?;
            match status {
                200 | 201 => return Ok(b),
                503 => std::thread::sleep(Duration::from_millis(50)),
                s => bail!("{path}: {s} {}", String::from_utf8_lossy(&b)),
            }
        }
    };
    post("/v1/keys", &evaluation.to_bytes())?;
    let path = format!("/v1/predict?key={}", secret.key_id);
    let t = Instant::now();
    post(&path, &requests[0])?; // prepares the key
    let first = t.elapsed().as_secs_f64();

    let requests = Arc::new(requests);
    let t = Instant::now();
    let latencies: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (requests, post, path) = (requests.clone(), &post, &path);
                s.spawn(move || -> Result<Vec<f64>> {
                    let mut out = Vec::new();
                    for r in (c..requests.len()).step_by(clients) {
                        let t = Instant::now();
                        let answer = post(path, &requests[r])?;
                        out.push(t.elapsed().as_secs_f64());
                        EncryptedOutputs::from_bytes(&answer)?;
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a client thread panicked"))?)
            .collect::<Result<Vec<_>>>()
            .map(|v| v.concat())
    })?;
    let wall = t.elapsed().as_secs_f64();
    let _ = stop.send(());
    runtime
        .block_on(serving)
        .context("server task")?
        .context("server")?;
    let _ = std::fs::remove_dir_all(&key_dir);

    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let n = sorted.len() as f64;
    let served_samples = n * per_request as f64;
    println!(
        "  served over HTTP: {:.1} requests/s, {:.1} samples/s | latency p50 {:.1} ms, p99 {:.1} ms | {:.0} bootstraps/s | first request (prepares the key) {:.2} s",
        n / wall,
        served_samples / wall,
        pct(0.5) * 1e3,
        pct(0.99) * 1e3,
        served_samples * pbs as f64 / wall,
        first
    );
    println!(
        "  one process (as fhec run): {:.1} ms per {per_request}-sample batch, {:.1} samples/s, {:.0} bootstraps/s",
        direct * 1e3,
        per_request as f64 / direct,
        per_request as f64 * pbs as f64 / direct
    );
    Ok(ExitCode::SUCCESS)
}
