//! Colour, end to end on the real model and real Fashion-MNIST garments: the colour each product
//! is named at import, `colour=match|any|NAME` in search, a grey catalog left exactly as it
//! was, a shop's own colour column winning, bad values refused, and an old catalog given its
//! colours by re-running `index`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{encoder, expect_error, fm_dir, lookalike, ok_json, path, search_json, search_photo, shared_catalog, Server};
use image::{GrayImage, RgbImage};
use lookalike::catalog::SqliteCatalog;
use lookalike::colour::{ColourMode, VOCABULARY};
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::search::{Items, SearchEngine, SearchRequest, SearchResults};
use serde_json::json;

/// Test garment used for the red and blue copies (a pullover: not in the catalog).
const GARMENT: usize = 1;

fn rgb_of(name: &str) -> [u8; 3] {
    VOCABULARY.iter().find(|c| c.name == name).map(|c| c.rgb).expect("a named colour")
}

/// A Fashion-MNIST garment (light on black) painted `colour` on white, shaded by its grey
/// levels, as a catalog shot: the way `index --colourise` paints, with a chosen colour.
fn painted(grey: &GrayImage, colour: [u8; 3], side: u32) -> Vec<u8> {
    let big = image::imageops::resize(grey, side, side, image::imageops::FilterType::Triangle);
    let rgb = RgbImage::from_fn(side, side, |x, y| {
        let v = f32::from(big.get_pixel(x, y)[0]) / 255.0;
        let alpha = (v * 3.0).min(1.0);
        let shade = 0.85 + 0.15 * v;
        image::Rgb(colour.map(|c| (alpha * f32::from(c) * shade + (1.0 - alpha) * 255.0) as u8))
    });
    let mut png = Vec::new();
    rgb.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    png
}

/// The garment painted red above its middle and blue below, `side` pixels square: a
/// patterned (`Multi`) photo of two colours.
fn two_tone(side: u32) -> Vec<u8> {
    let mut halves = image::load_from_memory(&painted(&garment(), rgb_of("Red"), side)).expect("png").to_rgb8();
    for (_, y, pixel) in halves.enumerate_pixels_mut() {
        if y >= side / 2 && pixel.0.iter().any(|&c| c < 200) {
            pixel.0 = rgb_of("Blue");
        }
    }
    let mut png = Vec::new();
    halves.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    png
}

fn garment() -> GrayImage {
    FashionMnist::load(&fm_dir(), "test").expect("test split").image(GARMENT).expect("image")
}

/// 300 colourised Fashion-MNIST products (each labelled `baseColour`) plus a red and a blue
/// copy of one held-out garment, imported from a folder (no colour column: their colour is
/// computed). Built once per test run; tests that change it copy it.
fn coloured_catalog() -> &'static Path {
    static DB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, db) = DB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("coloured.db");
        let out = lookalike(&["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "300", "--colourise", "42", "--fashion-mnist-dir", path(&fm_dir())]);
        assert!(out.status.success(), "index failed: {}", String::from_utf8_lossy(&out.stderr));
        let photos = dir.path().join("copies");
        std::fs::create_dir(&photos).expect("mkdir");
        std::fs::write(photos.join("red.png"), painted(&garment(), rgb_of("Red"), 112)).expect("write");
        std::fs::write(photos.join("blue.png"), painted(&garment(), rgb_of("Blue"), 112)).expect("write");
        let out = lookalike(&["index", "--db", path(&db), "--images", path(&photos)]);
        assert!(out.status.success(), "index failed: {}", String::from_utf8_lossy(&out.stderr));
        (dir, db)
    });
    db
}

fn engine(db: &Path) -> SearchEngine {
    SearchEngine::open(SqliteCatalog::open_existing(db).expect("catalog"), Box::new(encoder())).expect("engine")
}

fn search(engine: &SearchEngine, png: &[u8], colour: ColourMode, k: usize) -> SearchResults {
    let request = SearchRequest { k, colour, ..SearchRequest::default() };
    engine.search_image(png, None, &request, Items::Main).expect("search")
}

fn rank_of(results: &SearchResults, id: &str) -> Option<usize> {
    results.hits.iter().find(|h| h.product.id == id).map(|h| h.rank)
}

#[test]
fn a_red_and_a_blue_copy_are_named_apart_and_match_ranks_the_same_colour_first() {
    let engine = engine(coloured_catalog());
    let (red, blue) = engine.with_catalog(|c| Ok((c.get_by_id("red.png")?.expect("red copy"), c.get_by_id("blue.png")?.expect("blue copy")))).expect("read");
    assert_eq!((red.colour(), blue.colour()), (Some("Red"), Some("Blue")), "named from their pixels");

    // The shopper's photo: the same garment in red, at another size (so not the same bytes).
    let query = painted(&garment(), [200, 35, 45], 200);
    let matched = search(&engine, &query, ColourMode::Match, 50);
    assert_eq!(matched.query_colour.map(|c| c.name), Some("Red"));
    assert_eq!(matched.colour_mode, ColourMode::Match);
    let (r, b) = (rank_of(&matched, "red.png"), rank_of(&matched, "blue.png"));
    assert_eq!(r, Some(1), "the red copy first under colour=match (blue at {b:?})");
    assert!(b.is_none_or(|b| b > 1));

    // Shape only: the colour no longer decides, and both copies are near the top.
    let any = search(&engine, &query, ColourMode::Any, 50);
    assert_eq!(any.colour_mode, ColourMode::Any);
    assert!(rank_of(&any, "red.png").is_some() && rank_of(&any, "blue.png").is_some(), "both copies in the top 50 by shape");

    // A named colour: only products of that colour, the blue copy first among them.
    let only_blue = search(&engine, &query, ColourMode::Named("Blue".into()), 10);
    assert!(!only_blue.hits.is_empty());
    assert!(only_blue.hits.iter().all(|h| h.product.colour() == Some("Blue")), "only blue products");
    assert_eq!(only_blue.hits[0].product.id, "blue.png");
}

#[test]
fn a_grey_catalog_ranks_exactly_as_before_under_every_colour_mode() {
    let engine = engine(shared_catalog());
    let (png, _) = common::test_photo(3);
    let any = search(&engine, &png, ColourMode::Any, 20);
    for mode in [ColourMode::Match, ColourMode::Named("Red".into())] {
        let other = search(&engine, &png, mode.clone(), 20);
        assert_eq!(other.colour_mode, ColourMode::Any, "{mode}: colour does not apply to a grey catalog");
        let ranked = |r: &SearchResults| r.hits.iter().map(|h| (h.product.id.clone(), h.score)).collect::<Vec<_>>();
        assert_eq!(ranked(&other), ranked(&any), "{mode}");
    }
    // Greyscale photos name no colour in the metadata: the page's facets are unchanged.
    let first = engine.with_catalog(|c| Ok(c.all_products()?.remove(0))).expect("read");
    assert!(!first.metadata.contains_key("colour"), "{:?}", first.metadata);
}

#[test]
fn a_shops_colour_column_wins_over_the_computed_name() {
    let engine = engine(coloured_catalog());
    let products = engine.with_catalog(|c| c.all_products()).expect("read");
    let from_csv: Vec<_> = products.iter().filter(|p| p.metadata.contains_key("baseColour")).collect();
    assert_eq!(from_csv.len(), 300);
    assert!(from_csv.iter().all(|p| !p.metadata.contains_key("colour")), "no computed name beside the shop's");

    // Over the API: a red photo that the shop calls Green stays Green.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("copy.db");
    std::fs::copy(coloured_catalog(), &db).expect("copy");
    let server = Server::start(&db, &["--admin-token", "colour-test"], &[]);
    let add = |form| common::client().post(server.url("/api/products")).bearer_auth("colour-test").multipart(form).send().expect("POST");
    let form = common::photo_form(painted(&garment(), rgb_of("Red"), 112), &[("id", "shop-green"), ("baseColour", "Green")]);
    let added = ok_json(add(form));
    assert_eq!(added["colour"], "Green");
    assert!(added["metadata"].get("colour").is_none(), "{added}");
    let form = common::photo_form(painted(&garment(), rgb_of("Red"), 112), &[("id", "unnamed-red")]);
    let added = ok_json(add(form));
    assert_eq!(added["colour"], "Red", "{added}");
    assert_eq!(added["metadata"]["colour"], "Red");
    // A patterned product's answer names its main colours, as its `GET` does.
    let added = ok_json(add(common::photo_form(two_tone(112), &[("id", "two-tone")])));
    let mix: Vec<&str> = added["colour_mix"].as_array().map(|m| m.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default();
    assert!(added["colour"] == "Multi" && mix.contains(&"Red") && mix.contains(&"Blue"), "{added}");
    let own = ok_json(common::client().get(server.url("/api/products/two-tone")).send().expect("get"));
    assert_eq!(own["colour_mix"], added["colour_mix"]);
}

#[test]
fn the_api_returns_the_query_colour_and_refuses_a_bad_colour() {
    let server = Server::start(coloured_catalog(), &[], &[]);
    let query = painted(&garment(), rgb_of("Red"), 160);
    let result = ok_json(search_photo(&server, query.clone(), &[("k", "5"), ("include_vector", "true")]));
    assert_eq!(result["colour"], "match");
    assert_eq!(result["query_colour"]["name"], "Red");
    assert!(result["query_colour"]["rgb"].as_str().is_some_and(|c| c.starts_with('#') && c.len() == 7));
    assert_eq!(result["hits"][0]["id"], "red.png");
    assert!(result["hits"][0]["colour_rgb"].as_str().is_some());

    // Paging by vector keeps the colour when the descriptor is sent back.
    let descriptor = result["query_colour"]["descriptor"].clone();
    let paged = ok_json(search_json(&server, json!({"vector": result["query_vector"], "colour_vector": descriptor, "k": 5})));
    assert_eq!(paged["colour"], "match");
    assert_eq!(paged["hits"][0]["id"], "red.png");
    let shape_only = ok_json(search_json(&server, json!({"vector": result["query_vector"], "k": 5})));
    assert_eq!(shape_only["colour"], "any", "a vector alone has no colour");

    assert!(result["hits"][0].get("colour_mix").is_none(), "a product of one colour has no mix");

    // A patterned product (colour Multi) names its main colours, largest share first, in its
    // hits and its own answer alike: what its swatch on the page shows.
    let patterned = ok_json(search_json(&server, json!({"product_id": "red.png", "colour": "Multi", "k": 10})));
    let hits = patterned["hits"].as_array().expect("hits");
    assert!(!hits.is_empty() && hits.iter().all(|h| h["colour"] == "Multi"), "{patterned}");
    let mut two_or_more = 0;
    for hit in hits {
        let mix = hit["colour_mix"].as_array().cloned().unwrap_or_default();
        let shares: Vec<f64> = mix.iter().map(|c| c["share"].as_f64().unwrap_or(0.0)).collect();
        assert!(!mix.is_empty() && shares.windows(2).all(|w| w[0] >= w[1]) && shares.iter().sum::<f64>() <= 1.0 + 1e-6, "{hit}");
        for c in &mix {
            let name = c["name"].as_str().unwrap_or_default();
            let rgb = rgb_of(name);
            assert_eq!(c["rgb"], format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]), "{c}");
        }
        two_or_more += usize::from(mix.len() >= 2);
        let id = hit["id"].as_str().expect("id");
        let own = ok_json(common::client().get(server.url(&format!("/api/products/{id}"))).send().expect("get"));
        assert_eq!(own["colour_mix"], hit["colour_mix"], "{id}");
    }
    assert!(two_or_more > 0, "painted in two colours, some show both: {patterned}");
    // The listing carries them too, for a shop's own pages.
    let listed = ok_json(common::client().get(server.url("/api/products?filter=baseColour%3DMulti&limit=500")).send().expect("list"));
    let listed = listed["products"].as_array().expect("products");
    assert!(!listed.is_empty() && listed.iter().all(|p| p["colour_mix"].as_array().is_some_and(|m| !m.is_empty())), "{listed:?}");
    for hit in hits {
        let same = listed.iter().find(|p| p["id"] == hit["id"]);
        assert_eq!(same.map(|p| &p["colour_mix"]), Some(&hit["colour_mix"]), "{}", hit["id"]);
    }
    let plain = ok_json(common::client().get(server.url("/api/products?filter=baseColour%3DRed&limit=5")).send().expect("list"));
    assert!(plain["products"].as_array().is_some_and(|p| !p.is_empty() && p.iter().all(|p| p.get("colour_mix").is_none())), "{plain}");
    // A patterned photo: its colour is Multi, with its main colours for the swatch beside it.
    let two_tone = ok_json(search_photo(&server, two_tone(160), &[("k", "1")]));
    let mix: Vec<&str> = two_tone["query_colour"]["mix"].as_array().map(|m| m.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default();
    assert!(two_tone["query_colour"]["name"] == "Multi" && mix.contains(&"Red") && mix.contains(&"Blue"), "{}", two_tone["query_colour"]);

    let message = expect_error(search_photo(&server, query, &[("colour", "chartreuse")]), 422, "bad_parameters");
    assert!(message.contains("Navy Blue") && message.contains("any"), "{message}");
    expect_error(search_json(&server, json!({"product_id": "red.png", "colour": "mauve"})), 422, "bad_parameters");
    expect_error(search_json(&server, json!({"vector": [1.0, 0.0], "colour_vector": [0.5, 0.5]})), 422, "bad_parameters");
}

#[test]
fn the_cli_takes_colour_and_lists_the_names_when_it_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let photo = dir.path().join("q.png");
    std::fs::write(&photo, painted(&garment(), rgb_of("Blue"), 160)).expect("write");
    let out = lookalike(&["search", "--db", path(coloured_catalog()), path(&photo), "--colour", "chartreuse"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Navy Blue") && stderr.contains("match"), "{stderr}");

    let out = lookalike(&["search", "--db", path(coloured_catalog()), path(&photo), "--colour", "navy blue", "-k", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("colour of the photo: Blue") && stdout.contains("colour=Navy Blue"), "{stdout}");
}

#[test]
fn reindexing_an_old_catalog_gives_it_colours_without_encoding_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("old.db");
    std::fs::copy(coloured_catalog(), &db).expect("copy");
    // A catalog from before colours: no descriptors, no computed names.
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute_batch("UPDATE vectors SET colour = NULL, colour_crc = NULL").expect("forget colours");
        conn.execute_batch("UPDATE products SET metadata = json_remove(metadata, '$.colour')").expect("forget names");
    }
    let vectors_before = SqliteCatalog::open_existing(&db).expect("catalog").vector(1).expect("read");
    let photos = db.parent().expect("dir").join("copies");
    std::fs::create_dir(&photos).expect("mkdir");
    std::fs::write(photos.join("red.png"), painted(&garment(), rgb_of("Red"), 112)).expect("write");
    std::fs::write(photos.join("blue.png"), painted(&garment(), rgb_of("Blue"), 112)).expect("write");
    let out = lookalike(&["index", "--db", path(&db), "--images", path(&photos)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 new or changed") && stderr.contains("2 of them given their colour"), "{stderr}");
    let catalog = SqliteCatalog::open_existing(&db).expect("catalog");
    assert_eq!(catalog.colours().expect("colours").len(), 2, "the two re-indexed products have colours again");
    assert_eq!(catalog.get_by_id("red.png").expect("read").and_then(|p| p.colour().map(str::to_string)).as_deref(), Some("Red"));
    assert_eq!(catalog.vector(1).expect("read"), vectors_before, "vectors untouched");
}
