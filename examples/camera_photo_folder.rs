//! Writes a folder of camera-sized shop photos: Fashion-MNIST training garments drawn at
//! 1080x1440, tinted, on a light studio background with sensor noise, as JPEG (quality 90;
//! about 400 KB each). A shop's own photos are this size; Fashion-MNIST's are 28 px. It
//! measures what large photos cost where small ones cost nothing (the reduced copies a Qdrant
//! point carries of photos over 64 KiB).
//!
//!     cargo run --release --example camera_photo_folder -- OUT [COUNT]
//!     lookalike index --db big.db --images OUT
//!     lookalike sync  --db big.db --store qdrant://127.0.0.1:6334 --collection big
//!
//! COUNT photos (default 1,000) of training products 0, 1, 2, ..., named `00000.jpg`, ...,
//! each seeded by its index. Reads the split from `$LOOKALIKE_HOME/fashion-mnist` (`make setup`).

use anyhow::{bail, Context, Result};
use image::{ImageEncoder, Rgb, RgbImage};
use lookalike::assets::Assets;
use lookalike::import::fashion_mnist::FashionMnist;
use rand::{Rng, SeedableRng};

const WIDTH: u32 = 1080;
const HEIGHT: u32 = 1440;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(std::path::PathBuf::from) else {
        bail!("usage: cargo run --release --example camera_photo_folder -- OUT [COUNT]");
    };
    let count = args.get(1).map_or(Ok(1000), |text| text.parse::<usize>().with_context(|| format!("{text:?} is not a whole number")))?;
    let split = FashionMnist::load(&Assets::from_env().fashion_mnist_dir()?, "train")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for i in 0..count.min(split.len()) {
        let garment = split.image(i)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
        let tint: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.2..1.0));
        // The garment fills the width, centred top to bottom, each of its pixels a 40 px block.
        let top = (HEIGHT - WIDTH) / 2;
        let photo = RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
            let alpha = match y.checked_sub(top).filter(|&y| y < WIDTH) {
                Some(y) => f32::from(garment.get_pixel(x * 28 / WIDTH, y * 28 / WIDTH)[0]) / 255.0,
                None => 0.0,
            };
            let light = 0.93 + rng.random_range(-0.02..0.02);
            Rgb(tint.map(|t| ((light * (1.0 - alpha) + t * alpha + rng.random_range(-0.03..0.03)).clamp(0.0, 1.0) * 255.0) as u8))
        });
        let file = out.join(format!("{i:05}.jpg"));
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).write_image(photo.as_raw(), WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)?;
        std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
    }
    println!("{} photos in {}", count.min(split.len()), out.display());
    Ok(())
}
