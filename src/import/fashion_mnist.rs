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
        image::GrayImage::from_raw(self.images.cols as u32, self.images.rows as u32, self.images.image(i).to_vec()).context("Fashion-MNIST image has the wrong number of pixels")
    }

    /// Product id of entry `i`: split and index, e.g. `fmnist-train-00042`.
    pub fn product_id(&self, i: usize) -> String {
        format!("fmnist-{}-{i:05}", self.split)
    }

    /// Entry `i` painted in colour (see [`Colourised`]) with `seed`: the image on white and its
    /// `baseColour` name.
    pub fn colourised(&self, i: usize, seed: u64) -> Result<(image::RgbImage, &'static str)> {
        let painting = Colourised::pick(seed, &self.split, i);
        Ok((painting.paint(&self.image(i)?), painting.name()))
    }

    /// The image of entry `i` as a search would see it: greyscale as published, or painted
    /// with `colourise`'s seed.
    pub fn photo(&self, i: usize, colourise: Option<u64>) -> Result<image::DynamicImage> {
        Ok(match colourise {
            Some(seed) => image::DynamicImage::ImageRgb8(self.colourised(i, seed)?.0),
            None => image::DynamicImage::ImageLuma8(self.image(i)?),
        })
    }

    /// The first `limit` entries (all when `None`) as catalog items, each image kept as PNG;
    /// painted in colour with `colourise`'s seed (and labelled `baseColour`) when given.
    pub fn items(&self, limit: Option<usize>, colourise: Option<u64>) -> Result<Vec<CatalogItem>> {
        let n = limit.unwrap_or(self.len()).min(self.len());
        (0..n)
            .map(|i| {
                let mut png = Vec::new();
                let mut metadata = Metadata::new();
                match colourise {
                    Some(seed) => {
                        let (painted, name) = self.colourised(i, seed)?;
                        painted.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).context("encoding a Fashion-MNIST image as PNG")?;
                        metadata.insert("baseColour".into(), name.to_string());
                    }
                    None => self.image(i)?.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).context("encoding a Fashion-MNIST image as PNG")?,
                }
                metadata.insert("articleType".into(), self.class_name(i).to_string());
                metadata.insert("split".into(), self.split.clone());
                metadata.insert("index".into(), i.to_string());
                Ok(CatalogItem { id: self.product_id(i), image: ItemImage::Bytes { bytes: png, mime: "image/png".into() }, metadata })
            })
            .collect()
    }
}

/// How `--colourise` paints one Fashion-MNIST product: the colour benchmark. No labelled
/// catalog in colour is reachable here, so the grey products are painted: four in five in one
/// named colour ([`crate::colour::VOCABULARY`]), one in five in two, as stripes or checks
/// (labelled `Multi`). The product's own shading is kept (85-100 % of the colour, darker where
/// the grey image is darker) and it is put on white, as a catalog shot is. Seeded by the seed,
/// the split and the position, so a catalog and its queries are painted independently and
/// every run paints the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Colourised {
    first: [u8; 3],
    /// The second colour and its pattern, for `Multi` products.
    second: Option<([u8; 3], Pattern)>,
    name: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Horizontal bands of `width` pixels.
    Stripes { width: u32 },
    /// A checkerboard of `width`-pixel squares.
    Checks { width: u32 },
}

impl Colourised {
    pub fn pick(seed: u64, split: &str, index: usize) -> Colourised {
        use rand::{Rng, SeedableRng};
        let split_salt = split.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ split_salt ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let vocabulary = &crate::colour::VOCABULARY;
        let first = vocabulary[rng.random_range(0..vocabulary.len())];
        if rng.random_bool(0.2) {
            let mut second = vocabulary[rng.random_range(0..vocabulary.len() - 1)];
            if second == first {
                second = vocabulary[vocabulary.len() - 1];
            }
            let width = rng.random_range(2..=4);
            let pattern = if rng.random_bool(0.5) { Pattern::Stripes { width } } else { Pattern::Checks { width } };
            return Colourised { first: first.rgb, second: Some((second.rgb, pattern)), name: crate::colour::MULTI };
        }
        Colourised { first: first.rgb, second: None, name: first.name }
    }

    /// The `baseColour` label.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Paints a Fashion-MNIST image (bright product on black) as a catalog shot: the product
    /// in its colour(s), shaded by its grey levels, on white.
    pub fn paint(&self, grey: &image::GrayImage) -> image::RgbImage {
        image::RgbImage::from_fn(grey.width(), grey.height(), |x, y| {
            let v = f32::from(grey.get_pixel(x, y)[0]) / 255.0;
            let colour = match self.second {
                Some((second, Pattern::Stripes { width })) if (y / width) % 2 == 1 => second,
                Some((second, Pattern::Checks { width })) if (x / width + y / width) % 2 == 1 => second,
                _ => self.first,
            };
            // Opaque where the product is (its faint edge pixels blend into the background).
            let alpha = (v * 3.0).min(1.0);
            let shade = 0.85 + 0.15 * v;
            image::Rgb(colour.map(|c| (alpha * f32::from(c) * shade + (1.0 - alpha) * 255.0).round().clamp(0.0, 255.0) as u8))
        })
    }
}
