//! Micro-benchmarks of the search kernels: one dot product per storage precision, and a full
//! exact scan of 20,000 x 1280-d rows (one thread) per precision. Beside them, what colour adds
//! to importing a product: its descriptor from the model's input pixels, against making those
//! pixels (which import does anyway).
//!
//! `cargo bench --features bench --bench kernels` (criterion writes its reports under target/criterion/).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lookalike::index::kernels::{self, portable, Precision};
use lookalike::index::{l2_normalize, ExactIndex, VectorIndex};
use rand::{Rng, SeedableRng};

fn unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    l2_normalize(&mut v);
    v
}

fn dot_products(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let dim = 1280;
    let (a, b) = (unit(&mut rng, dim), unit(&mut rng, dim));
    let b16 = kernels::to_f16(&b);
    let ((a8, _), (b8, _)) = (kernels::to_i8(&a), kernels::to_i8(&b));
    let mut group = c.benchmark_group("dot-1280");
    group.throughput(Throughput::Elements(dim as u64));
    group.bench_function("f32 simd", |bench| bench.iter(|| kernels::dot(std::hint::black_box(&a), std::hint::black_box(&b))));
    group.bench_function("f32 portable", |bench| bench.iter(|| portable::dot_f32(std::hint::black_box(&a), std::hint::black_box(&b))));
    group.bench_function("f16 simd", |bench| bench.iter(|| kernels::dot_f16(std::hint::black_box(&a), std::hint::black_box(&b16))));
    group.bench_function("f16 portable", |bench| bench.iter(|| portable::dot_f16(std::hint::black_box(&a), std::hint::black_box(&b16))));
    group.bench_function("i8 simd", |bench| bench.iter(|| kernels::dot_i8(std::hint::black_box(&a8), std::hint::black_box(&b8))));
    group.bench_function("i8 portable", |bench| bench.iter(|| portable::dot_i8(std::hint::black_box(&a8), std::hint::black_box(&b8))));
    group.finish();
}

fn scans(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let (n, dim) = (20_000, 1280);
    let rows: Vec<Vec<f32>> = (0..n).map(|_| unit(&mut rng, dim)).collect();
    let query = unit(&mut rng, dim);
    let mut group = c.benchmark_group("scan-20000x1280");
    group.sample_size(20);
    group.throughput(Throughput::Elements(n as u64));
    for precision in [Precision::F32, Precision::F16, Precision::I8] {
        let mut index = ExactIndex::with_precision(dim, precision);
        for (i, r) in rows.iter().enumerate() {
            index.upsert(i as i64, r).expect("upsert");
        }
        index.set_parallel(false);
        group.bench_with_input(BenchmarkId::new("top10", format!("{precision:?}")), &index, |bench, index| {
            bench.iter(|| index.search(std::hint::black_box(&query), 10, None).expect("search"))
        });
    }
    group.finish();
}

/// A product shot as import sees it: a 600x800 photo of a red garment (a trapezoid with
/// sleeves) with navy stripes, on a white background.
fn product_photo() -> image::DynamicImage {
    let (w, h) = (600u32, 800u32);
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        let (cx, dy) = ((x as f32 - w as f32 / 2.0).abs(), y as f32 / h as f32);
        let inside = (0.1..0.9).contains(&dy) && cx < 120.0 + 100.0 * dy || (0.1..0.3).contains(&dy) && cx < 280.0;
        match (inside, (y / 40) % 3 == 0) {
            (false, _) => image::Rgb([255, 255, 255]),
            (true, true) => image::Rgb([30, 40, 110]),
            (true, false) => image::Rgb([200, 30, 40]),
        }
    }))
}

fn colour_at_import(c: &mut Criterion) {
    use lookalike::model::{Fit, InputSpec, Layout};
    let input = InputSpec { name: "input".into(), size: 224, layout: Layout::Nchw, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], fit: Fit::Pad };
    let photo = product_photo();
    let pixels = lookalike::preprocess::input_pixels(&photo, None, &input);
    let mut group = c.benchmark_group("import-one-product");
    group.bench_function("input pixels and tensor (without colour)", |bench| {
        bench.iter(|| lookalike::preprocess::input_pixels(std::hint::black_box(&photo), None, &input).tensor(&input))
    });
    group.bench_function("colour descriptor and name", |bench| bench.iter(|| lookalike::colour::of_product(std::hint::black_box(&pixels))));
    group.finish();
}

criterion_group!(benches, dot_products, scans, colour_at_import);
criterion_main!(benches);
