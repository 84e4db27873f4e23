//! `fhec serve` as a real process on loopback, with `fhec remote` and with concurrent
//! library clients: end to end, under load, killed and restarted, shared between two
//! processes, and fed a corpus of corrupt requests. Every answer is checked against
//! simulate; every test stops its servers when it ends.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{arrays, fixture, ok, s, tmp};
use fhec_runtime::{Client, EncryptedInputs, EncryptedOutputs, SecretKey};

/// Compiles fixture `name` into `dir` (default settings); returns the developer artifact.
fn compile(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.fhe"));
    common::compile_fixture(name, &out, &[]);
    out
}

fn server_part(artifact: &Path) -> PathBuf {
    artifact.with_extension("server.fhe")
}

/// A `fhec serve` process on 127.0.0.1 (any free port), stopped on drop.
struct Served {
    child: Child,
    url: String,
    stderr: PathBuf,
}

impl Served {
    fn start(part: &Path, key_dir: &Path, extra: &[&str]) -> Self {
        let stderr = key_dir.with_extension(format!("{}.stderr", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fhec"))
            .args([
                "serve",
                s(part),
                "--addr",
                "127.0.0.1:0",
                "--key-dir",
                s(key_dir),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("fhec serve prints its address");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Served { child, url, stderr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// No panic was logged.
    fn assert_no_panic(&self) {
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(!log.contains("panicked"), "the server panicked: {log}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// (status, body) of a request; retried while the server answers 503.
fn call(url: &str, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
    let a = agent();
    for _ in 0..200 {
        let r = match body {
            Some(b) => a
                .post(format!("{url}{path}"))
                .header("content-type", "application/octet-stream")
                .send(b),
            None => a.get(format!("{url}{path}")).call(),
        };
        let mut r = r.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status().as_u16();
        let bytes = r
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap();
        if status != 503 {
            return (status, bytes);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{path}: still busy after 200 tries")
}

/// `fhec remote` against a served model equals simulate; a second run reuses the key.
fn remote_matches_simulate(name: &str) {
    let d = tmp(&format!("serve-remote-{name}"));
    let artifact = compile(&d, name);
    let served = Served::start(&server_part(&artifact), &d.join("server-keys"), &[]);
    let x = fixture(name).join("test_x.npy");
    let keys = d.join("client-keys");
    let y = d.join("y.npz");
    let (_, err) = ok(&[
        "remote",
        "--url",
        &served.url,
        "--keys",
        s(&keys),
        "--input",
        s(&x),
        "--limit",
        "3",
        "-o",
        s(&y),
    ]);
    assert!(err.contains("uploading the evaluation key"), "{err}");
    let sim = d.join("sim.npz");
    ok(&[
        "predict",
        s(&artifact),
        "--input",
        s(&x),
        "--limit",
        "3",
        "-o",
        s(&sim),
    ]);
    assert_eq!(
        arrays(&y),
        arrays(&sim),
        "{name}: remote differs from simulate"
    );
    let (_, err) = ok(&[
        "remote",
        "--url",
        &served.url,
        "--keys",
        s(&keys),
        "--input",
        s(&x),
        "--limit",
        "2",
        "-o",
        s(&y),
        "--force",
    ]);
    assert!(
        !err.contains("uploading"),
        "the key is uploaded once: {err}"
    );
    let (status, body) = call(&served.url, "/v1/model", None);
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let info = fhec::files::load_artifact(&artifact).unwrap().1;
    assert_eq!(m["pbs_per_sample"], info.pbs_per_sample);
    assert!(m["sizes"]["input_bytes_per_sample"].as_u64().unwrap() > 0);
    let (_, metrics) = call(&served.url, "/metrics", None);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("fhec_requests_total{route=\"/v1/predict\",code=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "fhec_bootstraps_total {}",
            5 * info.pbs_per_sample
        )),
        "{metrics}"
    );
    // prepared once (on upload), then served from memory
    assert!(
        metrics.contains("fhec_key_preparations_total 1\n"),
        "{metrics}"
    );
    served.assert_no_panic();
}

#[test]
fn remote_on_a_linear_model_equals_simulate() {
    remote_matches_simulate("logreg_iris");
}

#[test]
fn remote_on_a_tree_ensemble_equals_simulate() {
    remote_matches_simulate("dt_breast");
}

/// One client of a served model, in this process: its keys, registered.
struct Party {
    client: Client,
    secret: SecretKey,
    samples: Vec<Vec<fhec_frontend_onnx::Tensor>>,
    expected: Vec<Vec<Vec<i64>>>,
}

impl Party {
    fn new(url: &str, artifact: &Path, name: &str) -> Self {
        let (status, part) = call(url, "/v1/client", None);
        assert_eq!(status, 200);
        let client = Client::from_bytes(&part).unwrap();
        let (secret, evaluation) = client.keygen();
        let (status, body) = call(url, "/v1/keys", Some(&evaluation.to_bytes()));
        assert!(
            status == 201 || status == 200,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let (a, info) = fhec::files::load_artifact(artifact).unwrap();
        let samples: Vec<_> =
            fhec::files::load_samples(&fixture(name).join("test_x.npy"), client.graph())
                .unwrap()
                .into_iter()
                .take(4)
                .collect();
        let expected = samples
            .iter()
            .map(|x| {
                fhec_runtime::simulate::simulate(&a, &info, x)
                    .unwrap()
                    .circuit_outputs
            })
            .collect();
        Party {
            client,
            secret,
            samples,
            expected,
        }
    }

    /// One request of samples `range`, checked against simulate.
    fn ask(&self, url: &str, range: std::ops::Range<usize>) {
        let inputs = self
            .client
            .encrypt(&self.secret, &self.samples[range.clone()])
            .unwrap();
        let (status, body) = call(
            url,
            &format!("/v1/predict?key={}", self.secret.key_id),
            Some(&inputs.to_bytes()),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let outputs = EncryptedOutputs::from_bytes(&body).unwrap();
        let results = self.client.decrypt(&self.secret, &outputs).unwrap();
        for (r, e) in results.iter().zip(&self.expected[range]) {
            assert_eq!(
                &r.circuit_outputs, e,
                "a served answer differs from simulate"
            );
        }
    }
}

/// 16 clients on a linear model and 4 on a tree ensemble at once, every answer checked.
#[test]
fn concurrent_clients_are_all_answered_correctly() {
    let d = tmp("serve-load");
    let linear = compile(&d, "logreg_iris");
    let tree = compile(&d, "dt_breast");
    let linear_server = Served::start(
        &server_part(&linear),
        &d.join("keys-linear"),
        &["--queue", "4"],
    );
    let tree_server = Served::start(&server_part(&tree), &d.join("keys-tree"), &[]);
    // the tree's clients share one key set (key generation takes seconds)
    let tree_party = Arc::new(Party::new(&tree_server.url, &tree, "dt_breast"));
    let mut threads = Vec::new();
    for _ in 0..16 {
        let (url, artifact) = (linear_server.url.clone(), linear.clone());
        threads.push(std::thread::spawn(move || {
            let p = Party::new(&url, &artifact, "logreg_iris");
            for i in 0..3 {
                p.ask(&url, i..i + 2);
            }
        }));
    }
    for i in 0..4 {
        let (url, p) = (tree_server.url.clone(), tree_party.clone());
        threads.push(std::thread::spawn(move || p.ask(&url, i..i + 1)));
    }
    for t in threads {
        t.join().expect("every client was answered correctly");
    }
    linear_server.assert_no_panic();
    tree_server.assert_no_panic();
}

/// Killed during a request and restarted on the same key directory, the server still
/// holds the registered key and the retried request succeeds.
#[test]
fn a_killed_server_restarts_with_its_keys() {
    let d = tmp("serve-kill");
    let tree = compile(&d, "dt_breast");
    let keys = d.join("keys");
    let mut served = Served::start(&server_part(&tree), &keys, &[]);
    let party = Party::new(&served.url, &tree, "dt_breast");
    let inputs = party
        .client
        .encrypt(&party.secret, &party.samples)
        .unwrap()
        .to_bytes();
    let path = format!("/v1/predict?key={}", party.secret.key_id);
    let url = served.url.clone();
    let (body, path2) = (inputs.clone(), path.clone());
    let request = std::thread::spawn(move || {
        agent()
            .post(format!("{url}{path2}"))
            .send(&body[..])
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(800));
    served.kill();
    let outcome = request.join().unwrap();
    assert!(
        !matches!(outcome, Ok(200)),
        "the request was cut by the kill: {outcome:?}"
    );
    let restarted = Served::start(&server_part(&tree), &keys, &[]);
    party.ask(&restarted.url, 0..4);
    restarted.assert_no_panic();
}

/// Two server processes on one key directory: a key registered with one serves
/// requests sent to the other (replicas share nothing else).
#[test]
fn two_servers_share_one_key_directory() {
    let d = tmp("serve-replicas");
    let linear = compile(&d, "logreg_iris");
    let keys = d.join("keys");
    let a = Served::start(&server_part(&linear), &keys, &[]);
    let b = Served::start(&server_part(&linear), &keys, &[]);
    let party = Party::new(&a.url, &linear, "logreg_iris");
    party.ask(&b.url, 0..4);
    party.ask(&a.url, 1..3);
    a.assert_no_panic();
    b.assert_no_panic();
}

/// At least 50 corrupt, truncated, mismatched or oversized requests: each answered 4xx
/// with a JSON message, no panic, and the server still serves a valid request after.
#[test]
fn corrupt_requests_get_4xx_and_the_server_stays_healthy() {
    let d = tmp("serve-corrupt");
    let linear = compile(&d, "logreg_iris");
    let other = tmp("serve-corrupt-other");
    let other_artifact = compile(&other, "linreg_diabetes");
    let served = Served::start(
        &server_part(&linear),
        &d.join("keys"),
        &["--max-samples", "4"],
    );
    let party = Party::new(&served.url, &linear, "logreg_iris");
    let (_, part) = call(&served.url, "/v1/client", None);
    let client = Client::from_bytes(&part).unwrap();
    let (secret2, evaluation2) = client.keygen();
    let valid_inputs = party
        .client
        .encrypt(&party.secret, &party.samples[..2])
        .unwrap()
        .to_bytes();
    let other_client = Client::new(
        fhec::files::load_artifact(&other_artifact)
            .unwrap()
            .0
            .client()
            .clone(),
    )
    .unwrap();
    let (other_secret, other_evaluation) = other_client.keygen();
    let other_x = fhec::files::load_samples(
        &fixture("linreg_diabetes").join("test_x.npy"),
        other_client.graph(),
    )
    .unwrap();
    let other_inputs = other_client
        .encrypt(&other_secret, &other_x[..1])
        .unwrap()
        .to_bytes();
    let key = party.secret.key_id;
    let predict = format!("/v1/predict?key={key}");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };
    let mut corpus: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    for n in [0, 1, 7, 100, 4096, 65536] {
        corpus.push(("/v1/keys".into(), Some(random(n))));
        corpus.push((predict.clone(), Some(random(n))));
    }
    let eval = evaluation2.to_bytes();
    for cut in [1, 10, 100, eval.len() / 2, eval.len() - 1] {
        corpus.push(("/v1/keys".into(), Some(eval[..cut].to_vec())));
    }
    for cut in [1, 50, valid_inputs.len() / 2, valid_inputs.len() - 1] {
        corpus.push((predict.clone(), Some(valid_inputs[..cut].to_vec())));
    }
    for at in [0, 20, 120, eval.len() - 3] {
        let mut b = eval.clone();
        b[at] ^= 0x21;
        corpus.push(("/v1/keys".into(), Some(b)));
    }
    for at in [0, 30, 60, valid_inputs.len() - 2] {
        let mut b = valid_inputs.clone();
        b[at] ^= 0x10;
        corpus.push((predict.clone(), Some(b)));
    }
    let secret_key_file = party.secret.to_bytes().to_vec();
    let wrong_files = [
        secret_key_file.clone(),
        other_evaluation.to_bytes(),
        part.clone(),
        std::fs::read(server_part(&linear)).unwrap(),
        valid_inputs.clone(),
    ];
    for f in &wrong_files {
        corpus.push(("/v1/keys".into(), Some(f.clone())));
    }
    for f in [&eval, &secret_key_file, &part, &other_inputs] {
        corpus.push((predict.clone(), Some(f.clone())));
    }
    // inputs under another key than the one named, a key nobody registered, bad queries
    let under_secret2 = client
        .encrypt(&secret2, &party.samples[..1])
        .unwrap()
        .to_bytes();
    corpus.push((predict.clone(), Some(under_secret2.clone())));
    corpus.push((
        format!("/v1/predict?key={}", secret2.key_id),
        Some(under_secret2),
    ));
    for q in [
        "/v1/predict",
        "/v1/predict?key=",
        "/v1/predict?key=xyz",
        "/v1/predict?other=1",
    ] {
        corpus.push((q.into(), Some(valid_inputs.clone())));
    }
    // too many samples, and bodies over the model's limits
    let five = party
        .client
        .encrypt(
            &party.secret,
            &party.samples[..4]
                .iter()
                .chain(&party.samples[..1])
                .cloned()
                .collect::<Vec<_>>(),
        )
        .unwrap();
    corpus.push((predict.clone(), Some(five.to_bytes())));
    for path in ["/v1/nothing", "/v2/predict", "/v1/keys", "/v1/predict"] {
        corpus.push((path.into(), None));
    }
    for (i, (path, body)) in corpus.iter().enumerate() {
        let (status, answer) = call(&served.url, path, body.as_deref());
        assert!(
            (400..500).contains(&status),
            "request {i} ({path}, {} bytes): {status} {}",
            body.as_ref().map_or(0, Vec::len),
            String::from_utf8_lossy(&answer)
        );
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_else(|_| {
            panic!(
                "request {i}: not JSON: {}",
                String::from_utf8_lossy(&answer)
            )
        });
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "request {i}: {v}"
        );
    }
    // bodies declared over the model's limits are refused before they are sent
    let mut refused = 0;
    for path in [predict.as_str(), "/v1/keys"] {
        for size in [(2 << 20) + 1, 8 << 20, 1 << 40] {
            let (status, answer) = declared_only(&served.url, path, size);
            assert_eq!(status, 413, "{path} declaring {size} bytes: {answer}");
            assert!(answer.contains("\"error\""), "{answer}");
            refused += 1;
        }
    }
    assert!(
        corpus.len() + refused >= 50,
        "{} requests",
        corpus.len() + refused
    );
    let (status, _) = call(&served.url, "/v1/health", None);
    assert_eq!(status, 200);
    party.ask(&served.url, 0..2);
    // a secret key is never stored
    let stored: Vec<String> = walk(&d.join("keys"));
    for f in &stored {
        let head = std::fs::read(f).unwrap();
        assert!(
            head.starts_with(b"FHEC-EVALUATION-KEY ")
                || (f.ends_with(".prepared")
                    && head.starts_with(b"{\"format\":\"fhec-prepared-key/1\"")),
            "{f} is not an evaluation key or its prepared form"
        );
    }
    served.assert_no_panic();
    let _ = EncryptedInputs::from_bytes(&valid_inputs).unwrap();
}

/// A POST whose headers declare `length` bytes (and `Expect: 100-continue`), with no
/// body sent: the server must answer from the headers. Returns (status, body).
fn declared_only(url: &str, path: &str, length: u64) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// SIGTERM while a request is being evaluated: the request is answered, then the server
/// exits cleanly.
#[cfg(unix)]
#[test]
fn graceful_shutdown_finishes_the_requests_in_flight() {
    let d = tmp("serve-shutdown");
    let tree = compile(&d, "dt_breast");
    let mut served = Served::start(&server_part(&tree), &d.join("keys"), &[]);
    let party = Arc::new(Party::new(&served.url, &tree, "dt_breast"));
    let (url, p) = (served.url.clone(), party.clone());
    let request = std::thread::spawn(move || p.ask(&url, 0..3));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling a child process this test started and still owns.
    unsafe {
        libc::kill(served.child.id() as i32, libc::SIGTERM);
    }
    request
        .join()
        .expect("the request in flight was answered, and correctly");
    let status = served.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    served.assert_no_panic();
    let log = std::fs::read_to_string(&served.stderr).unwrap();
    assert!(
        log.contains("stopped after finishing the requests in flight"),
        "{log}"
    );
}

/// A counter of `/metrics`.
fn counter(url: &str, name: &str) -> f64 {
    let (_, text) = call(url, "/metrics", None);
    let text = String::from_utf8(text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A key is converted to the Fourier domain once: the first server stores its prepared
/// form beside the key file, a restarted server restores it without converting, and a
/// damaged prepared form is ignored, made again and stored again.
#[test]
fn a_prepared_key_is_stored_once_and_restored_by_later_processes() {
    let d = tmp("serve-prepared");
    let tree = compile(&d, "dt_breast");
    let keys = d.join("keys");
    let conversions = |url: &str| {
        (
            counter(url, "fhec_key_preparations_total"),
            counter(url, "fhec_key_restores_total"),
        )
    };
    let first = Served::start(&server_part(&tree), &keys, &[]);
    let party = Party::new(&first.url, &tree, "dt_breast");
    party.ask(&first.url, 0..2);
    assert_eq!(conversions(&first.url), (1.0, 0.0));
    first.assert_no_panic();
    drop(first);
    let stored: Vec<PathBuf> = walk(&keys)
        .into_iter()
        .filter(|p| p.ends_with(".prepared"))
        .map(PathBuf::from)
        .collect();
    assert_eq!(stored.len(), 1, "{:?}", walk(&keys));

    let second = Served::start(&server_part(&tree), &keys, &[]);
    party.ask(&second.url, 1..3);
    assert_eq!(
        conversions(&second.url),
        (0.0, 1.0),
        "restored, not converted"
    );
    second.assert_no_panic();
    drop(second);

    // one flipped bit in the keys: the CRC refuses it, the key is converted again
    let mut bytes = std::fs::read(&stored[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&stored[0], &bytes).unwrap();
    let third = Served::start(&server_part(&tree), &keys, &[]);
    party.ask(&third.url, 2..4);
    assert_eq!(
        conversions(&third.url),
        (1.0, 0.0),
        "a damaged form is ignored"
    );
    third.assert_no_panic();
    drop(third);
    let fourth = Served::start(&server_part(&tree), &keys, &[]);
    party.ask(&fourth.url, 0..1);
    assert_eq!(conversions(&fourth.url), (0.0, 1.0), "and stored again");
    fourth.assert_no_panic();
}
