//! The compiled model in its three files (docs/FORMATS.md, docs/DEPLOYMENT.md):
//!
//! * [`ClientPart`]: key parameters, input quantization, output dequantization and the
//!   float tail the client runs after decryption; no circuit weight, no table;
//! * [`ServerPart`]: the integer circuit and its crypto parameters, nothing secret, and
//!   the client part (public), so that a server can hand it to its clients;
//! * [`Artifact`]: the developer's file, the server part plus the whole float model (for
//!   `predict --mode clear` and simulation).
//!
//! None holds a key. Each is CBOR (RFC 8949: self-describing like JSON, and exact for
//! every f64, infinities and NaN included) inside the shared frame, and each is
//! validated as soon as it is read: a part may come from someone the reader does not
//! trust.

use fhec_backend_tfhe::{KeyParams, ParamChoice};
use fhec_frontend_onnx::{FloatGraph, ValueId};
use fhec_ir::{Circuit, CircuitInfo};
use fhec_quant::{ClientSpec, Pending, QuantConfig};
use serde::{Deserialize, Serialize};

use crate::frame::{self, Kind, ModelId};
use crate::Error;

/// What the server needs: the circuit and the parameters its evaluation keys must have,
/// and the client part it hands out (public: it holds nothing a client may not see).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerPart {
    pub model_id: ModelId,
    /// The ONNX file it was compiled from (file name only).
    pub source: String,
    pub circuit: Circuit,
    pub params: ParamChoice,
    pub client: ClientPart,
}

/// What the client needs, and all it learns of the model: the key parameters, the
/// input quantizers, the output dequantizers, and the float tail (`graph`: the model's
/// inputs and outputs and only the nodes that run after decryption).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientPart {
    pub model_id: ModelId,
    pub source: String,
    pub keys: KeyParams,
    /// Encoding width W of every ciphertext (`m·2^(63−W)`).
    pub encoding_bits: u32,
    /// Bits kept of each output ciphertext coefficient on the wire.
    pub output_bits: u32,
    /// Value ids and tail indices refer to `graph`.
    pub spec: ClientSpec,
    pub graph: FloatGraph,
}

/// The developer's artifact: the server part (which holds the client part), the whole
/// float model and how it was quantized.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Artifact {
    pub fhec_version: String,
    pub source: String,
    pub quant: QuantConfig,
    /// Every quantization grid and where it came from (model or calibration).
    pub quantization: Vec<fhec_quant::QuantOrigin>,
    /// The whole float model, weights included: never sent to a client.
    pub graph: FloatGraph,
    pub server: ServerPart,
}

/// Widest encoding a client part may ask for (the circuit limit plus sign and slack).
const MAX_ENCODING_BITS: u32 = 30;

/// CBOR of a model part (or of anything serializable, for digests).
#[allow(clippy::expect_used)] // writing CBOR to memory fails only on a type serde cannot encode
pub(crate) fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("model parts serialize to memory");
    out
}

fn to_framed<T: Serialize>(kind: Kind, model: ModelId, value: &T) -> Vec<u8> {
    frame::frame(kind, model, None, &cbor(value))
}

fn from_framed<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    kind: Kind,
) -> Result<(frame::Header, T), Error> {
    let (h, payload) = frame::unframe(bytes, kind)?;
    let value = ciborium::from_reader(payload)
        .map_err(|e| Error::Format(format!("corrupted {}: {e}", kind.describe())))?;
    Ok((h, value))
}

fn check_id(header: &frame::Header, id: ModelId, what: &str) -> Result<(), Error> {
    if header.model != id {
        return Err(Error::Format(format!(
            "corrupted {what}: its header names model {}, its content model {id}",
            header.model
        )));
    }
    Ok(())
}

impl ServerPart {
    pub fn to_bytes(&self) -> Vec<u8> {
        to_framed(Kind::Server, self.model_id, self)
    }

    /// Reads and validates a server part; returns it with its verified circuit info.
    pub fn from_bytes(bytes: &[u8]) -> Result<(ServerPart, CircuitInfo), Error> {
        let (h, part): (_, ServerPart) = from_framed(bytes, Kind::Server)?;
        check_id(&h, part.model_id, "server part")?;
        let info = part.check()?;
        Ok((part, info))
    }

    /// Verifies the circuit, checks that the parameters are sane and cover every
    /// bootstrap it makes, and that the client part belongs to it.
    pub fn check(&self) -> Result<CircuitInfo, Error> {
        let info = fhec_ir::verify(&self.circuit)
            .map_err(|e| Error::Invalid(format!("invalid circuit: {e}")))?;
        let p = &self.params;
        p.keys
            .check()
            .map_err(|e| Error::Unsafe(format!("server part parameters: {e}")))?;
        let precisions: Vec<u32> = p.partitions.iter().map(|q| q.precision).collect();
        let key_precisions: Vec<u32> = p.keys.partitions.iter().map(|q| q.precision).collect();
        if precisions != key_precisions {
            return Err(Error::Invalid(
                "server part parameters: partitions and their keys disagree".into(),
            ));
        }
        let widest = fhec_backend_tfhe::noise::circuit_precisions(&self.circuit, &info)
            .last()
            .copied();
        if let Some(w) = widest.filter(|_| info.pbs_per_sample > 0) {
            if precisions.last().is_none_or(|&k| k < w) {
                return Err(Error::Invalid(format!(
                    "the circuit bootstraps at {w} bits, its parameters reach {:?}",
                    precisions.last()
                )));
            }
        }
        // the stored error probabilities are figures, not evidence: recompute them
        p.recheck(&fhec_backend_tfhe::NoiseBudget::of(&self.circuit, &info))
            .map_err(|e| Error::Unsafe(format!("server part parameters: {e}")))?;
        if !(info.encoding_bits + 2..=64).contains(&p.output_bits) {
            return Err(Error::Invalid(format!(
                "output modulus of {} bits for a {}-bit encoding",
                p.output_bits, info.encoding_bits
            )));
        }
        let client = &self.client;
        client.check()?;
        let c = &self.circuit;
        let circuit_sizes = |ids: &[fhec_ir::NodeId]| -> Vec<usize> {
            ids.iter().map(|&id| c.node(id).numel()).collect()
        };
        let agree = client.model_id == self.model_id
            && client.keys == p.keys
            && client.encoding_bits == info.encoding_bits
            && client.output_bits == p.output_bits
            && client.input_sizes() == circuit_sizes(&c.inputs)
            && client.output_sizes() == circuit_sizes(&c.outputs);
        if !agree {
            return Err(Error::Invalid(
                "inconsistent server part: its circuit and its client part disagree".into(),
            ));
        }
        Ok(info)
    }
}

impl ClientPart {
    pub fn to_bytes(&self) -> Vec<u8> {
        to_framed(Kind::Client, self.model_id, self)
    }

    /// Reads and validates a client part (it may come from a hostile server).
    pub fn from_bytes(bytes: &[u8]) -> Result<ClientPart, Error> {
        let (h, part): (_, ClientPart) = from_framed(bytes, Kind::Client)?;
        check_id(&h, part.model_id, "client part")?;
        part.check()?;
        Ok(part)
    }

    /// Everything a client must know before it generates keys or encrypts under what a
    /// part asks: keys at 128-bit security with sane dimensions and decompositions
    /// (`KeyParams::check`), an encoding and output modulus that fit the torus, and
    /// quantizers and a tail that match the graph they refer to.
    pub fn check(&self) -> Result<(), Error> {
        self.keys
            .check()
            .map_err(|e| Error::Unsafe(format!("the client part asks for unsafe keys: {e}")))?;
        let w = self.encoding_bits;
        if !(1..=MAX_ENCODING_BITS).contains(&w) {
            return Err(Error::Unsafe(format!(
                "the client part asks for a {w}-bit encoding (1 to {MAX_ENCODING_BITS})"
            )));
        }
        if !(w + 2..=64).contains(&self.output_bits) {
            return Err(Error::Invalid(format!(
                "output modulus of {} bits for a {w}-bit encoding",
                self.output_bits
            )));
        }
        let g = &self.graph;
        let bad = |m: String| Err(Error::Invalid(format!("client part: {m}")));
        let crossing: Vec<ValueId> = self.spec.outputs.iter().map(|d| d.value).collect();
        g.check_structure(&crossing)
            .or_else(|e| bad(format!("tail graph: {e}")))?;
        let (head, tail) = (&self.spec.head, &self.spec.tail);
        if head.iter().chain(tail).any(|&i| i >= g.nodes.len())
            || head.windows(2).any(|w| w[0] >= w[1])
            || head.iter().any(|h| tail.contains(h))
        {
            return bad("a head or tail node out of range or listed twice".into());
        }
        // the head runs on raw inputs only: it must not read a decrypted value
        let head_outputs: Vec<ValueId> = head
            .iter()
            .flat_map(|&i| g.nodes[i].outputs.iter().copied())
            .collect();
        for &i in head {
            if g.nodes[i].inputs.iter().any(|v| crossing.contains(v)) {
                return bad(format!(
                    "head node '{}' reads a decrypted value",
                    g.nodes[i].name
                ));
            }
        }
        let numel = |v: ValueId| -> usize { g.value(v).shape.iter().product() };
        if self.spec.inputs.is_empty() {
            return bad("no input quantizer".into());
        }
        for q in &self.spec.inputs {
            let known = (q.value.0 as usize) < g.values.len()
                && (g.inputs.contains(&q.value) || head_outputs.contains(&q.value));
            if !known {
                return bad(format!(
                    "the quantizer of '{}' reads neither a model input nor a head output",
                    q.name
                ));
            }
            let n = numel(q.value);
            let finite_scale = |s: f64| s.is_finite() && s > 0.0;
            if q.shape.iter().product::<usize>() != n
                || !(1..=16).contains(&q.bits)
                || !finite_scale(q.scale)
                || q.zero_point.unsigned_abs() > 1 << 17
                || !(q.per_element.is_empty() || q.per_element.len() == n)
                || !(q.per_element_max.is_empty() || q.per_element_max.len() == n)
                || q.per_element_max
                    .iter()
                    .any(|&m| !(0..1 << q.bits).contains(&m))
                || q.per_element
                    .iter()
                    .any(|&(s, z)| !finite_scale(s) || z.unsigned_abs() > 1 << 17)
            {
                return bad(format!("the quantizer of input '{}' is malformed", q.name));
            }
        }
        for d in &self.spec.outputs {
            if (d.value.0 as usize) >= g.values.len() {
                return bad("an output value out of range".into());
            }
            let n = numel(d.value);
            let pending_ok = d.pending.iter().all(|p| pending_fits(p, n));
            if d.scale.len() != n
                || d.offset.len() != n
                || !(d.remainder_scale.is_empty() || d.remainder_scale.len() == n)
                || !pending_ok
                || d.scale
                    .iter()
                    .chain(&d.offset)
                    .chain(&d.remainder_scale)
                    .any(|v| !v.is_finite())
            {
                return bad(format!(
                    "the dequantizer of '{}' is malformed",
                    g.value(d.value).name
                ));
            }
        }
        Ok(())
    }

    /// Elements of each circuit output, in circuit order.
    pub fn output_sizes(&self) -> Vec<usize> {
        self.spec
            .outputs
            .iter()
            .map(|d| d.circuit_elements())
            .collect()
    }

    /// Elements of each circuit input, in circuit order.
    pub fn input_sizes(&self) -> Vec<usize> {
        self.spec
            .inputs
            .iter()
            .map(|q| q.shape.iter().product())
            .collect()
    }
}

/// Whether a pending op's per-element constants cover the `n` elements it applies to.
fn pending_fits(p: &Pending, n: usize) -> bool {
    match p {
        Pending::Activation(_) => true,
        Pending::Binary { constant, .. } => constant.len() == n,
        Pending::Residual {
            ops,
            slope,
            intercept,
        } => slope.len() == n && intercept.len() == n && ops.iter().all(|p| pending_fits(p, n)),
    }
}

impl Artifact {
    pub fn to_bytes(&self) -> Vec<u8> {
        to_framed(Kind::Model, self.server.model_id, self)
    }

    /// Reads and validates an artifact: both parts, and that they belong together.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Artifact, CircuitInfo), Error> {
        let (h, a): (_, Artifact) = from_framed(bytes, Kind::Model)?;
        check_id(&h, a.server.model_id, "artifact")?;
        let info = a.check()?;
        Ok((a, info))
    }

    /// The client part (held by the server part).
    pub fn client(&self) -> &ClientPart {
        &self.server.client
    }

    pub fn check(&self) -> Result<CircuitInfo, Error> {
        let info = self.server.check()?;
        self.graph
            .check_structure(&[])
            .map_err(|e| Error::Invalid(format!("float model: {e}")))?;
        let inputs: Vec<&str> = self
            .graph
            .inputs
            .iter()
            .map(|&v| self.graph.value(v).name.as_str())
            .collect();
        let client = &self.server.client.graph;
        let client_inputs: Vec<&str> = client
            .inputs
            .iter()
            .map(|&v| client.value(v).name.as_str())
            .collect();
        if inputs != client_inputs {
            return Err(Error::Invalid(
                "inconsistent artifact: the float model and the client part name other inputs"
                    .into(),
            ));
        }
        Ok(info)
    }
}
