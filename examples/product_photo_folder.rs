//! Writes a folder for `lookalike eval --product-photos`: Fashion-MNIST training products
//! "photographed anew" by the shopper-photo simulation (`lookalike::perturb`: a background,
//! a crop, a turn, new light, blur, JPEG), each seeded by its product's index and named after
//! the product it shows (`fmnist-train-00010.png`). A shop takes these photos with a camera;
//! this folder stands in for them where no such photos are reachable, to measure the command
//! and to compare it with `eval --exact`.
//!
//!     cargo run --release --example product_photo_folder -- OUT [COUNT] [STEP]
//!
//! Photos of products 0, STEP, 2 x STEP, ... (COUNT of them; default 1,000 photos of every
//! tenth product, all of which a 10,000-product catalog `lookalike index --fashion-mnist train
//! --limit 10000` holds). Reads the split from `$LOOKALIKE_HOME/fashion-mnist` (`make setup`).

use anyhow::{bail, Context, Result};
use lookalike::assets::Assets;
use lookalike::import::fashion_mnist::FashionMnist;
use rand::SeedableRng;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(std::path::PathBuf::from) else {
        bail!("usage: cargo run --release --example product_photo_folder -- OUT [COUNT] [STEP]");
    };
    let number = |i: usize, default: usize| -> Result<usize> { args.get(i).map_or(Ok(default), |text| text.parse().with_context(|| format!("{text:?} is not a whole number"))) };
    let (count, step) = (number(1, 1000)?, number(2, 10)?.max(1));
    let split = FashionMnist::load(&Assets::from_env().fashion_mnist_dir()?, "train")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for i in (0..split.len()).step_by(step).take(count) {
        let product = image::DynamicImage::ImageLuma8(split.image(i)?);
        let photo = lookalike::perturb::perturb(&product, &mut rand::rngs::StdRng::seed_from_u64(1000 + i as u64));
        let file = out.join(format!("{}.png", split.product_id(i)));
        photo.save(&file).with_context(|| format!("writing {}", file.display()))?;
    }
    println!("{} photos in {}", count.min(split.len().div_ceil(step)), out.display());
    Ok(())
}
