//! ONNX protobuf messages (the few the converter writes), as prost types, and a small graph
//! builder.
//!
//! Hand-written instead of generated so that building lookalike needs no `protoc` and no
//! build script; the field numbers are those of `onnx/onnx.proto`. Only the fields the converter
//! writes (and a reader needs to inspect the result) are declared: prost skips unknown fields
//! when decoding, so these types can also read models written by other tools.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use prost::Message;

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
pub const INT64: i32 = 7;

/// IR version 8 (ONNX 1.10+): understood by every ONNX Runtime release of the last years.
pub const IR_VERSION: i64 = 8;
/// Default-domain opset the converter targets (Clip takes min/max as inputs since 11; 13 is
/// supported everywhere).
pub const OPSET: i64 = 13;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Empty string means the default ONNX domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto.AttributeType` values used here.
pub mod attribute_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(string, tag = "13")]
    pub doc_string: String,
    /// One of [`attribute_type`]; required since IR version 2.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

impl AttributeProto {
    pub fn int(name: &str, value: i64) -> AttributeProto {
        AttributeProto { name: name.into(), i: value, r#type: attribute_type::INT, ..Default::default() }
    }

    pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), ints: values.to_vec(), r#type: attribute_type::INTS, ..Default::default() }
    }

    pub fn float(name: &str, value: f32) -> AttributeProto {
        AttributeProto { name: name.into(), f: value, r#type: attribute_type::FLOAT, ..Default::default() }
    }

    pub fn string(name: &str, value: &str) -> AttributeProto {
        AttributeProto { name: name.into(), s: value.as_bytes().to_vec(), r#type: attribute_type::STRING, ..Default::default() }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian element bytes; the compact encoding for large weights.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(string, tag = "12")]
    pub doc_string: String,
}

impl TensorProto {
    /// A float32 tensor stored as `raw_data`.
    pub fn f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
        let mut raw = Vec::with_capacity(data.len() * 4);
        for v in data {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        TensorProto { name: name.into(), dims: dims.iter().map(|&d| d as i64).collect(), data_type: FLOAT, raw_data: raw, ..Default::default() }
    }

    /// An int64 tensor (shapes, axes).
    pub fn i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
        TensorProto { name: name.into(), dims: dims.iter().map(|&d| d as i64).collect(), data_type: INT64, int64_data: data.to_vec(), ..Default::default() }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// `TypeProto.tensor_type` (field 1 of the `value` oneof; the only member used here).
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProtoTensor {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: a fixed size or a named symbolic one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(oneof = "DimValue", tags = "1, 2")]
    pub value: Option<DimValue>,
    #[prost(string, tag = "3")]
    pub denotation: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(usize),
    /// Symbolic, e.g. the batch size.
    Param(String),
}

impl ValueInfoProto {
    pub fn tensor(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(n) => DimValue::DimValue(*n as i64),
                    Dim::Param(p) => DimValue::DimParam(p.clone()),
                }),
                denotation: String::new(),
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type, shape: Some(TensorShapeProto { dim }) }), denotation: String::new() }),
            doc_string: String::new(),
        }
    }
}

/// Builds a [`GraphProto`] node by node, handing out unique value names.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder { graph: GraphProto { name: name.into(), ..Default::default() }, counter: 0 }
    }

    /// A fresh value name starting with `prefix`.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.input.push(ValueInfoProto::tensor(name, elem_type, dims));
    }

    pub fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.output.push(ValueInfoProto::tensor(name, elem_type, dims));
    }

    /// Adds a constant tensor and returns its name.
    pub fn initializer(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name.clone();
        self.graph.initializer.push(tensor);
        name
    }

    /// Adds a float32 constant and returns its name.
    pub fn initializer_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.initializer(TensorProto::f32(name, dims, data))
    }

    /// Adds a node with the given inputs and explicit output names.
    pub fn node_with_outputs(&mut self, op_type: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<AttributeProto>) {
        let name = self.fresh(op_type);
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name,
            op_type: op_type.into(),
            attribute: attributes,
            ..Default::default()
        });
    }

    /// Adds a single-output node and returns the name of its (fresh) output.
    pub fn node(&mut self, op_type: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op_type.to_lowercase());
        self.node_with_outputs(op_type, inputs, &[&out], attributes);
        out
    }

    /// Wraps the graph in a model for the default-domain `opset`.
    pub fn finish(self, opset: i64, doc: &str) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
            producer_name: "lookalike".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

/// Serialises `model` to `path` atomically: a temporary file in the same directory, then a
/// rename, so a crash or a concurrent reader never sees half a model.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<()> {
    let bytes = model.encode_to_vec();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    // Unique per process and per call: two threads converting the same model must not share one.
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp-{}-{n}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads an ONNX model file (used by tests and diagnostics).
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ModelProto::decode(bytes.as_slice()).with_context(|| format!("decoding ONNX model {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_round_trips_through_protobuf() {
        let mut g = GraphBuilder::new("t");
        g.input("x", FLOAT, &[Dim::Param("batch".into()), Dim::Fixed(4)]);
        let w = g.initializer_f32("w", &[4, 2], &[0.5; 8]);
        let y = g.node("MatMul", &["x", &w], vec![]);
        g.node_with_outputs("Relu", &[&y], &["out"], vec![AttributeProto::int("dummy", 3)]);
        g.output("out", FLOAT, &[Dim::Param("batch".into()), Dim::Fixed(2)]);
        let model = g.finish(OPSET, "test");
        let decoded = ModelProto::decode(model.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, model);
        let graph = decoded.graph.unwrap();
        assert_eq!(graph.node.len(), 2);
        assert_eq!(graph.initializer[0].raw_data.len(), 32);
        let dims = &graph.input[0].r#type.as_ref().unwrap().tensor_type.as_ref().unwrap().shape.as_ref().unwrap().dim;
        assert_eq!(dims[0].value, Some(DimValue::DimParam("batch".into())));
        assert_eq!(dims[1].value, Some(DimValue::DimValue(4)));
    }

    #[test]
    fn field_numbers_match_onnx_proto() {
        // ModelProto.ir_version is field 1 (varint): tag byte 0x08, then 8.
        let m = ModelProto { ir_version: 8, ..Default::default() };
        assert_eq!(m.encode_to_vec(), [0x08, 8]);
        // NodeProto.op_type is field 4 (length-delimited): tag 0x22.
        let n = NodeProto { op_type: "Conv".into(), ..Default::default() };
        assert_eq!(n.encode_to_vec(), [0x22, 4, b'C', b'o', b'n', b'v']);
        // AttributeProto.type is field 20 (varint): tag 0xa0 0x01.
        let a = AttributeProto { r#type: 2, ..Default::default() };
        assert_eq!(a.encode_to_vec(), [0xa0, 0x01, 2]);
        // TensorProto.raw_data is field 9: tag 0x4a.
        let t = TensorProto { raw_data: vec![1], ..Default::default() };
        assert_eq!(t.encode_to_vec(), [0x4a, 1, 1]);
    }

    #[test]
    fn write_model_is_atomic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let model = GraphBuilder::new("g").finish(OPSET, "");
        write_model(&model, &path).unwrap();
        assert_eq!(read_model(&path).unwrap(), model);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name() != "m.onnx").collect();
        assert!(leftovers.is_empty());
    }
}
