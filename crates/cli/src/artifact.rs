//! The compiled-model artifact (docs/FORMATS.md): one file, a header line
//! `FHEC-ARTIFACT <format version> <payload bytes> <fnv1a-64 of payload>` followed by a
//! JSON payload holding a server part and a client part. It never holds a key.

use std::path::Path;

use anyhow::{bail, Context, Result};
use fhec_backend_tfhe::ParamChoice;
use fhec_frontend_onnx::FloatGraph;
use fhec_ir::{Circuit, CircuitInfo};
use fhec_quant::{ClientSpec, QuantConfig};
use serde::{Deserialize, Serialize};

pub const MAGIC: &str = "FHEC-ARTIFACT";
pub const FORMAT_VERSION: u32 = 2;

/// What the server needs: the circuit and the parameters its evaluation keys must have.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServerPart {
    pub circuit: Circuit,
    pub params: ParamChoice,
}

/// What the client needs: input quantization, output dequantization, the float model
/// (for the post-processing tail and `--mode clear`), and the parameters for keygen.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientPart {
    pub spec: ClientSpec,
    pub graph: FloatGraph,
    pub params: ParamChoice,
    pub quant: QuantConfig,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub fhec_version: String,
    /// The ONNX file it was compiled from (file name only).
    pub source: String,
    pub server: ServerPart,
    pub client: ClientPart,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

impl Artifact {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let payload = serde_json::to_vec(self)?;
        let mut out = format!(
            "{MAGIC} {FORMAT_VERSION} {} {:016x}\n",
            payload.len(),
            fnv1a(&payload)
        )
        .into_bytes();
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Reads and validates an artifact: header, version, size, checksum, then the
    /// circuit through the IR verifier and the client/server consistency.
    pub fn load(path: &Path) -> Result<(Artifact, CircuitInfo)> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let at = |m: String| anyhow::anyhow!("{}: {m}", path.display());
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .filter(|&i| i < 200)
            .ok_or_else(|| at("not an fhec artifact (no header)".into()))?;
        let header = std::str::from_utf8(&bytes[..nl])
            .map_err(|_| at("not an fhec artifact (bad header)".into()))?;
        let fields: Vec<&str> = header.split(' ').collect();
        if fields.len() != 4 || fields[0] != MAGIC {
            bail!(at("not an fhec artifact (bad header)".into()));
        }
        let version: u32 = fields[1]
            .parse()
            .map_err(|_| at("bad format version".into()))?;
        if version != FORMAT_VERSION {
            bail!(at(format!("artifact format version {version}, this fhec reads version {FORMAT_VERSION}: recompile the model")));
        }
        let payload = &bytes[nl + 1..];
        let len: usize = fields[2]
            .parse()
            .map_err(|_| at("bad payload size".into()))?;
        if payload.len() != len {
            bail!(at(format!(
                "corrupted artifact: payload is {} bytes, header says {len}",
                payload.len()
            )));
        }
        if format!("{:016x}", fnv1a(payload)) != fields[3] {
            bail!(at("corrupted artifact: checksum mismatch".into()));
        }
        let a: Artifact =
            serde_json::from_slice(payload).map_err(|e| at(format!("corrupted artifact: {e}")))?;
        let info = fhec_ir::verify(&a.server.circuit).map_err(|e| at(e.to_string()))?;
        if !consistent(&a) {
            bail!(at(
                "inconsistent artifact: client and server parts disagree".into()
            ));
        }
        Ok((a, info))
    }

    /// True when `path` holds something fhec may overwrite (an fhec artifact).
    pub fn is_artifact_file(path: &Path) -> bool {
        std::fs::File::open(path)
            .and_then(|mut f| {
                let mut buf = [0u8; 13];
                std::io::Read::read_exact(&mut f, &mut buf).map(|_| buf == MAGIC.as_bytes())
            })
            .unwrap_or(false)
    }
}

/// The client spec matches the circuit and the float graph it refers to (so a
/// hand-edited artifact is refused instead of crashing later).
fn consistent(a: &Artifact) -> bool {
    let (c, spec, g) = (&a.server.circuit, &a.client.spec, &a.client.graph);
    let value_ok = |v: fhec_frontend_onnx::ValueId| (v.0 as usize) < g.values.len();
    let graph_ok = g
        .nodes
        .iter()
        .all(|n| n.inputs.iter().chain(&n.outputs).all(|&v| value_ok(v)))
        && g.inputs.iter().chain(&g.outputs).all(|&v| value_ok(v));
    graph_ok
        && a.client.params == a.server.params
        && spec.inputs.len() == c.inputs.len()
        && spec.outputs.len() == c.outputs.len()
        && spec.inputs.iter().zip(&c.inputs).all(|(q, &id)| {
            value_ok(q.value)
                && q.shape == c.node(id).shape
                && q.scale > 0.0
                && q.bits >= 1
                && q.bits <= 16
        })
        && spec.outputs.iter().zip(&c.outputs).all(|(d, &id)| {
            let n = c.node(id).numel();
            value_ok(d.value)
                && d.scale.len() == n
                && d.offset.len() == n
                && g.value(d.value).shape.iter().product::<usize>() == n
        })
        && spec.tail.iter().all(|&i| i < g.nodes.len())
}
