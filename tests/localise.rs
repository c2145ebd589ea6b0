//! Finding the products in a shopper's photo, end to end on the real model: Fashion-MNIST
//! garments (light on black, as the catalog has them) pasted at known places on a larger black
//! photo, searched through [`SearchEngine`] as the CLI and the API do.

mod common;

use common::{encoder, fm_dir, shared_catalog};
use image::{DynamicImage, GrayImage};
use lookalike::catalog::SqliteCatalog;
use lookalike::encoder::{Encoder, GridFeatures};
use lookalike::eval::iou;
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::model::Pooling;
use lookalike::search::{Items, SearchEngine, SearchRequest, SearchResults};

/// Side of the composed photos: 7 cells of 64 px on the model's 7x7 grid (224 px input), so a
/// garment placed on whole cells has a box the grid can draw exactly.
const SIDE: u32 = 448;
const CELL: u32 = SIDE / 7;

fn engine() -> SearchEngine {
    let catalog = SqliteCatalog::open_existing(shared_catalog()).expect("catalog");
    SearchEngine::open(catalog, Box::new(encoder())).expect("engine")
}

/// Fashion-MNIST test garments `indices` pasted on a black photo, each scaled to `cells` x
/// `cells` grid cells with its corner at cell (`col`, `row`). Returns the PNG and each box as
/// fractions of the photo.
fn composite(placements: &[(usize, u32, u32, u32)]) -> (Vec<u8>, Vec<[f32; 4]>) {
    let test = FashionMnist::load(&fm_dir(), "test").expect("test split");
    let mut photo = GrayImage::new(SIDE, SIDE);
    let mut boxes = Vec::new();
    for &(index, col, row, cells) in placements {
        let garment = test.image(index).expect("image");
        let side = cells * CELL;
        let scaled = image::imageops::resize(&garment, side, side, image::imageops::FilterType::Triangle);
        image::imageops::overlay(&mut photo, &scaled, i64::from(col * CELL), i64::from(row * CELL));
        let f = |v: u32| v as f32 / SIDE as f32;
        boxes.push([f(col * CELL), f(row * CELL), f(side), f(side)]);
    }
    let mut png = Vec::new();
    DynamicImage::ImageLuma8(photo).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    (png, boxes)
}

/// As [`composite`], each garment painted in a colour (its grey levels scaling `rgb`).
fn painted_composite(placements: &[(usize, u32, u32, u32, [u8; 3])]) -> Vec<u8> {
    let test = FashionMnist::load(&fm_dir(), "test").expect("test split");
    let mut photo = image::RgbImage::new(SIDE, SIDE);
    for &(index, col, row, cells, rgb) in placements {
        let side = cells * CELL;
        let scaled = image::imageops::resize(&test.image(index).expect("image"), side, side, image::imageops::FilterType::Triangle);
        let painted = image::RgbImage::from_fn(side, side, |x, y| {
            let level = f32::from(scaled.get_pixel(x, y)[0]) / 255.0;
            image::Rgb(rgb.map(|c| (f32::from(c) * level) as u8))
        });
        image::imageops::overlay(&mut photo, &painted, i64::from(col * CELL), i64::from(row * CELL));
    }
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(photo).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    png
}

fn search(engine: &SearchEngine, png: &[u8], items: Items) -> SearchResults {
    engine.search_image(png, None, &SearchRequest::default(), items).expect("search")
}

#[test]
fn a_garment_on_a_larger_photo_is_found_where_it_was_placed() {
    let engine = engine();
    // A trouser (test image 2) on 3x3 cells, towards the bottom left.
    let (png, boxes) = composite(&[(2, 1, 3, 3)]);
    let results = search(&engine, &png, Items::Main);
    let main = results.detections.first().expect("a product found");
    assert!(iou(main.bounds, boxes[0]) >= 0.5, "found at {:?}, placed at {:?}", main.bounds, boxes[0]);
    assert!(results.items.is_empty(), "per-item results only when asked for");
}

#[test]
fn two_garments_give_two_boxes_and_two_result_lists() {
    let engine = engine();
    // A trouser top left and a bag (test image 18) bottom right, with a clear gap between them.
    let (png, boxes) = composite(&[(2, 0, 0, 3), (18, 4, 4, 3)]);
    let results = search(&engine, &png, Items::All);
    assert_eq!(results.detections.len(), 2, "two products found: {:?}", results.detections);
    for placed in &boxes {
        let best = results.detections.iter().map(|d| iou(d.bounds, *placed)).fold(0.0, f32::max);
        assert!(best >= 0.5, "the product at {placed:?} is found (best IoU {best:.2}): {:?}", results.detections);
    }
    assert_eq!(results.items.len(), 2, "one result list per product");
    for (item, detection) in results.items.iter().zip(&results.detections) {
        assert_eq!(item.detection, *detection, "items come in the order of detections");
        assert_eq!(item.hits.len(), 10);
    }
    // Each item's results lean to its own kind of product: the trouser's to trousers, the bag's
    // to bags (the catalog's first 300 training images have both).
    let class_at = |b: [f32; 4]| if b[0] + b[2] / 2.0 < 0.5 { "Trouser" } else { "Bag" };
    let share = |hits: &[lookalike::search::RankedProduct], class: &str| hits.iter().filter(|h| h.product.category() == Some(class)).count();
    let categories = |hits: &[lookalike::search::RankedProduct]| hits.iter().map(|h| h.product.category().unwrap_or("-").to_string()).collect::<Vec<_>>();
    for item in &results.items {
        let class = class_at(item.detection.bounds);
        assert!(share(&item.hits, class) >= 5, "{class} item: {:?}", categories(&item.hits));
    }
    // The main results are the whole photo's, as without items=all.
    let main = search(&engine, &png, Items::Main);
    let ids = |r: &SearchResults| r.hits.iter().map(|h| h.product.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&main), ids(&results));
    assert_eq!(main.detections, results.detections);
}

/// With items=all each item is searched by its own colour, read inside its box: a red trouser
/// and a blue bag in one photo report red and blue (before, both items' results were ranked by
/// the main item's colour).
#[test]
fn each_item_is_searched_by_its_own_colour() {
    let engine = engine();
    let png = painted_composite(&[(2, 0, 0, 3, [220, 30, 40]), (18, 4, 4, 3, [40, 90, 220])]);
    let results = search(&engine, &png, Items::All);
    assert_eq!(results.items.len(), 2, "two products found: {:?}", results.detections);
    for item in &results.items {
        let colour = item.query_colour.as_ref().expect("an item's colour");
        let [r, _, b] = colour.rgb;
        let left = item.detection.bounds[0] + item.detection.bounds[2] / 2.0 < 0.5;
        match left {
            true => assert!(r > b, "the red trouser reads as {} {:?}", colour.name, colour.rgb),
            false => assert!(b > r, "the blue bag reads as {} {:?}", colour.name, colour.rgb),
        }
    }
    let names: Vec<&str> = results.items.iter().filter_map(|i| i.query_colour.as_ref().map(|c| c.name)).collect();
    assert_ne!(names[0], names[1], "two colours, two names: {names:?}");
}

#[test]
fn a_shoppers_crop_wins_over_localisation() {
    let engine = engine();
    let (png, _) = composite(&[(2, 0, 0, 3), (18, 4, 4, 3)]);
    let crop = lookalike::preprocess::Crop::new(0.5, 0.5, 0.5, 0.5).expect("crop");
    let results = engine.search_image(&png, Some(crop), &SearchRequest::default(), Items::All).expect("search");
    assert!(results.detections.is_empty() && results.items.is_empty(), "the shopper's box is searched as it is");
    assert_eq!(results.hits.len(), 10);
}

#[test]
fn pooling_over_an_item_ignores_everything_outside_it() {
    // A real feature map: the model's grid for a composed photo.
    let (png, _) = composite(&[(2, 1, 3, 3)]);
    let encoder = encoder();
    let photo = image::load_from_memory(&png).expect("png");
    let tensor = lookalike::preprocess::prepare_image(&photo, None, &encoder.spec().input);
    let grid: GridFeatures = encoder.encode_queries(&[tensor]).expect("encode").remove(0).grid.expect("a feature map");
    assert_eq!((grid.width, grid.height), (7, 7));
    assert!(matches!(grid.pooling, Pooling::Gem { .. }));
    let mask: Vec<usize> = (0..49).filter(|c| (1..4).contains(&(c % 7)) && (3..6).contains(&(c / 7))).collect();
    let pooled = grid.pool_over(&mask);

    // Change every cell outside the mask: the pooled vector stays, the whole photo's moves.
    let mut changed = grid.clone();
    for cell in (0..49).filter(|c| !mask.contains(c)) {
        for v in &mut changed.data[cell * grid.channels..(cell + 1) * grid.channels] {
            *v = *v * 3.0 + 1.0;
        }
    }
    assert_eq!(changed.pool_over(&mask), pooled, "cells outside the mask do not count");
    let all: Vec<usize> = (0..49).collect();
    assert_ne!(changed.pool_over(&all), grid.pool_over(&all));

    // Change one cell inside it: the pooled vector moves.
    let mut inside = grid.clone();
    let cell = mask[0];
    for v in &mut inside.data[cell * grid.channels..(cell + 1) * grid.channels] {
        *v = *v * 3.0 + 1.0;
    }
    assert_ne!(inside.pool_over(&mask), pooled);
}

/// With a learned head, wide photos of two or three garments side by side on busy
/// backgrounds (`perturb::compose_scene`: held-out test garments, known boxes) are searched on
/// square tiles: most garments are found with their box, and little else is. The head is
/// learned while a server runs on the catalog, as `tune --localise` in another process would,
/// and the server uses it from its next follow of the catalog on, without a restart.
#[test]
fn a_learned_head_finds_garments_side_by_side_on_wide_photos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = common::copy_catalog(dir.path());
    let engine = SearchEngine::open(SqliteCatalog::open_existing(&db).expect("catalog"), Box::new(encoder())).expect("engine");
    let before = garments_found_side_by_side(&engine);

    let mut catalog = SqliteCatalog::open_existing(&db).expect("catalog");
    let encoder = encoder();
    let (head, report) = lookalike::tune::train_foreground(&catalog, &encoder, 1000, 7).expect("head");
    assert!(report.balanced_accuracy > 0.8, "{report:?}");
    catalog.save_foreground_head(&encoder.spec().name, &head, "{}").expect("save head");
    assert_eq!(garments_found_side_by_side(&engine), before, "a head is used only once the server follows the catalog");
    assert_eq!(engine.follow_catalog().expect("follow"), 0, "no product changed");

    let (found, placed, reported) = garments_found_side_by_side(&engine);
    let (recall, precision) = (found as f32 / placed as f32, found as f32 / reported.max(1) as f32);
    // Measured (session 30): 27 of 30 found, 27 boxes, with a head learned from this
    // 300-product catalog (on the 60,000-product one, eval's 1,000 scenes find 87 % at 93 %
    // precision); training-free, 0 of 30 (12 boxes). Without tiles the head found under a
    // third of the products in such photos.
    assert!(recall >= 0.65 && precision >= 0.75, "{found} of {placed} garments found, {reported} boxes reported (before the head: {before:?})");
    eprintln!("garments found in 12 wide photos (found, placed, boxes): training-free {before:?}, learned head {:?}", (found, placed, reported));
    assert!(found > before.0, "the learned head finds more than the training-free rule: {found} against {before:?}");

    // `tune --localise --off`: back to training-free at the next follow.
    assert!(catalog.clear_foreground_head().expect("drop head"));
    engine.follow_catalog().expect("follow");
    assert_eq!(garments_found_side_by_side(&engine), before);
}

/// 12 wide photos of 2-3 held-out garments side by side (seeded): how many garments a box
/// matched (IoU >= 0.5), of how many placed, and how many boxes were reported.
fn garments_found_side_by_side(engine: &SearchEngine) -> (usize, usize, usize) {
    use rand::{Rng, SeedableRng};
    let test = FashionMnist::load(&fm_dir(), "test").expect("test split");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut placed, mut found, mut reported) = (0, 0, 0);
    for scene in 0..12 {
        let count = rng.random_range(2..=3);
        let garments: Vec<DynamicImage> = (0..count).map(|i| DynamicImage::ImageLuma8(test.image(scene * 3 + i).expect("image"))).collect();
        let (photo, boxes) = lookalike::perturb::compose_scene(&garments, &mut rng);
        assert!(photo.width() >= photo.height() * 5 / 4, "a wide photo: {}x{}", photo.width(), photo.height());
        let mut png = Vec::new();
        photo.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
        let results = search(engine, &png, Items::Main);
        placed += boxes.len();
        reported += results.detections.len();
        found += boxes.iter().filter(|b| results.detections.iter().any(|d| iou(d.bounds, **b) >= 0.5)).count();
    }
    (found, placed, reported)
}

/// Catalog product `index` (a training image in the shared catalog) photographed on a floor of
/// boards and turned by `degrees`, as PNG.
fn tilted_shot(index: usize, degrees: f32) -> Vec<u8> {
    let train = FashionMnist::load(&fm_dir(), "train").expect("train split");
    let garment = image::imageops::resize(&train.image(index).expect("image"), 120, 120, image::imageops::FilterType::Triangle);
    let mut floor = image::RgbImage::from_fn(200, 200, |_, y| if y % 40 < 3 { image::Rgb([150, 120, 90]) } else { image::Rgb([90, 70, 50]) });
    for (x, y, p) in garment.enumerate_pixels() {
        let level = p[0];
        if level > 24 {
            floor.put_pixel(40 + x, 40 + y, image::Rgb([level; 3]));
        }
    }
    let turned = lookalike::straighten::rotate(&floor, degrees);
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(turned).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    png
}

/// The real encoder, counting the photos it encodes.
struct Counting {
    inner: lookalike::encoder::OrtEncoder,
    photos: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Encoder for Counting {
    fn spec(&self) -> &lookalike::model::ModelSpec {
        self.inner.spec()
    }

    fn encode(&self, batch: &[Vec<f32>]) -> anyhow::Result<Vec<lookalike::encoder::Embedding>> {
        self.photos.fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst);
        self.inner.encode(batch)
    }

    fn encode_queries(&self, batch: &[Vec<f32>]) -> anyhow::Result<Vec<lookalike::encoder::QueryEmbedding>> {
        self.photos.fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst);
        self.inner.encode_queries(batch)
    }
}

#[test]
fn a_tilted_photo_is_encoded_straightened_only_when_it_finds_nothing_very_similar_as_taken() {
    let photos = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = Counting { inner: encoder(), photos: photos.clone() };
    let engine = SearchEngine::open(SqliteCatalog::open_existing(shared_catalog()).expect("catalog"), Box::new(counting)).expect("engine");
    let encodes = |png: &[u8]| {
        let before = photos.load(std::sync::atomic::Ordering::SeqCst);
        let results = search(&engine, png, Items::Main);
        (photos.load(std::sync::atomic::Ordering::SeqCst) - before, results)
    };
    // Catalog products themselves, photographed as the catalog has them, whose own edges read
    // as tilted: each finds itself, very similar, with one encode.
    let train = FashionMnist::load(&fm_dir(), "train").expect("train split");
    let mut catalog_shots = 0;
    for index in 0..300 {
        let shot = train.image(index).expect("image");
        if lookalike::straighten::tilt(&DynamicImage::ImageLuma8(shot.clone())).is_none() {
            continue;
        }
        let mut png = Vec::new();
        DynamicImage::ImageLuma8(shot).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
        let (count, results) = encodes(&png);
        assert_eq!(results.hits.first().map(|h| h.product.id.clone()), Some(format!("fmnist-train-{index:05}")));
        assert_eq!(count, 1, "catalog product {index} was encoded {count} times");
        catalog_shots += 1;
    }
    assert!(catalog_shots >= 5, "only {catalog_shots} catalog shots read as tilted");
    // Garments on a turned floor find nothing very similar as taken: tried straightened too.
    let straightened = (0..10).filter(|&index| encodes(&tilted_shot(index, 14.0)).0 == 2).count();
    assert!(straightened >= 5, "{straightened} of 10 turned floor shots were tried straightened");
}

#[test]
fn a_tilted_photo_is_searched_straightened_and_finds_its_product_more_often() {
    let engine = engine();
    let whole_frame = lookalike::preprocess::Crop::new(0.0, 0.0, 1.0, 1.0).expect("crop");
    let (mut straightened_first, mut as_taken_first) = (0, 0);
    for index in 0..30 {
        let png = tilted_shot(index, if index % 2 == 0 { 14.0 } else { -14.0 });
        let photo = image::load_from_memory(&png).expect("png");
        let tilt = lookalike::straighten::tilt(&photo).expect("the boards show the tilt");
        assert!((tilt.abs() - 14.0).abs() < 1.5, "read {tilt}°");
        let own_id = |results: &SearchResults| results.hits.first().map(|h| h.product.id.clone());
        let expected = Some(format!("fmnist-train-{index:05}"));
        // A shopper's crop (here the whole frame) is searched as given: the photo as taken.
        let as_taken = engine.search_image(&png, Some(whole_frame), &SearchRequest::default(), Items::Main).expect("search");
        let straightened = search(&engine, &png, Items::Main);
        as_taken_first += usize::from(own_id(&as_taken) == expected);
        straightened_first += usize::from(own_id(&straightened) == expected);
    }
    eprintln!("product first: straightened {straightened_first}/30, as taken {as_taken_first}/30");
    assert!(straightened_first > as_taken_first, "straightened {straightened_first}/30, as taken {as_taken_first}/30");
}
