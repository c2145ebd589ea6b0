//! Reader for legacy (pre-1.6, non-zip) `torch.save` files.
//!
//! The EfficientNet-Lite weights lookalike ships with were saved by an old PyTorch, in the format
//! that predates the zip container (and which candle's reader does not handle). The layout is:
//!
//! 1. five consecutive pickles: the magic number `0x1950a86a20f9469cfc6c`, the protocol version
//!    (1001), a dict of system info (endianness, type sizes), the saved object (here a
//!    `collections.OrderedDict` state dict) and the list of storage keys;
//! 2. for each key in that list, in that order: a little-endian `u64` element count followed by
//!    the raw little-endian bytes of the storage.
//!
//! Tensors inside the state dict are `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, requires_grad, hooks)` calls, where `storage` is a *persistent id*
//! `('storage', torch.FloatStorage, key, location, numel, view_metadata)` that points into part 2.
//!
//! Only a small pickle virtual machine is needed for this (`pickle.rs`); this file gives it torch's
//! meaning of persistent ids and calls (`TorchLegacy`): no Python objects are built, calls to
//! unknown globals become opaque values, and every malformed input (unknown opcode, truncated
//! file, wrong types, out-of-range strides) yields an error rather than a panic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Context, Result};

mod pickle;

use pickle::{Host, Unpickler};

/// A pickle value as torch's files hold them: Python's plus storages and tensors.
type Value = pickle::Value<Torch>;

/// The magic number that opens every legacy torch.save file.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The only legacy serialization protocol version PyTorch ever wrote.
const PROTOCOL_VERSION: i128 = 1001;

/// A dense, row-major tensor converted to `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The named tensors of a saved `state_dict`, in file order.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl StateDict {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// Like [`StateDict::get`], but a missing tensor is an error naming it.
    pub fn require(&self, name: &str) -> Result<&Tensor> {
        self.get(name).ok_or_else(|| anyhow!("tensor {name:?} is missing from the state dict"))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names and tensors in the order they were saved.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    fn insert(&mut self, name: String, tensor: Tensor) {
        if let Some(&i) = self.index.get(&name) {
            self.entries[i].1 = tensor;
        } else {
            self.index.insert(name.clone(), self.entries.len());
            self.entries.push((name, tensor));
        }
    }
}

impl FromIterator<(String, Tensor)> for StateDict {
    /// Builds a state dict in memory (tests, synthetic models); a repeated name keeps the last.
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        let mut sd = StateDict::default();
        for (name, tensor) in iter {
            sd.insert(name, tensor);
        }
        sd
    }
}

/// Reads a legacy torch.save file holding a state dict.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_state_dict(&bytes).with_context(|| format!("reading legacy PyTorch file {}", path.display()))
}

/// Parses the bytes of a legacy torch.save file holding a state dict.
pub fn parse_state_dict(bytes: &[u8]) -> Result<StateDict> {
    if bytes.starts_with(b"PK\x03\x04") {
        bail!("this is a zip-format torch.save file (PyTorch >= 1.6); only the legacy format is supported");
    }
    let mut pos = 0usize;

    let magic = Unpickler::new(bytes, pos, &TorchLegacy).run().context("reading the magic-number pickle")?;
    pos = magic.1;
    ensure!(matches!(magic.0, Value::Int(MAGIC)), "not a legacy torch.save file (wrong magic number)");

    let version = Unpickler::new(bytes, pos, &TorchLegacy).run().context("reading the protocol-version pickle")?;
    pos = version.1;
    ensure!(matches!(version.0, Value::Int(PROTOCOL_VERSION)), "unsupported torch.save protocol version {:?}", version.0);

    let sys_info = Unpickler::new(bytes, pos, &TorchLegacy).run().context("reading the system-info pickle")?;
    pos = sys_info.1;
    check_sys_info(&sys_info.0)?;

    let object = Unpickler::new(bytes, pos, &TorchLegacy).run().context("reading the state-dict pickle")?;
    pos = object.1;

    let keys = Unpickler::new(bytes, pos, &TorchLegacy).run().context("reading the storage-key pickle")?;
    pos = keys.1;
    let keys = match keys.0 {
        Value::List(items) => {
            items.borrow().iter().map(|k| k.as_str().map(str::to_owned).ok_or_else(|| anyhow!("storage key {k:?} is not a string"))).collect::<Result<Vec<_>>>()?
        }
        other => bail!("expected a list of storage keys, found {other:?}"),
    };

    // The raw storages follow, one per key, in the key list's order.
    let mut storages: HashMap<String, RawStorage> = HashMap::new();
    for key in keys {
        let numel = read_u64(bytes, pos).with_context(|| format!("reading the element count of storage {key:?}"))?;
        pos += 8;
        let storage_type = object_storage_type(&object.0, &key).ok_or_else(|| anyhow!("storage {key:?} is listed but no tensor refers to it, so its element size is unknown"))?;
        let byte_len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(storage_type.element_size()))
            .ok_or_else(|| anyhow!("storage {key:?} is impossibly large ({numel} elements)"))?;
        let end = pos
            .checked_add(byte_len)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| anyhow!("file is truncated: storage {key:?} needs {byte_len} bytes at offset {pos}, file has {}", bytes.len()))?;
        storages.insert(key, RawStorage { dtype: storage_type, bytes: &bytes[pos..end] });
        pos = end;
    }

    let dict = match &object.0 {
        Value::Dict(items) => items.clone(),
        other => bail!("the saved object is not a state dict (found {other:?})"),
    };
    let mut out = StateDict::default();
    for (key, value) in dict.borrow().iter() {
        let name = key.as_str().ok_or_else(|| anyhow!("state-dict key {key:?} is not a string"))?.to_owned();
        let tensor = match value {
            Value::Object(Torch::Tensor(t)) => materialise(t, &storages).with_context(|| format!("rebuilding tensor {name:?}"))?,
            other => bail!("state-dict entry {name:?} is not a tensor (found {other:?})"),
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

fn check_sys_info(info: &Value) -> Result<()> {
    if let Value::Dict(items) = info {
        for (k, v) in items.borrow().iter() {
            if k.as_str() == Some("little_endian") && matches!(v, Value::Bool(false)) {
                bail!("big-endian torch.save files are not supported");
            }
        }
    }
    Ok(())
}

/// Finds the storage type of `key` by looking through the tensors of the saved object.
fn object_storage_type(object: &Value, key: &str) -> Option<StorageType> {
    let Value::Dict(items) = object else { return None };
    let items = items.borrow();
    items.iter().find_map(|(_, v)| match v {
        Value::Object(Torch::Tensor(t)) if t.storage.key == key => Some(t.storage.dtype),
        _ => None,
    })
}

fn read_u64(bytes: &[u8], pos: usize) -> Result<u64> {
    let slice = pos.checked_add(8).and_then(|end| bytes.get(pos..end)).ok_or_else(|| anyhow!("file is truncated at offset {pos} (expected 8 more bytes)"))?;
    let mut buf = [0u8; 8];
    buf.copy_from_slice(slice);
    Ok(u64::from_le_bytes(buf))
}

/// Element types of the legacy `torch.*Storage` classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    Float,
    Double,
    Half,
    BFloat16,
    Long,
    Int,
    Short,
    Char,
    Byte,
    Bool,
}

impl StorageType {
    fn from_class(module: &str, name: &str) -> Option<StorageType> {
        if module != "torch" {
            return None;
        }
        Some(match name {
            "FloatStorage" => StorageType::Float,
            "DoubleStorage" => StorageType::Double,
            "HalfStorage" => StorageType::Half,
            "BFloat16Storage" => StorageType::BFloat16,
            "LongStorage" => StorageType::Long,
            "IntStorage" => StorageType::Int,
            "ShortStorage" => StorageType::Short,
            "CharStorage" => StorageType::Char,
            "ByteStorage" => StorageType::Byte,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    fn element_size(self) -> usize {
        match self {
            StorageType::Double | StorageType::Long => 8,
            StorageType::Float | StorageType::Int => 4,
            StorageType::Half | StorageType::BFloat16 | StorageType::Short => 2,
            StorageType::Char | StorageType::Byte | StorageType::Bool => 1,
        }
    }

    /// Reads element `i` of `bytes` as f32. Integers (e.g. `num_batches_tracked`) are converted
    /// too: they are never used as weights, and one element type keeps the API small.
    fn read(self, bytes: &[u8], i: usize) -> f32 {
        let n = self.element_size();
        let b = &bytes[i * n..i * n + n];
        match self {
            StorageType::Float => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            StorageType::Double => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
            StorageType::Half => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            StorageType::BFloat16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
            StorageType::Long => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
            StorageType::Int => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            StorageType::Short => i16::from_le_bytes([b[0], b[1]]) as f32,
            StorageType::Char => b[0] as i8 as f32,
            StorageType::Byte | StorageType::Bool => b[0] as f32,
        }
    }
}

/// IEEE 754 half to single precision (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = mant * 2^-24.
            let v = mant as f32 * f32::powi(2.0, -24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

struct RawStorage<'a> {
    dtype: StorageType,
    bytes: &'a [u8],
}

impl RawStorage<'_> {
    fn numel(&self) -> usize {
        self.bytes.len() / self.dtype.element_size()
    }
}

/// A storage reference from a persistent id.
#[derive(Debug, Clone, PartialEq)]
struct StorageRef {
    dtype: StorageType,
    key: String,
    /// Element offset into the root storage (non-zero only for legacy storage views).
    view_offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Copies a (possibly strided) tensor out of its storage into a dense row-major one.
fn materialise(t: &TensorRef, storages: &HashMap<String, RawStorage>) -> Result<Tensor> {
    let storage = storages.get(&t.storage.key).ok_or_else(|| anyhow!("storage {:?} is not in the file", t.storage.key))?;
    ensure!(storage.dtype == t.storage.dtype, "storage {:?} is used with two element types", t.storage.key);
    ensure!(t.size.len() == t.stride.len(), "size {:?} and stride {:?} differ in rank", t.size, t.stride);
    let numel = t.size.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| anyhow!("shape {:?} overflows", t.size))?;
    let base = t.storage.view_offset.checked_add(t.offset).ok_or_else(|| anyhow!("storage offset overflows"))?;
    if numel > 0 {
        // The largest element index the tensor touches must lie inside the storage.
        let mut last = base;
        for (&d, &s) in t.size.iter().zip(&t.stride) {
            last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or_else(|| anyhow!("strides overflow"))?;
        }
        ensure!(
            last < storage.numel(),
            "tensor of size {:?}, stride {:?}, offset {} reaches element {last} of a storage with {} elements",
            t.size,
            t.stride,
            base,
            storage.numel()
        );
    }
    let mut data = Vec::with_capacity(numel);
    if numel > 0 {
        let contiguous = {
            let mut expected = 1usize;
            let mut ok = true;
            for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
                if d != 1 && s != expected {
                    ok = false;
                }
                expected *= d;
            }
            ok
        };
        if contiguous {
            data.extend((base..base + numel).map(|i| storage.dtype.read(storage.bytes, i)));
        } else {
            let rank = t.size.len();
            let mut idx = vec![0usize; rank];
            for _ in 0..numel {
                let at = base + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                data.push(storage.dtype.read(storage.bytes, at));
                for axis in (0..rank).rev() {
                    idx[axis] += 1;
                    if idx[axis] < t.size[axis] {
                        break;
                    }
                    idx[axis] = 0;
                }
            }
        }
    }
    Ok(Tensor { shape: t.size.clone(), data })
}

/// What torch's pickles make of persistent ids and calls: storages and the tensors built on them.
#[derive(Debug, Clone, PartialEq)]
enum Torch {
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// Torch's meaning of a legacy file's pickles, for the pickle VM.
struct TorchLegacy;

impl Host for TorchLegacy {
    type Object = Torch;

    fn persistent_load(&self, pid: &Value) -> Result<Value> {
        persistent_load(pid)
    }

    fn call(&self, callable: Value, args: Value) -> Result<Value> {
        call(callable, args)
    }
}

/// Resolves torch's persistent id `('storage', storage_type, key, location, numel, view_metadata)`.
fn persistent_load(pid: &Value) -> Result<Value> {
    let Value::Tuple(items) = pid else { bail!("persistent id {pid:?} is not a tuple") };
    ensure!(items.len() == 6 && items[0].as_str() == Some("storage"), "unsupported persistent id {pid:?}");
    let dtype = match &items[1] {
        Value::Global { module, name } => StorageType::from_class(module, name).ok_or_else(|| anyhow!("unsupported storage type {module}.{name}"))?,
        other => bail!("storage type {other:?} is not a class"),
    };
    let key = items[2].as_str().ok_or_else(|| anyhow!("storage key {:?} is not a string", items[2]))?.to_owned();
    let view_offset = match &items[5] {
        Value::None => 0,
        // (view_key, offset, view_size): a view into the storage named by `key`.
        Value::Tuple(view) if view.len() == 3 => view[1].as_usize().ok_or_else(|| anyhow!("storage view offset {:?} is not an integer", view[1]))?,
        other => bail!("unsupported storage view metadata {other:?}"),
    };
    Ok(Value::Object(Torch::Storage(StorageRef { dtype, key, view_offset })))
}

/// Calls the few globals a state dict uses; anything else becomes an opaque value, so that
/// metadata nobody reads cannot make loading fail.
fn call(callable: Value, args: Value) -> Result<Value> {
    let Value::Global { module, name } = callable else { bail!("cannot call {callable:?}") };
    let Value::Tuple(args) = args else { bail!("arguments of {module}.{name} are not a tuple") };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => {
            ensure!(args.is_empty(), "OrderedDict with arguments is not supported");
            Ok(Value::Dict(Rc::new(RefCell::new(Vec::new()))))
        }
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            ensure!(args.len() >= 4, "{name} needs at least 4 arguments, got {}", args.len());
            let Value::Object(Torch::Storage(storage)) = &args[0] else { bail!("{name}: first argument {:?} is not a storage", args[0]) };
            let offset = args[1].as_usize().ok_or_else(|| anyhow!("{name}: bad storage offset {:?}", args[1]))?;
            let size = args[2].as_usize_tuple().ok_or_else(|| anyhow!("{name}: bad size {:?}", args[2]))?;
            let stride = args[3].as_usize_tuple().ok_or_else(|| anyhow!("{name}: bad stride {:?}", args[3]))?;
            Ok(Value::Object(Torch::Tensor(TensorRef { storage: storage.clone(), offset, size, stride })))
        }
        ("torch._utils", "_rebuild_parameter") => {
            // Parameters wrap a tensor: (data, requires_grad, backward_hooks).
            args.first().cloned().ok_or_else(|| anyhow!("_rebuild_parameter without arguments"))
        }
        _ => Ok(Value::Opaque { module, name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::Assets;

    /// Writes pickle opcodes by hand, the way torch.save's protocol-2 pickler does.
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn op(&mut self, op: u8) -> &mut Self {
            self.0.push(op);
            self
        }
        fn proto(&mut self) -> &mut Self {
            self.0.extend([0x80, 2]);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn int(&mut self, v: u8) -> &mut Self {
            self.0.extend([b'K', v]);
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.0.push(b'c');
            self.0.extend(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn put(&mut self, i: u8) -> &mut Self {
            self.0.extend([b'q', i]);
            self
        }
        fn get(&mut self, i: u8) -> &mut Self {
            self.0.extend([b'h', i]);
            self
        }
        fn tuple_of(&mut self, items: &[u8]) -> &mut Self {
            self.op(b'(');
            for &i in items {
                self.int(i);
            }
            self.op(b't')
        }
    }

    /// Emits one `_rebuild_tensor_v2` call (the global is memo slot 1, OrderedDict slot 0).
    fn tensor(p: &mut Pickle, storage_class: &str, key: &str, numel: u8, offset: u8, size: &[u8], stride: &[u8]) {
        p.get(1).op(b'(');
        p.op(b'(').str("storage").global("torch", storage_class).str(key).str("cpu").int(numel).op(b'N').op(b't');
        p.op(b'Q').int(offset).tuple_of(size).tuple_of(stride).op(0x89);
        p.get(0).op(b')').op(b'R'); // backward hooks: OrderedDict()
        p.op(b't').op(b'R');
    }

    /// A complete legacy file with three tensors: a transposed 2x3 float view, a float vector at
    /// a non-zero offset in the same storage, and a Long scalar (like `num_batches_tracked`).
    fn tiny_file() -> Vec<u8> {
        let mut p = Pickle::default();
        // 1: magic number as LONG1.
        p.proto();
        p.0.push(0x8a);
        let magic = MAGIC.to_le_bytes();
        p.0.push(10);
        p.0.extend(&magic[..10]);
        p.op(b'.');
        // 2: protocol version.
        p.proto().op(b'M');
        p.0.extend(1001u16.to_le_bytes());
        p.op(b'.');
        // 3: sys info.
        p.proto().op(b'}').op(b'(').str("little_endian").op(0x88).str("protocol_version").op(b'M');
        p.0.extend(1001u16.to_le_bytes());
        p.op(b'u').op(b'.');
        // 4: the state dict.
        p.proto().global("collections", "OrderedDict").put(0).op(b')').op(b'R').put(2).op(b'(');
        p.str("w");
        p.global("torch._utils", "_rebuild_tensor_v2").put(1).op(b'0'); // memoise, then drop
        tensor(&mut p, "FloatStorage", "k0", 6, 0, &[2, 3], &[1, 2]);
        p.str("b");
        tensor(&mut p, "FloatStorage", "k0", 6, 4, &[2], &[1]);
        p.str("n");
        tensor(&mut p, "LongStorage", "k1", 1, 0, &[], &[]);
        p.op(b'u');
        // BUILD with the `_metadata` state, as torch writes it.
        p.op(b'}').str("_metadata").op(b'}').op(b's').op(b'b').op(b'.');
        // 5: storage keys.
        p.proto().op(b']').op(b'(').str("k0").str("k1").op(b'e').op(b'.');
        // Raw storages.
        p.0.extend(6u64.to_le_bytes());
        for v in [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0] {
            p.0.extend(v.to_le_bytes());
        }
        p.0.extend(1u64.to_le_bytes());
        p.0.extend(7i64.to_le_bytes());
        p.0
    }

    #[test]
    fn reads_hand_built_legacy_file() {
        let sd = parse_state_dict(&tiny_file()).expect("tiny file parses");
        assert_eq!(sd.len(), 3);
        assert_eq!(sd.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["w", "b", "n"]);
        // Storage [0..6] viewed as 2x3 with strides (1, 2): rows are [0, 2, 4] and [1, 3, 5].
        let w = sd.require("w").unwrap();
        assert_eq!(w.shape, [2, 3]);
        assert_eq!(w.data, [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        let b = sd.require("b").unwrap();
        assert_eq!(b.shape, [2]);
        assert_eq!(b.data, [4.0, 5.0]);
        let n = sd.require("n").unwrap();
        assert!(n.shape.is_empty());
        assert_eq!(n.data, [7.0]);
        assert!(sd.require("missing").is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = tiny_file();
        for len in 0..file.len() {
            assert!(parse_state_dict(&file[..len]).is_err(), "prefix of {len} bytes parsed");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let err = parse_state_dict(b"\x80\x02\xff.").unwrap_err();
        assert!(format!("{err:#}").contains("unsupported pickle opcode 0xff"), "{err:#}");
        assert!(parse_state_dict(b"PK\x03\x04rest").is_err());
        assert!(parse_state_dict(b"").is_err());
        // A deterministic pseudo-random byte soup, and every single-byte corruption of the tiny
        // file: errors or (rarely) a different parse are fine, panics are not.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let soup: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(parse_state_dict(&soup).is_err());
        let file = tiny_file();
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x5a;
            let _ = parse_state_dict(&bad);
        }
    }

    #[test]
    fn out_of_range_strides_are_rejected() {
        let mut file = tiny_file();
        // Make "b" start at offset 5: elements 5 and 6 of a 6-element storage.
        let needle = [b'Q', b'K', 4];
        let at = file.windows(3).position(|w| w == needle).unwrap();
        file[at + 2] = 5;
        let err = parse_state_dict(&file).unwrap_err();
        assert!(format!("{err:#}").contains("reaches element 6"), "{err:#}");
    }

    #[test]
    fn half_precision_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), f32::powi(2.0, -24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn reads_real_lite0_weights() {
        let path = match Assets::from_env().efficientnet_weights("lite0") {
            Ok(path) => path,
            Err(e) => {
                println!("skipping: {e:#}");
                return;
            }
        };
        let sd = read_state_dict(&path).expect("lite0 weights parse");
        let stem = sd.require("_conv_stem.weight").unwrap();
        assert_eq!(stem.shape, [32, 3, 3, 3]);
        assert_eq!(sd.require("_fc.weight").unwrap().shape, [1000, 1280]);
        assert_eq!(sd.require("_fc.bias").unwrap().shape, [1000]);
        assert!(sd.contains("_blocks.0._depthwise_conv.weight"));
        assert!(!sd.contains("_blocks.0._expand_conv.weight"));
        assert!(stem.data.iter().all(|v| v.is_finite()));
        let var = sd.require("_bn0.running_var").unwrap();
        // Variances can be exactly 0 for dead channels, never negative.
        assert!(var.data.iter().all(|&v| v >= 0.0), "{:?}", var.data);
        let nbt = sd.iter().filter(|(n, _)| n.ends_with("num_batches_tracked")).count();
        println!("{} tensors ({nbt} num_batches_tracked)", sd.len());
    }
}
