//! Fashion-MNIST in its original IDX files: a quick, public catalog of 70,000 28x28 greyscale
//! product images in ten classes, used to evaluate search quality end to end.
//!
//! IDX is a tiny format: a big-endian header (magic number, item count, then the size of each
//! further dimension) followed by the raw values. Fashion-MNIST ships each file gzipped:
//! `train-images-idx3-ubyte.gz` (magic 2051: count, rows, cols, then `u8` pixels row-major,
//! 0 = white background, 255 = ink) and `train-labels-idx1-ubyte.gz` (magic 2049: count, then
//! one `u8` class per image), and the same with the `t10k` prefix for the test split.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0801;

/// Class names, indexed by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// A stack of equally sized greyscale images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    /// `count * rows * cols` bytes, image after image, each row-major.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// The pixels of image `i`, row-major.
    ///
    /// # Panics
    /// If `i >= self.count`, like slice indexing; see [`IdxImages::get`] for the checked form.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.rows * self.cols;
        &self.pixels[i * size..(i + 1) * size]
    }

    /// The pixels of image `i`, or `None` if there is no such image.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        (i < self.count).then(|| self.image(i))
    }

    /// Image `i` as an `image` buffer, e.g. for [`crate::preprocess`].
    ///
    /// Fashion-MNIST stores ink as high values on a 0 background (the inverse of a catalog
    /// photo on white); this returns the values as stored.
    ///
    /// # Panics
    /// If `i >= self.count`.
    pub fn gray_image(&self, i: usize) -> image::GrayImage {
        let (w, h) = (self.cols as u32, self.rows as u32);
        image::GrayImage::from_raw(w, h, self.image(i).to_vec()).expect("an IDX image holds rows * cols bytes")
    }
}

/// Opens an IDX file, transparently un-gzipping it (files are accepted with or without gzip,
/// whatever their name, since people often `gunzip` the downloads).
fn open(path: &Path) -> Result<Box<dyn Read>> {
    use std::io::BufRead;
    let mut file = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let gzipped = file.fill_buf().with_context(|| format!("reading {}", path.display()))?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzipped { Box::new(GzDecoder::new(file)) } else { Box::new(file) })
}

fn read_u32(reader: &mut dyn Read, path: &Path, what: &str) -> Result<u32> {
    let mut buf = [0u8; 4];
    reader.read_exact(&mut buf).with_context(|| format!("{}: truncated header (reading {what})", path.display()))?;
    Ok(u32::from_be_bytes(buf))
}

/// Reads exactly `len` bytes of body, then checks nothing follows. The buffer grows as data
/// arrives rather than being allocated from the header's claim, so a corrupt count cannot
/// trigger a huge allocation.
fn read_body(reader: &mut dyn Read, len: usize, path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    reader.take(len as u64).read_to_end(&mut body).with_context(|| format!("{}: reading {what}", path.display()))?;
    ensure!(body.len() == len, "{}: truncated: the header announces {len} bytes of {what} but the file holds only {}", path.display(), body.len());
    let mut extra = [0u8; 1];
    let more = reader.read(&mut extra).with_context(|| format!("{}: reading past the {what}", path.display()))?;
    ensure!(more == 0, "{}: unexpected data after the {len} bytes of {what} the header announces", path.display());
    Ok(body)
}

fn check_magic(magic: u32, expected: u32, path: &Path, kind: &str) -> Result<()> {
    if magic == expected {
        return Ok(());
    }
    let hint = match magic {
        IMAGES_MAGIC => " (this is an images file)",
        LABELS_MAGIC => " (this is a labels file)",
        m if m >> 16 == 0x1f8b => " (still gzipped: doubly compressed?)",
        _ => "",
    };
    bail!("{}: bad magic number {magic:#010x}, expected {expected:#010x} for an IDX {kind} file{hint}", path.display())
}

/// Reads an IDX images file (magic 2051), gzipped or not.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    let mut reader = open(path)?;
    let magic = read_u32(&mut reader, path, "magic number")?;
    check_magic(magic, IMAGES_MAGIC, path, "images")?;
    let count = read_u32(&mut reader, path, "image count")? as usize;
    let rows = read_u32(&mut reader, path, "row count")? as usize;
    let cols = read_u32(&mut reader, path, "column count")? as usize;
    ensure!(rows > 0 && cols > 0, "{}: images of {rows}x{cols} pixels", path.display());
    let len = count.checked_mul(rows).and_then(|n| n.checked_mul(cols)).with_context(|| format!("{}: {count} images of {rows}x{cols} pixels overflow memory", path.display()))?;
    let pixels = read_body(&mut reader, len, path, "pixels")?;
    Ok(IdxImages { count, rows, cols, pixels })
}

/// Reads an IDX labels file (magic 2049), gzipped or not.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let mut reader = open(path)?;
    let magic = read_u32(&mut reader, path, "magic number")?;
    check_magic(magic, LABELS_MAGIC, path, "labels")?;
    let count = read_u32(&mut reader, path, "label count")? as usize;
    read_body(&mut reader, count, path, "labels")
}

/// The first of `{stem}.gz` and `{stem}` that exists (reported as the `.gz` name if neither).
fn find(dir: &Path, stem: &str) -> PathBuf {
    let gz = dir.join(format!("{stem}.gz"));
    let plain = dir.join(stem);
    if !gz.exists() && plain.exists() {
        plain
    } else {
        gz
    }
}

/// Reads one split of Fashion-MNIST from `dir`: `"train"` (60,000 images) or `"t10k"` (10,000;
/// `"test"` is accepted as an alias). Checks that images and labels agree in count and that
/// every label names a class.
pub fn read_split(dir: &Path, split: &str) -> Result<(IdxImages, Vec<u8>)> {
    let prefix = match split {
        "train" => "train",
        "t10k" | "test" => "t10k",
        other => bail!("unknown Fashion-MNIST split {other:?}: expected \"train\" or \"t10k\" (alias \"test\")"),
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"));
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"));
    let images = read_images(&images_path)?;
    let labels = read_labels(&labels_path)?;
    ensure!(images.count == labels.len(), "{} holds {} images but {} holds {} labels", images_path.display(), images.count, labels_path.display(), labels.len());
    if let Some((i, &label)) = labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= FASHION_MNIST_CLASSES.len()) {
        bail!("{}: label {label} of item {i} is not one of the {} classes", labels_path.display(), FASHION_MNIST_CLASSES.len());
    }
    Ok((images, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn images_file(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for v in [IMAGES_MAGIC, count, rows, cols] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        bytes.extend_from_slice(pixels);
        bytes
    }

    fn labels_file(labels: &[u8]) -> Vec<u8> {
        let mut bytes = LABELS_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        bytes
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Three 2x3 images whose pixels count up, and their labels.
    fn tiny_split(dir: &Path, prefix: &str) -> Vec<u8> {
        let pixels: Vec<u8> = (0..18).collect();
        write(dir, &format!("{prefix}-images-idx3-ubyte.gz"), &gzip(&images_file(3, 2, 3, &pixels)));
        write(dir, &format!("{prefix}-labels-idx1-ubyte.gz"), &gzip(&labels_file(&[9, 0, 3])));
        pixels
    }

    fn error_text(result: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", result.expect_err("expected an error"))
    }

    #[test]
    fn reads_gzipped_images_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let pixels = tiny_split(dir.path(), "train");
        let images = read_images(&dir.path().join("train-images-idx3-ubyte.gz")).unwrap();
        assert_eq!((images.count, images.rows, images.cols), (3, 2, 3));
        assert_eq!(images.pixels, pixels);
        assert_eq!(images.image(1), &pixels[6..12]);
        assert_eq!(images.get(3), None);
        let gray = images.gray_image(2);
        assert_eq!((gray.width(), gray.height()), (3, 2));
        assert_eq!(gray.get_pixel(2, 1).0, [17]);
        assert_eq!(read_labels(&dir.path().join("train-labels-idx1-ubyte.gz")).unwrap(), vec![9, 0, 3]);
    }

    #[test]
    fn reads_uncompressed_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t10k-images-idx3-ubyte", &images_file(1, 1, 2, &[7, 8]));
        assert_eq!(read_images(&path).unwrap().pixels, vec![7, 8]);
    }

    #[test]
    fn read_split_pairs_files_and_accepts_test_alias() {
        let dir = tempfile::tempdir().unwrap();
        tiny_split(dir.path(), "t10k");
        let (images, labels) = read_split(dir.path(), "test").unwrap();
        assert_eq!(images.count, labels.len());
        assert_eq!(FASHION_MNIST_CLASSES[usize::from(labels[0])], "Ankle boot");
        assert_eq!(read_split(dir.path(), "t10k").unwrap().1, labels);
        assert!(error_text(read_split(dir.path(), "validation")).contains("unknown Fashion-MNIST split"));
        let missing = error_text(read_split(dir.path(), "train"));
        assert!(missing.contains("train-images-idx3-ubyte.gz"), "{missing}");
    }

    #[test]
    fn truncated_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let full = images_file(3, 2, 3, &(0..18).collect::<Vec<u8>>());
        let short = write(dir.path(), "short.gz", &gzip(&full[..full.len() - 5]));
        let text = error_text(read_images(&short));
        assert!(text.contains("short.gz") && text.contains("truncated") && text.contains("18"), "{text}");

        let header_only = write(dir.path(), "header.gz", &gzip(&full[..6]));
        let text = error_text(read_images(&header_only));
        assert!(text.contains("truncated header"), "{text}");

        // A gzip stream cut mid-way (an interrupted download) is an error too, not a panic.
        let gz = gzip(&full);
        let cut = write(dir.path(), "cut.gz", &gz[..gz.len() / 2]);
        let text = error_text(read_images(&cut));
        assert!(text.contains("cut.gz"), "{text}");

        let labels = labels_file(&[1, 2, 3]);
        let short_labels = write(dir.path(), "labels.gz", &gzip(&labels[..labels.len() - 1]));
        assert!(error_text(read_labels(&short_labels)).contains("truncated"));
    }

    #[test]
    fn wrong_magic_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let labels = write(dir.path(), "labels.gz", &gzip(&labels_file(&[1, 2])));
        let text = error_text(read_images(&labels));
        assert!(text.contains("bad magic") && text.contains("labels file") && text.contains("labels.gz"), "{text}");
        let images = write(dir.path(), "images.gz", &gzip(&images_file(1, 1, 1, &[0])));
        assert!(error_text(read_labels(&images)).contains("images file"));
        let junk = write(dir.path(), "junk", b"not an idx file at all");
        assert!(error_text(read_images(&junk)).contains("bad magic"));
        let doubly = write(dir.path(), "double.gz", &gzip(&gzip(&images_file(1, 1, 1, &[0]))));
        assert!(error_text(read_images(&doubly)).contains("gzipped"));
    }

    #[test]
    fn absurd_counts_do_not_allocate() {
        let dir = tempfile::tempdir().unwrap();
        let bomb = write(dir.path(), "bomb.gz", &gzip(&images_file(u32::MAX, 4096, 4096, &[0; 10])));
        assert!(error_text(read_images(&bomb)).contains("truncated"));
    }

    #[test]
    fn trailing_data_and_mismatched_counts_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let long = write(dir.path(), "long.gz", &gzip(&images_file(1, 1, 2, &[1, 2, 3])));
        assert!(error_text(read_images(&long)).contains("unexpected data"));

        tiny_split(dir.path(), "train");
        write(dir.path(), "train-labels-idx1-ubyte.gz", &gzip(&labels_file(&[1, 2])));
        let text = error_text(read_split(dir.path(), "train"));
        assert!(text.contains("3 images") && text.contains("2 labels"), "{text}");

        write(dir.path(), "train-labels-idx1-ubyte.gz", &gzip(&labels_file(&[1, 2, 10])));
        assert!(error_text(read_split(dir.path(), "train")).contains("label 10"));
    }

    #[test]
    fn real_fashion_mnist_if_present() {
        let Some(home) = std::env::var_os("HOME") else { return };
        let dir = Path::new(&home).join(".cache/lookalike/fashion-mnist");
        if !dir.join("t10k-images-idx3-ubyte.gz").exists() {
            eprintln!("no Fashion-MNIST in {}, skipping", dir.display());
            return;
        }
        let (images, labels) = read_split(&dir, "test").unwrap();
        assert_eq!((images.count, images.rows, images.cols), (10_000, 28, 28));
        let mut per_class = [0usize; 10];
        for &l in &labels {
            per_class[usize::from(l)] += 1;
        }
        assert_eq!(per_class, [1000; 10], "the test split is balanced");
        if dir.join("train-images-idx3-ubyte.gz").exists() {
            let (train, train_labels) = read_split(&dir, "train").unwrap();
            assert_eq!((train.count, train_labels.len()), (60_000, 60_000));
        }
    }
}
