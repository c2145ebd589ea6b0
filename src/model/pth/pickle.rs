//! A small pickle virtual machine: enough of Python's pickle format (the opcodes of protocols
//! 0-4) to read the saved object of a `torch.save` file without Python. No Python
//! objects are built: what persistent ids and calls mean is left to a [`Host`], and every
//! malformed input (unknown opcode, truncated bytes, wrong types) is an error, never a panic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Context, Result};

/// A Python dict's items, in insertion order, shared like a Python object.
pub type SharedDict<O> = Rc<RefCell<Vec<(Value<O>, Value<O>)>>>;

/// The values the pickle VM manipulates. Lists and dicts are shared and mutable, as in Python:
/// a memoised dict that is filled afterwards must be seen filled when fetched from the memo.
/// `O` is what the [`Host`] makes of persistent ids and calls (torch's storages and tensors).
#[derive(Debug, Clone)]
pub enum Value<O> {
    None,
    Bool(bool),
    Int(i128),
    Float(#[allow(dead_code)] f64),
    Str(String),
    Bytes(#[allow(dead_code)] Vec<u8>),
    Tuple(Rc<Vec<Value<O>>>),
    List(Rc<RefCell<Vec<Value<O>>>>),
    Dict(SharedDict<O>),
    Global {
        module: String,
        name: String,
    },
    /// What the host made of a persistent id or a call.
    Object(O),
    /// The result of calling a global the host does not model (e.g. module metadata).
    /// Kept for `Debug` output in error messages.
    Opaque {
        #[allow(dead_code)]
        module: String,
        #[allow(dead_code)]
        name: String,
    },
}

impl<O> Value<O> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    pub fn as_usize_tuple(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(items) => items.iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }
}

/// What a pickle's persistent ids and calls mean: the program that wrote it decides, so the VM
/// hands both to its host (torch's, in `super`), which makes values of its own from them.
pub trait Host {
    type Object: Clone + std::fmt::Debug;
    /// The value a persistent id (`BINPERSID`) stands for.
    fn persistent_load(&self, pid: &Value<Self::Object>) -> Result<Value<Self::Object>>;
    /// `callable(*args)` (`REDUCE`, `NEWOBJ`).
    fn call(&self, callable: Value<Self::Object>, args: Value<Self::Object>) -> Result<Value<Self::Object>>;
}

/// A minimal pickle virtual machine (protocols 0-4 binary opcodes, no arbitrary objects).
pub struct Unpickler<'a, H: Host> {
    bytes: &'a [u8],
    pos: usize,
    host: &'a H,
    stack: Vec<Value<H::Object>>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value<H::Object>>,
}

impl<'a, H: Host> Unpickler<'a, H> {
    /// A VM that reads the pickle starting at byte `pos` of `bytes`.
    pub fn new(bytes: &'a [u8], pos: usize, host: &'a H) -> Self {
        Unpickler { bytes, pos, host, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    /// Runs to the STOP opcode; returns the value and the offset just after STOP.
    pub fn run(mut self) -> Result<(Value<H::Object>, usize)> {
        loop {
            let at = self.pos;
            let op = self.take(1)?[0];
            if self.step(op).with_context(|| format!("pickle opcode 0x{op:02x} at byte {at}"))? {
                let value = self.pop()?;
                return Ok((value, self.pos));
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let bytes = self.bytes;
        let end =
            self.pos.checked_add(n).filter(|&e| e <= bytes.len()).ok_or_else(|| anyhow!("file is truncated: needed {n} bytes at offset {}, file has {}", self.pos, bytes.len()))?;
        let slice = &bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let len = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("file is truncated: unterminated text line"))?;
        let text = std::str::from_utf8(&rest[..len]).context("text line is not UTF-8")?.to_owned();
        self.pos += len + 1;
        Ok(text)
    }

    fn utf8(&mut self, n: usize) -> Result<Value<H::Object>> {
        let b = self.take(n)?;
        Ok(Value::Str(std::str::from_utf8(b).context("string is not UTF-8")?.to_owned()))
    }

    fn push(&mut self, v: Value<H::Object>) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value<H::Object>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        ensure!(self.stack.len() > floor, "pickle stack underflow");
        self.stack.pop().ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value<H::Object>> {
        self.stack.last_mut().ok_or_else(|| anyhow!("pickle stack is empty"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value<H::Object>>> {
        let mark = self.marks.pop().ok_or_else(|| anyhow!("no MARK on the pickle stack"))?;
        ensure!(mark <= self.stack.len(), "pickle MARK is above the stack top");
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, i: u32) -> Result<Value<H::Object>> {
        self.memo.get(&i).cloned().ok_or_else(|| anyhow!("memo slot {i} is empty"))
    }

    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = self.stack.last().cloned().ok_or_else(|| anyhow!("nothing to memoise"))?;
        self.memo.insert(i, v);
        Ok(())
    }

    /// Executes one opcode; returns true on STOP.
    fn step(&mut self, op: u8) -> Result<bool> {
        match op {
            0x80 => {
                // PROTO
                let proto = self.u8()?;
                ensure!(proto <= 5, "unsupported pickle protocol {proto}");
            }
            0x95 => {
                // FRAME: framing is only a read-ahead hint.
                self.take(8)?;
            }
            b'.' => return Ok(true),
            b'(' => self.marks.push(self.stack.len()),
            b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Value::Tuple(Rc::new(items)));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push(Value::Dict(Rc::new(RefCell::new(pairs))));
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Value::Int(v as i128));
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v as i128));
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(v as i128));
            }
            0x8a | 0x8b => {
                // LONG1 / LONG4: little-endian two's complement of n bytes.
                let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                ensure!(n <= 16, "integer of {n} bytes is too large");
                let b = self.take(n)?;
                let mut v: i128 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i128) << (8 * i);
                }
                if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                    v -= 1i128 << (8 * n);
                }
                self.push(Value::Int(v));
            }
            b'G' => {
                let b = self.take(8)?;
                let mut buf = [0u8; 8];
                buf.copy_from_slice(b);
                self.push(Value::Float(f64::from_be_bytes(buf)));
            }
            b'X' => {
                let n = self.u32()? as usize;
                let v = self.utf8(n)?;
                self.push(v);
            }
            0x8c => {
                let n = self.u8()? as usize;
                let v = self.utf8(n)?;
                self.push(v);
            }
            b'T' => {
                let n = self.u32()? as i32;
                ensure!(n >= 0, "negative string length");
                let v = self.utf8(n as usize)?;
                self.push(v);
            }
            b'U' => {
                let n = self.u8()? as usize;
                let v = self.utf8(n)?;
                self.push(v);
            }
            b'B' | b'C' => {
                let n = if op == b'B' { self.u32()? as usize } else { self.u8()? as usize };
                let b = self.take(n)?.to_vec();
                self.push(Value::Bytes(b));
            }
            b'q' => {
                let i = self.u8()? as u32;
                self.memo_put(i)?;
            }
            b'r' => {
                let i = self.u32()?;
                self.memo_put(i)?;
            }
            0x94 => {
                // MEMOIZE: the next free slot.
                let i = u32::try_from(self.memo.len()).context("memo is too large")?;
                self.memo_put(i)?;
            }
            b'h' => {
                let i = self.u8()? as u32;
                let v = self.memo_get(i)?;
                self.push(v);
            }
            b'j' => {
                let i = self.u32()?;
                let v = self.memo_get(i)?;
                self.push(v);
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v);
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global { module, name });
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => self.push(Value::Global { module, name }),
                    (m, n) => bail!("STACK_GLOBAL needs two strings, found {m:?} and {n:?}"),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.host.persistent_load(&pid)?;
                self.push(v);
            }
            b'R' | 0x81 => {
                // REDUCE / NEWOBJ: callable(*args)
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.host.call(callable, args)?;
                self.push(v);
            }
            b'b' => {
                // BUILD: sets object state (e.g. an OrderedDict's `_metadata`); not needed here.
                self.pop()?;
                self.top()?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                dict_of(self.top()?)?.borrow_mut().push((key, value));
            }
            b'u' => {
                let items = self.pop_mark()?;
                let new = pairs(items)?;
                dict_of(self.top()?)?.borrow_mut().extend(new);
            }
            b'a' => {
                let value = self.pop()?;
                list_of(self.top()?)?.borrow_mut().push(value);
            }
            b'e' => {
                let items = self.pop_mark()?;
                list_of(self.top()?)?.borrow_mut().extend(items);
            }
            other => bail!("unsupported pickle opcode 0x{other:02x} ({:?})", other as char),
        }
        Ok(false)
    }
}

fn pairs<O>(items: Vec<Value<O>>) -> Result<Vec<(Value<O>, Value<O>)>> {
    ensure!(items.len().is_multiple_of(2), "odd number of items for a dict");
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn dict_of<O: std::fmt::Debug>(v: &Value<O>) -> Result<&SharedDict<O>> {
    match v {
        Value::Dict(d) => Ok(d),
        other => bail!("SETITEM(S) on a non-dict {other:?}"),
    }
}

fn list_of<O: std::fmt::Debug>(v: &Value<O>) -> Result<&Rc<RefCell<Vec<Value<O>>>>> {
    match v {
        Value::List(l) => Ok(l),
        other => bail!("APPEND(S) on a non-list {other:?}"),
    }
}
