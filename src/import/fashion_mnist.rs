//! Fashion-MNIST (Zalando, MIT licence) as a catalog: each 28x28 image is a product, its class
//! name is its `articleType`. It is the real fashion image set available offline, so it is the
//! demo catalog and the evaluation benchmark.

use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::idx::{read_split, IdxImages, FASHION_MNIST_CLASSES};
use super::{CatalogItem, ItemImage};
use crate::types::Metadata;

/// One split of Fashion-MNIST in memory.
pub struct FashionMnist {
    pub split: String,
    pub images: IdxImages,
    pub labels: Vec<u8>,
}

impl FashionMnist {
    /// Reads `split` (`train` or `test`) from a directory with the four IDX .gz files.
    pub fn load(dir: &Path, split: &str) -> Result<FashionMnist> {
        let split = match split {
            "train" => "train",
            "test" | "t10k" => "test",
            other => bail!("unknown Fashion-MNIST split {other:?} (expected train or test)"),
        };
        let (images, labels) = read_split(dir, split).with_context(|| format!("reading Fashion-MNIST {split} from {}", dir.display()))?;
        Ok(FashionMnist { split: split.to_string(), images, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Class name of entry `i`.
    pub fn class_name(&self, i: usize) -> &'static str {
        FASHION_MNIST_CLASSES.get(self.labels[i] as usize).copied().unwrap_or("unknown")
    }

    /// Entry `i` as a greyscale image.
    pub fn image(&self, i: usize) -> Result<image::GrayImage> {
        image::GrayImage::from_raw(self.images.cols as u32, self.images.rows as u32, self.images.image(i).to_vec())
            .context("Fashion-MNIST image has the wrong number of pixels")
    }

    /// Product id of entry `i`: split and index, e.g. `fmnist-train-00042`.
    pub fn product_id(&self, i: usize) -> String {
        format!("fmnist-{}-{i:05}", self.split)
    }

    /// The first `limit` entries (all when `None`) as catalog items, each image kept as PNG.
    pub fn items(&self, limit: Option<usize>) -> Result<Vec<CatalogItem>> {
        let n = limit.unwrap_or(self.len()).min(self.len());
        (0..n)
            .map(|i| {
                let mut png = Vec::new();
                self.image(i)?
                    .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
                    .context("encoding a Fashion-MNIST image as PNG")?;
                let mut metadata = Metadata::new();
                metadata.insert("articleType".into(), self.class_name(i).to_string());
                metadata.insert("split".into(), self.split.clone());
                metadata.insert("index".into(), i.to_string());
                Ok(CatalogItem { id: self.product_id(i), image: ItemImage::Bytes { bytes: png, mime: "image/png".into() }, metadata })
            })
            .collect()
    }
}
