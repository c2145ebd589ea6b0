//! End-to-end tests of the `lookalike` command on small real samples: Fashion-MNIST images, the
//! real EfficientNet-Lite0 model, and catalogs in the Fashion Product Images layout that the tests
//! write themselves. Assets come from `make setup`; a missing asset fails the test with that hint.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_catalog, fm_dir, lookalike, path, shared_catalog, test_photo, wait_until_said, BIN};
use lookalike::assets::Assets;
use lookalike::import::fashion_mnist::FashionMnist;

fn ok(args: &[&str]) -> String {
    let out = lookalike(args);
    assert!(out.status.success(), "lookalike {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes Fashion-MNIST test image `i` as a PNG and returns its path and class name.
fn test_image(dir: &Path, i: usize) -> (PathBuf, String) {
    let fm = FashionMnist::load(&fm_dir(), "test").expect("test split");
    let file = dir.join(format!("query-{i}.png"));
    fm.image(i).expect("image").save(&file).expect("save png");
    (file, fm.class_name(i).to_string())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn index_is_incremental() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let out = lookalike(&["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "320", "--fashion-mnist-dir", path(&fm_dir())]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("indexed 20 new or changed, 300 unchanged"), "{stderr}");
    assert!(ok(&["info", "--db", path(&db)]).contains("products: 320"));
}

/// Two encoder sessions finish batches in whatever order the scheduler gives them; the import
/// still commits them in the source's order, so product keys (which break ties between equal
/// scores and pick the products the likeness bands are measured on) do not depend on timing.
/// Before, two imports of the same photos gave a quarter of the products different keys.
#[test]
fn import_keys_follow_the_source_order_whatever_order_batches_finish_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("order.db");
    ok(&["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "120", "--batch-size", "2", "--fashion-mnist-dir", path(&fm_dir())]);
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open catalog");
    let ids: Vec<String> = conn.prepare("SELECT id FROM products ORDER BY key").and_then(|mut s| s.query_map([], |r| r.get(0))?.collect()).expect("read products");
    let source_order: Vec<String> = (0..120).map(|i| format!("fmnist-train-{i:05}")).collect();
    assert_eq!(ids, source_order);
}

#[test]
fn search_finds_products_of_the_same_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = shared_catalog();
    let mut same = 0;
    let queries = 20;
    for i in 0..queries {
        let (file, class) = test_image(dir.path(), i);
        let out = json(&ok(&["search", "--db", path(db), path(&file), "-k", "5", "--json"]));
        let hits = out["hits"].as_array().expect("hits");
        assert_eq!(hits.len(), 5);
        let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().expect("score")).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked best first: {scores:?}");
        same += hits.iter().filter(|h| h["category"] == class.as_str()).count();
    }
    let precision = same as f64 / (queries * 5) as f64;
    // 300 catalog products, 10 classes: chance is 0.1.
    assert!(precision > 0.6, "precision@5 on held-out images was {precision}");
}

#[test]
fn filters_return_k_matching_products() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = test_image(dir.path(), 0);
    let out = json(&ok(&["search", "--db", path(shared_catalog()), path(&file), "-k", "8", "--filter", "articleType=Bag", "--json"]));
    let hits = out["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 8, "k hits while enough products match");
    assert!(hits.iter().all(|h| h["metadata"]["articleType"] == "Bag"));

    let out = json(&ok(&["search", "--db", path(shared_catalog()), path(&file), "-k", "300", "--filter", "articleType=Bag", "--filter", "articleType=Sandal", "--json"]));
    let hits = out["hits"].as_array().expect("hits");
    assert!(hits.len() > 8 && hits.len() < 300, "only the matching products: {}", hits.len());
    assert!(hits.iter().all(|h| h["metadata"]["articleType"] == "Bag" || h["metadata"]["articleType"] == "Sandal"));

    let out = json(&ok(&["search", "--db", path(shared_catalog()), path(&file), "--filter", "articleType=Unicorn", "--json"]));
    assert_eq!(out["hits"].as_array().map(Vec::len), Some(0));
    // A filter that matches nothing says which part no product has, and what there is instead.
    let table = ok(&["search", "--db", path(shared_catalog()), path(&file), "--filter", "articleType=Unicorn"]);
    assert!(table.contains("(no products match: no product has articleType=Unicorn (articleType has: ") && table.contains("Bag"), "{table}");
    let table = ok(&["search", "--db", path(shared_catalog()), "--like", "fmnist-train-00000", "--filter", "articletype=bag"]);
    assert!(table.contains("no product has a column \"articletype\" (did you mean \"articleType\"?)"), "{table}");
    let table = ok(&["list", "--db", path(shared_catalog()), "--filter", "articleType=bag"]);
    assert!(table.contains("(no products match: no product has articleType=bag (did you mean articleType=Bag?))"), "{table}");
    let table = ok(&["list", "--db", path(shared_catalog()), "--filter", "articleType=Bag", "--filter", "split=test"]);
    assert!(table.contains("no product has split=test (split has: train)"), "{table}");

    let out = lookalike(&["search", "--db", path(shared_catalog()), path(&file), "--filter", "articleType"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("column=value"));
}

#[test]
fn items_all_prints_one_table_per_product_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = test_image(dir.path(), 0);
    let db = path(shared_catalog());
    let out = json(&ok(&["search", "--db", db, path(&file), "-k", "3", "--items", "all", "--json"]));
    let (detections, items) = (out["detections"].as_array().expect("detections"), out["items"].as_array().expect("items"));
    assert_eq!(detections.len(), items.len());
    let table = ok(&["search", "--db", db, path(&file), "-k", "3", "--items", "all"]);
    assert_eq!(table.matches("rank  id").count(), 1 + items.len(), "the main table and one per product: {table}");
    assert!(table.contains("found in the photo, main first") || table.contains("no single product stands out"), "{table}");

    let out = lookalike(&["search", "--db", db, path(&file), "--items", "every"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"main\" or \"all\""), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn more_like_this_and_paging() {
    let db = shared_catalog();
    let first = json(&ok(&["search", "--db", path(db), "--like", "fmnist-train-00000", "-k", "10", "--json"]));
    let hits = first["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|h| h["id"] != "fmnist-train-00000"), "the product itself is not its own look-alike");
    let second = json(&ok(&["search", "--db", path(db), "--like", "fmnist-train-00000", "-k", "5", "--offset", "5", "--json"]));
    let page2: Vec<&serde_json::Value> = second["hits"].as_array().expect("hits").iter().map(|h| &h["id"]).collect();
    let tail: Vec<&serde_json::Value> = hits[5..].iter().map(|h| &h["id"]).collect();
    assert_eq!(page2, tail);
    assert_eq!(second["hits"][0]["rank"], 6);

    let out = lookalike(&["search", "--db", path(db), "--like", "no-such-product"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-product"));
}

#[test]
fn list_pages_through_the_catalog_and_filters_it() {
    let db = path(shared_catalog());
    // Page after page, each page's token leads to the next: every product once, in catalog order.
    let (mut seen, mut token) = (Vec::new(), None::<String>);
    loop {
        let mut args = vec!["list", "--db", db, "--limit", "128", "--json"];
        if let Some(token) = &token {
            args.extend(["--page", token.as_str()]);
        }
        let page = json(&ok(&args));
        let products = page["products"].as_array().expect("products");
        assert!(products.len() <= 128 && page["total"] == 300, "every page says how many match");
        seen.extend(products.iter().map(|p| p["id"].as_str().expect("id").to_string()));
        match page["next_page"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..300).map(|i| format!("fmnist-train-{i:05}")).collect();
    assert_eq!(seen, expected);

    let bags = json(&ok(&["list", "--db", db, "--filter", "articleType=Bag", "--limit", "500", "--json"]));
    let total = bags["total"].as_u64();
    let bags = bags["products"].as_array().expect("products");
    assert_eq!(total, Some(bags.len() as u64), "the filter's total counts what it lists");
    assert!(!bags.is_empty() && bags.len() < 300, "only the bags: {}", bags.len());
    assert!(bags.iter().all(|p| p["metadata"]["articleType"] == "Bag" && p["category"] == "Bag"));

    let table = ok(&["list", "--db", db, "--limit", "2"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "a header, two products, how to go on: {table}");
    assert!(lines[1].starts_with("fmnist-train-00000") && lines[2].starts_with("fmnist-train-00001"), "{table}");
    assert!(lines[3].contains("300 products in all") && lines[3].contains("--page "), "{table}");
    assert!(ok(&["list", "--db", db, "--filter", "articleType=Unicorn"]).contains("(no products match: no product has articleType=Unicorn"));

    let out = lookalike(&["list", "--db", db, "--page", "not-a-token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not a page token"), "{stderr}");
    let out = lookalike(&["list", "--db", db, "--limit", "0"]);
    assert!(!out.status.success(), "an empty page is refused");
    let out = lookalike(&["list", "--db", "/nonexistent/shop.db"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("lookalike index"));
    // Reading a collection takes where it is, not how a new one is made.
    let out = lookalike(&["list", "--db", db, "--store", "qdrant://127.0.0.1:9", "--shards", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("unexpected argument '--shards'"), "{stderr}");
}

#[test]
fn remove_takes_products_out_of_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let before = json(&ok(&["search", "--db", path(&db), "--like", "fmnist-train-00001", "-k", "3", "--json"]));
    let top = before["hits"][0]["id"].as_str().expect("id").to_string();
    ok(&["remove", "--db", path(&db), &top]);
    let after = json(&ok(&["search", "--db", path(&db), "--like", "fmnist-train-00001", "-k", "3", "--json"]));
    assert!(after["hits"].as_array().expect("hits").iter().all(|h| h["id"] != top.as_str()));
    assert!(ok(&["info", "--db", path(&db)]).contains("products: 299"));
    let out = lookalike(&["remove", "--db", path(&db), &top]);
    assert!(!out.status.success(), "removing twice reports the unknown id");
}

#[test]
fn bad_images_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = shared_catalog();
    let (png, _) = test_image(dir.path(), 3);
    let mut jpeg = Vec::new();
    image::open(&png)
        .expect("png")
        .resize(300, 300, image::imageops::FilterType::Triangle)
        .to_rgb8()
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .expect("jpeg");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero.jpg", Vec::new()),
        ("truncated.jpg", jpeg[..jpeg.len() / 3].to_vec()),
        ("text.jpg", b"this is not an image, just a text file\n".to_vec()),
        ("huge.png", huge_png_header(20000, 20000)),
    ];
    for (name, bytes) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).expect("write");
        let out = lookalike(&["search", "--db", path(db), path(&file)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(stderr.contains(name), "{name}: error does not name the file: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: panic: {stderr}");
        let said = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        let reasons = ["the file is empty", "corrupt image", "unsupported format", "more than the limit"];
        assert_eq!(reasons.iter().map(|r| said.matches(r).count()).sum::<usize>(), 1, "{name}: the reason, said once: {said}");
    }
    let out = lookalike(&["search", "--db", path(db), "/nonexistent/photo.jpg"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/photo.jpg"));
}

/// A PNG signature and IHDR chunk claiming `w`x`h` pixels, followed by garbage.
fn huge_png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let crc = crc32(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc.to_be_bytes());
    png.extend([0u8; 64]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn missing_catalog_and_bad_flags_are_clear() {
    let out = lookalike(&["search", "--db", "/nonexistent/shop.db", "x.jpg"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lookalike index"));
    let out = lookalike(&["index", "--db", "x.db"]);
    assert!(!out.status.success(), "index needs a source");
    let out = lookalike(&["index", "--db", "x.db", "--fashion-mnist", "validation"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("validation"));
    let out = lookalike(&["search", "--db", path(shared_catalog()), "--like", "x", "--bogus"]);
    assert!(!out.status.success());
    // No results asked for is no search, not "no products match".
    let out = lookalike(&["search", "--db", path(shared_catalog()), "--like", "fmnist-train-00000", "-k", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("'-k <K>': must be at least 1"), "{stderr}");
    // Checked before any connection is tried: more acknowledgements than copies.
    let out = lookalike(&["sync", "--db", path(shared_catalog()), "--store", "qdrant://127.0.0.1:9", "--replicas", "2", "--write-consistency", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--write-consistency 3"), "{}", String::from_utf8_lossy(&out.stderr));
    // A swap fills a new collection, a recreate empties this one: one or the other.
    let out = lookalike(&["sync", "--db", path(shared_catalog()), "--store", "qdrant://127.0.0.1:9", "--swap", "--recreate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--swap") && stderr.contains("--recreate") && stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn kaggle_layout_with_dirty_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = dir.path().join("shop");
    std::fs::create_dir_all(shop.join("images")).expect("mkdir");
    let fm = FashionMnist::load(&fm_dir(), "test").expect("test split");
    // Real product photos: Fashion-MNIST items scaled up and saved as JPEG, as a shop's would be.
    for (id, i) in [("1001", 0usize), ("1002", 1), ("1003", 2), ("1004", 3), ("1006", 5)] {
        let img = image::DynamicImage::ImageLuma8(fm.image(i).expect("image")).resize(112, 112, image::imageops::FilterType::Triangle);
        img.to_rgb8().save(shop.join("images").join(format!("{id}.jpg"))).expect("save");
    }
    std::fs::write(shop.join("images/1006.jpg"), b"not really a jpeg").expect("write");
    let csv = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n\
        1001,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,Puma Men Black Shoes\n\
        1002,Women,Apparel,Topwear,Tshirts,White,Summer,2012,Casual,Nike Women, Dri-FIT, White Tshirt\n\
        1003,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Formal,Arrow Men Blue Shirt\n\
        1004,Women,Apparel,Bottomwear,Trousers\n\
        1005,Men,Apparel,Topwear,Shirts,Red,Fall,2011,Casual,Missing Image Shirt\n\
        1006,Women,Accessories,Bags,Handbags,Brown,Winter,2016,Casual,Broken Image Bag\n";
    std::fs::write(shop.join("styles.csv"), csv).expect("csv");
    let db = dir.path().join("shop.db");
    let out = lookalike(&["index", "--db", path(&db), "--kaggle", path(&shop)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1005"), "missing image reported: {stderr}");
    assert!(stderr.contains("1006"), "unreadable image reported: {stderr}");
    assert!(ok(&["info", "--db", path(&db)]).contains("products: 3"));
    // Painting is for Fashion-MNIST: refused with a shop's folder, not silently ignored.
    let out = lookalike(&["index", "--db", path(&db), "--kaggle", path(&shop), "--colourise", "7"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--colourise") && stderr.contains("cannot be used with"), "{stderr}");

    let out = json(&ok(&["search", "--db", path(&db), path(&shop.join("images/1002.jpg")), "-k", "3", "--json"]));
    let top = &out["hits"][0];
    assert_eq!(top["id"], "1002");
    assert_eq!(top["name"], "Nike Women, Dri-FIT, White Tshirt", "commas inside the name are kept");
    assert_eq!(top["category"], "Tshirts");
    assert_eq!(top["colour"], "White");
    assert_eq!(top["metadata"]["season"], "Summer");
    let men = json(&ok(&["search", "--db", path(&db), path(&shop.join("images/1002.jpg")), "--filter", "gender=Men", "--json"]));
    let ids: Vec<&str> = men["hits"].as_array().expect("hits").iter().filter_map(|h| h["id"].as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"1001") && ids.contains(&"1003"));

    // A shop's own spreadsheet export: semicolons, a `SKU` column naming the products and
    // their photos (`--id-column`, any case).
    let export = dir.path().join("export");
    std::fs::create_dir_all(export.join("images")).expect("mkdir");
    std::fs::copy(shop.join("images/1001.jpg"), export.join("images/SH-1.JPG")).expect("copy");
    std::fs::copy(shop.join("images/1003.jpg"), export.join("images/SH-3.jpg")).expect("copy");
    std::fs::write(export.join("styles.csv"), "SKU;articleType;price\nSH-1;Casual Shoes;59,90\nSH-3;Shirts;29,90\n").expect("csv");
    let exported = dir.path().join("export.db");
    let out = lookalike(&["index", "--db", path(&exported), "--kaggle", path(&export)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no id column") && stderr.contains("--id-column"), "{stderr}");
    ok(&["index", "--db", path(&exported), "--kaggle", path(&export), "--id-column", "sku"]);
    let listed = json(&ok(&["list", "--db", path(&exported), "--json"]));
    let products: Vec<(&str, &str)> =
        listed["products"].as_array().expect("products").iter().map(|p| (p["id"].as_str().unwrap_or(""), p["price"].as_str().unwrap_or(""))).collect();
    assert_eq!(products, [("SH-1", "59,90"), ("SH-3", "29,90")], "{listed}");
    // The catalog keeps the column: tomorrow's import needs no --id-column, and one naming
    // another column (which would import every product again under other ids) is refused.
    assert!(ok(&["info", "--db", path(&exported)]).contains("product ids: the styles.csv column \"sku\""));
    let out = lookalike(&["index", "--db", path(&exported), "--kaggle", path(&export)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("indexed 0 new or changed, 2 unchanged"), "{stderr}");
    let out = lookalike(&["index", "--db", path(&exported), "--kaggle", path(&export), "--id-column", "articleType"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("by the styles.csv column \"sku\"") && stderr.contains("leave --id-column out"), "{stderr}");
    ok(&["index", "--db", path(&exported), "--kaggle", path(&export), "--id-column", "SKU"]);
    assert_eq!(json(&ok(&["list", "--db", path(&exported), "--json"]))["products"].as_array().map(Vec::len), Some(2), "nothing imported twice");
}

/// A product's stored search vector, by id.
fn stored_vector(db: &Path, id: &str) -> Vec<f32> {
    let catalog = lookalike::catalog::SqliteCatalog::open_existing(db).expect("catalog");
    let product = catalog.get_by_id(id).expect("read").unwrap_or_else(|| panic!("product {id} is in the catalog"));
    catalog.vector(product.key).expect("read").expect("its vector")
}

#[test]
fn products_sharing_a_photo_are_encoded_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = dir.path().join("shop");
    std::fs::create_dir_all(shop.join("images")).expect("mkdir");
    let fm = FashionMnist::load(&fm_dir(), "test").expect("test split");
    let photo = |i: usize| {
        let file = dir.path().join(format!("photo-{i}.jpg"));
        image::DynamicImage::ImageLuma8(fm.image(i).expect("image")).resize(112, 112, image::imageops::FilterType::Triangle).to_rgb8().save(&file).expect("save");
        file
    };
    let (shirt, shoe, bag) = (photo(1), photo(0), photo(3));
    // Size variants of one shirt share its photo (the same bytes under three ids).
    for (id, file) in [("1001", &shirt), ("1002", &shoe), ("1003", &shirt), ("1004", &shirt)] {
        std::fs::copy(file, shop.join("images").join(format!("{id}.jpg"))).expect("copy");
    }
    // In batches of two: 1003 takes the vectors 1001 gets in its batch, 1004 those 1001 has
    // in the catalog by then.
    std::fs::write(shop.join("styles.csv"), "id,articleType,size\n1001,Shirts,S\n1003,Shirts,M\n1002,Shoes,42\n1004,Shirts,L\n").expect("csv");
    let db = dir.path().join("shop.db");
    let out = lookalike(&["index", "--db", path(&db), "--kaggle", path(&shop), "--batch-size", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("indexed 4 new or changed (2 of them with another product's photo"), "{stderr}");
    let first = stored_vector(&db, "1001");
    assert_eq!(stored_vector(&db, "1003"), first, "the same photo's vectors, copied");
    assert_eq!(stored_vector(&db, "1004"), first);
    assert_ne!(stored_vector(&db, "1002"), first);
    // The shirt's three listings are one result, standing for the others; ranks count photos.
    let hits = json(&ok(&["search", "--db", path(&db), path(&shirt), "-k", "3", "--json"]));
    let ids_of = |hits: &serde_json::Value, field: &str| -> Vec<String> {
        hits[field].as_array().map(|a| a.iter().filter_map(|h| h["id"].as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    assert_eq!(ids_of(&hits, "hits"), ["1001", "1002"], "{hits}");
    assert_eq!(ids_of(&hits["hits"][0], "variants"), ["1003", "1004"], "{hits}");
    assert_eq!(hits["hits"][0]["variants"][1]["metadata"]["size"], "L", "{hits}");
    assert_eq!(hits["hits"][1]["rank"], 2, "{hits}");
    assert!(hits["hits"][1].get("variants").is_none(), "a product alone with its photo has no variants: {hits}");
    let page_two = json(&ok(&["search", "--db", path(&db), path(&shirt), "-k", "1", "--offset", "1", "--json"]));
    assert_eq!(ids_of(&page_two, "hits"), ["1002"], "pages count photos: {page_two}");
    // A filter admits listings, not photos: size M alone, without its siblings.
    let medium = json(&ok(&["search", "--db", path(&db), path(&shirt), "--filter", "size=M", "--json"]));
    assert_eq!(ids_of(&medium, "hits"), ["1003"], "{medium}");
    assert!(medium["hits"][0].get("variants").is_none(), "{medium}");
    // "More like" a listing leaves out its photo's other listings too.
    let like = json(&ok(&["search", "--db", path(&db), "--like", "1003", "--json"]));
    assert_eq!(ids_of(&like, "hits"), ["1002"], "{like}");
    let table = ok(&["search", "--db", path(&db), path(&shirt)]);
    assert!(table.contains("also listed with this photo: 1003, 1004"), "{table}");
    // `eval` counts photos as search shows them: the shirt's three listings are one relevant
    // result (P@10 1/10, not 3/10) and the one relevant photo its label has, found first.
    let queries = dir.path().join("queries");
    std::fs::create_dir_all(queries.join("images")).expect("mkdir");
    std::fs::copy(&shirt, queries.join("images/q1.jpg")).expect("copy");
    std::fs::write(queries.join("styles.csv"), "id,articleType\nq1,Shirts\n").expect("csv");
    let per_query = dir.path().join("per-query.jsonl");
    let report = json(&ok(&["eval", "--db", path(&db), "--query-photos", path(&queries), "--methods", "lookalike", "--per-query", path(&per_query), "--json"]));
    let measured = &report["methods"]["lookalike"];
    assert_eq!((measured["precision_at_1"].as_f64(), measured["precision_at_10"].as_f64(), measured["map_at_10"].as_f64()), (Some(1.0), Some(0.1), Some(1.0)), "{report}");
    let line = json(std::fs::read_to_string(&per_query).expect("per-query file").lines().next().expect("one query"));
    let ranked: Vec<&str> = line["methods"]["lookalike"]["hits"].as_array().expect("hits").iter().filter_map(|h| h["label"].as_str()).collect();
    assert_eq!(ranked, ["Shirts", "Shoes"], "one hit a photo: {line}");
    // Scenes of several products count photos too: a scene of shirts finds the shirt's photo
    // once for each shirt placed in it (1/10, not 3/10 for its three listings).
    let scene_queries = dir.path().join("scene-queries");
    std::fs::create_dir_all(scene_queries.join("images")).expect("mkdir");
    for id in ["q1", "q2", "q3"] {
        std::fs::copy(&shirt, scene_queries.join("images").join(format!("{id}.jpg"))).expect("copy");
    }
    std::fs::write(scene_queries.join("styles.csv"), "id,articleType\nq1,Shirts\nq2,Shirts\nq3,Shirts\n").expect("csv");
    let report = json(&ok(&["eval", "--db", path(&db), "--query-photos", path(&scene_queries), "--methods", "lookalike", "--scenes", "1", "--json"]));
    let whole = report["scenes"]["whole_photo_precision_at_10"].as_f64().expect("whole-photo P@10");
    assert!((whole - 0.1).abs() < 1e-9, "{report}");

    // The shirt gets a new photo, and a new product (listed after it) has the old one: the
    // other variants still have it, so it is copied from them, never from the changed shirt.
    std::fs::copy(&bag, shop.join("images/1001.jpg")).expect("copy");
    std::fs::copy(&shirt, shop.join("images/1005.jpg")).expect("copy");
    std::fs::write(shop.join("styles.csv"), "id,articleType,size\n1001,Shirts,S\n1002,Shoes,42\n1003,Shirts,M\n1004,Shirts,L\n1005,Shirts,XL\n").expect("csv");
    let out = lookalike(&["index", "--db", path(&db), "--kaggle", path(&shop), "--batch-size", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("indexed 2 new or changed (1 of them with another product's photo") && stderr.contains("3 unchanged"), "{stderr}");
    assert_eq!(stored_vector(&db, "1005"), first);
    assert_ne!(stored_vector(&db, "1001"), first, "the new photo is encoded");

    // Where the product that had the photo changed it earlier in the same import and no other
    // has it, the new product is encoded: it never takes the vectors of another photo.
    let alone = dir.path().join("alone");
    std::fs::create_dir_all(alone.join("images")).expect("mkdir");
    std::fs::copy(&shirt, alone.join("images/1001.jpg")).expect("copy");
    std::fs::write(alone.join("styles.csv"), "id,articleType\n1001,Shirts\n").expect("csv");
    let alone_db = dir.path().join("alone.db");
    ok(&["index", "--db", path(&alone_db), "--kaggle", path(&alone)]);
    let before = stored_vector(&alone_db, "1001");
    std::fs::copy(&bag, alone.join("images/1001.jpg")).expect("copy");
    std::fs::copy(&shirt, alone.join("images/1006.jpg")).expect("copy");
    std::fs::write(alone.join("styles.csv"), "id,articleType\n1001,Shirts\n1006,Shirts\n").expect("csv");
    let out = lookalike(&["index", "--db", path(&alone_db), "--kaggle", path(&alone), "--batch-size", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("indexed 2 new or changed, 0 unchanged"), "{stderr}");
    let encoded = stored_vector(&alone_db, "1006");
    let cosine: f32 = encoded.iter().zip(&before).map(|(a, b)| a * b).sum();
    assert!(cosine > 0.999, "the shirt's photo encoded again: cosine {cosine} to its vector before");
    assert_ne!(stored_vector(&alone_db, "1001"), before);
}

/// A shop changes a price or a name in `styles.csv` and runs `index` again: the product takes
/// the new row without its photo being encoded again, and a run with nothing changed changes
/// nothing. (Before, a product whose photo was unchanged kept its old row for good.)
#[test]
fn a_changed_csv_row_is_taken_up_by_the_next_index_without_encoding_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = dir.path().join("shop");
    std::fs::create_dir_all(shop.join("images")).expect("mkdir");
    let fm = FashionMnist::load(&fm_dir(), "test").expect("test split");
    for (id, i) in [("2001", 0usize), ("2002", 1), ("2003", 2)] {
        fm.image(i).expect("image").save(shop.join("images").join(format!("{id}.png"))).expect("save");
    }
    let csv = |price: &str, name: &str| {
        format!(
            "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName,price\n\
             2001,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,Black Shoes,49.99\n\
             2002,Women,Apparel,Topwear,Tshirts,White,Summer,2012,Casual,{name},{price}\n\
             2003,Men,Apparel,Bottomwear,Trousers,Grey,Fall,2011,Formal,Grey Trousers,39.99\n"
        )
    };
    std::fs::write(shop.join("styles.csv"), csv("19.99", "White Tshirt")).expect("csv");
    let db = dir.path().join("shop.db");
    let index = || {
        let out = lookalike(&["index", "--db", path(&db), "--kaggle", path(&shop)]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    assert!(index().contains("indexed 3 new or changed"));

    std::fs::write(shop.join("styles.csv"), csv("14.99", "White Tshirt (summer sale)")).expect("csv");
    let stderr = index();
    assert!(stderr.contains("indexed 0 new or changed, 3 unchanged (1 of them with new details from the source)"), "{stderr}");
    let found = json(&ok(&["search", "--db", path(&db), path(&shop.join("images/2002.png")), "-k", "1", "--json"]));
    let top = &found["hits"][0];
    assert_eq!((top["id"].as_str(), top["name"].as_str(), top["metadata"]["price"].as_str()), (Some("2002"), Some("White Tshirt (summer sale)"), Some("14.99")));

    let stderr = index();
    assert!(stderr.contains("indexed 0 new or changed, 3 unchanged, 0 skipped"), "nothing changed, nothing written: {stderr}");
}

/// A shop re-imports its export every night: `--remove-unlisted` takes the products it no
/// longer lists out of the catalog (discontinued), keeps those it lists without a photo this
/// time, and changes nothing when the export looks wrong.
#[test]
fn remove_unlisted_makes_the_catalog_mirror_its_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = dir.path().join("shop");
    std::fs::create_dir_all(shop.join("images")).expect("mkdir");
    let fm = FashionMnist::load(&fm_dir(), "test").expect("test split");
    for (id, i) in [("3001", 0usize), ("3002", 1), ("3003", 2), ("3004", 3), ("3005", 4)] {
        fm.image(i).expect("image").save(shop.join("images").join(format!("{id}.png"))).expect("save");
    }
    let header = "id,articleType,productDisplayName\n";
    let write_csv = |rows: &[&str]| std::fs::write(shop.join("styles.csv"), format!("{header}{}\n", rows.join("\n"))).expect("csv");
    let db = dir.path().join("shop.db");
    let ids = || -> Vec<String> {
        let listed = json(&ok(&["list", "--db", path(&db), "--json"]));
        let mut ids: Vec<String> = listed["products"].as_array().expect("products").iter().map(|p| p["id"].as_str().expect("id").to_string()).collect();
        ids.sort();
        ids
    };
    write_csv(&["3001,Shoes,a", "3002,Shirts,b", "3003,Shirts,c", "3004,Bags,d"]);
    ok(&["index", "--db", path(&db), "--kaggle", path(&shop)]);
    assert_eq!(ids(), ["3001", "3002", "3003", "3004"]);

    // 3004 discontinued, 3003's photo missing tonight (listed: kept), 3005 new.
    std::fs::remove_file(shop.join("images/3003.png")).expect("rm");
    write_csv(&["3001,Shoes,a", "3002,Shirts,b", "3003,Shirts,c", "3005,Dresses,e"]);
    let out = lookalike(&["index", "--db", path(&db), "--kaggle", path(&shop), "--remove-unlisted"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("removed 1 product the source no longer lists: 3004; catalog now holds 4 products"), "{stderr}");
    assert_eq!(ids(), ["3001", "3002", "3003", "3005"]);
    let gone = lookalike(&["search", "--db", path(&db), "--like", "3004"]);
    assert!(!gone.status.success(), "3004 is gone from search too");
    // Without the flag, an unlisted product stays (the default never removes).
    write_csv(&["3001,Shoes,a", "3002,Shirts,b", "3003,Shirts,c"]);
    ok(&["index", "--db", path(&db), "--kaggle", path(&shop)]);
    assert_eq!(ids(), ["3001", "3002", "3003", "3005"]);

    // An export that looks wrong changes nothing: a row whose id cannot be read, a source
    // that lists none, one that would take more than half the catalog; and --limit is refused.
    let refused = |rows: &[&str], extra: &[&str], says: &str| {
        write_csv(rows);
        let mut args = vec!["index", "--db", path(&db), "--kaggle", path(&shop), "--remove-unlisted"];
        args.extend_from_slice(extra);
        let out = lookalike(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{rows:?} {extra:?}: {stderr}");
        assert_eq!(ids(), ["3001", "3002", "3003", "3005"], "{rows:?}: nothing changed");
    };
    refused(&["3001,Shoes,a", "3002,Shirts,b", ",Shirts,no id", "3005,Dresses,e"], &[], "1 row(s) whose product id cannot be read (line 4)");
    refused(&[], &[], "the source lists no products");
    refused(&["3001,Shoes,a"], &[], "would remove 3 of the catalog's 4 products, more than half");
    refused(&["3001,Shoes,a", "3002,Shirts,b", "3005,Dresses,e"], &["--limit", "2"], "cannot be used with");
}

/// The colour name lookalike computed at import is computed again by the next `index` from the
/// stored descriptor (no photo encoded), so a catalog takes up a better naming rule; here a
/// name that no longer matches its descriptor, as an older rule's "Multi" for a shaded white.
#[test]
fn index_names_colours_again_from_the_stored_descriptors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).expect("mkdir");
    let fm = FashionMnist::load(&fm_dir(), "test").expect("test split");
    // Painted red on white, as a catalog shot.
    let grey = fm.image(1).expect("image");
    let red = image::RgbImage::from_fn(grey.width(), grey.height(), |x, y| {
        let v = f32::from(grey.get_pixel(x, y)[0]) / 255.0;
        let alpha = (v * 3.0).min(1.0);
        image::Rgb([215.0f32, 30.0, 40.0].map(|c| (alpha * c * (0.85 + 0.15 * v) + (1.0 - alpha) * 255.0) as u8))
    });
    image::imageops::resize(&red, 112, 112, image::imageops::FilterType::Triangle).save(photos.join("red.png")).expect("save");
    let db = dir.path().join("photos.db");
    ok(&["index", "--db", path(&db), "--images", path(&photos)]);
    let conn = rusqlite::Connection::open(&db).expect("open");
    let colour = |conn: &rusqlite::Connection| conn.query_row("SELECT json_extract(metadata, '$.colour') FROM products", [], |r| r.get::<_, String>(0)).expect("colour");
    assert_eq!(colour(&conn), "Red");
    conn.execute("UPDATE products SET metadata = json_set(metadata, '$.colour', 'Multi')", []).expect("rename");

    let out = lookalike(&["index", "--db", path(&db), "--images", path(&photos)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("indexed 0 new or changed, 1 unchanged (1 of them with new details from the source)"), "{stderr}");
    assert_eq!(colour(&conn), "Red");
}

/// A photo folder moved or cleaned after the import leaves products without their photo:
/// `check` names them and what to do, and still calls the catalog sound (nothing in it is
/// damaged, and `repair` could not bring the files back).
#[test]
fn check_names_the_products_whose_photo_files_are_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).expect("mkdir");
    let fm = FashionMnist::load(&fm_dir(), "test").expect("test split");
    for i in 0..2 {
        fm.image(i).expect("image").save(photos.join(format!("p{i}.png"))).expect("save");
    }
    let db = dir.path().join("photos.db");
    ok(&["index", "--db", path(&db), "--images", path(&photos)]);
    let out = lookalike(&["check", "--db", path(&db)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("is sound\n") && !stderr.contains("cannot be read"), "{stderr}");

    std::fs::remove_file(photos.join("p1.png")).expect("remove a photo");
    let out = lookalike(&["check", "--db", path(&db), "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 products' photo files cannot be read") && stderr.contains("product p1.png: reading ") && stderr.contains("is sound, but 1 photo files are missing"),
        "{stderr}"
    );
    assert!(stderr.contains("the page shows them without a photo"), "{stderr}");
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let unreadable = report["unreadable_photos"].as_array().expect("a list");
    assert_eq!((unreadable.len(), unreadable[0][0].as_str(), report["unreadable_photos_linked"].as_u64()), (1, Some("p1.png"), Some(0)), "{report}");

    // A product linking the shop's own copy of its photo shows that copy on the page.
    let conn = rusqlite::Connection::open(&db).expect("open the catalog");
    conn.execute("UPDATE products SET metadata = json_set(metadata, '$.image_url', 'https://shop.example/p1.jpg') WHERE id = 'p1.png'", []).expect("link");
    let out = lookalike(&["check", "--db", path(&db), "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("1 products' photo files cannot be read: the page shows the shop's copies their image_url links"), "{stderr}");
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["unreadable_photos_linked"].as_u64(), Some(1));
}

/// `search`'s table tells patterned products apart by their main colours, and says which
/// colours a patterned photo holds (`--json` carries them as `colour_mix` and `query_colour.mix`).
/// On a catalog of one product, as a shop's first try may be.
#[test]
fn the_search_table_names_a_patterned_products_colours() {
    let dir = tempfile::tempdir().expect("tempdir");
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).expect("mkdir");
    let fm = FashionMnist::load(&fm_dir(), "test").expect("test split");
    let grey = image::DynamicImage::ImageLuma8(fm.image(1).expect("image")).resize(112, 112, image::imageops::FilterType::Triangle);
    common::striped(&grey).save(photos.join("striped.png")).expect("save");
    let db = dir.path().join("photos.db");
    ok(&["index", "--db", path(&db), "--images", path(&photos)]);

    let table = ok(&["search", "--db", path(&db), path(&photos.join("striped.png")), "-k", "1"]);
    let line = |start: &str| table.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no {start:?} line:\n{table}")).to_string();
    let photo = line("colour of the photo:");
    assert!(photo.starts_with("colour of the photo: Multi (") && photo.contains("Red ") && photo.contains("Blue ") && photo.contains(" %"), "{table}");
    let row = line("   1  striped.png");
    assert!(row.contains("Multi (Red, Blue)") || row.contains("Multi (Blue, Red)"), "{table}");
    // A catalog of one product is centred on a shrunk mean, not on the product itself (which
    // mapped it to zero and scored its own photo 0.000).
    assert!(row.contains("  1.000  "), "a lone product's own photo scores 1: {table}");
    let found = json(&ok(&["search", "--db", path(&db), path(&photos.join("striped.png")), "-k", "1", "--json"]));
    let mix: Vec<&str> = found["hits"][0]["colour_mix"].as_array().map(|m| m.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default();
    assert!(row.contains(&format!("Multi ({})", mix.join(", "))), "the table's colours are the JSON's, in its order: {found}\n{table}");
    // With no other product to measure the likeness bands on, they are their minimums: the
    // product's own photo is very similar (it was only "related").
    assert_eq!(found["hits"][0]["likeness"], "very_similar", "{found}");
    // `list` shows the same colours, in its table and its JSON.
    let listed = json(&ok(&["list", "--db", path(&db), "--json"]));
    assert_eq!(listed["products"][0]["colour_mix"], found["hits"][0]["colour_mix"], "{listed}");
    let table = ok(&["list", "--db", path(&db)]);
    assert!(table.lines().nth(1).is_some_and(|row| row.starts_with("striped.png") && row.contains(&format!("Multi ({})", mix.join(", ")))), "{table}");
}

#[test]
fn folder_of_real_photos() {
    let samples = Assets::from_env().sample("coffee.png").expect("sample photos (run `make setup`)");
    let samples = samples.parent().expect("samples dir");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("photos.db");
    let out = lookalike(&["index", "--db", path(&db), "--images", path(samples)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The photo's own vector scores 1 by shape; under the default `match` colour moves scores
    // about their shape values, and its own colour is far closer than the others'.
    for colour in ["match", "any"] {
        let hits = json(&ok(&["search", "--db", path(&db), path(&samples.join("chelsea.png")), "-k", "2", "--colour", colour, "--json"]));
        assert_eq!(hits["hits"][0]["id"], "chelsea.png", "a photo finds itself first ({colour})");
        assert!(hits["hits"][0]["score"].as_f64().expect("score") > 0.99, "{hits}");
        assert_eq!(hits["hits"][0]["likeness"], "very_similar", "{hits}");
        assert_ne!(hits["hits"][1]["likeness"], "very_similar", "an unrelated photo is not very similar ({colour}): {hits}");
    }
}

/// An import killed (SIGKILL: no chance to clean up) once some of its batches are committed
/// resumes where it stopped, losing nothing and storing nothing twice. Whatever the machine's
/// speed: a trigger the test puts in the catalog fails any insert past the 80th product, so the
/// import stops with 40 to 80 products committed either way (killed, or failed at the trigger
/// first on a machine fast enough to outrun the polling); the trigger goes before the resume.
#[test]
fn killed_import_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("resume.db");
    let fm = fm_dir();
    drop(lookalike::catalog::SqliteCatalog::open(&db).expect("create the catalog"));
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "CREATE TRIGGER stop_at_80 BEFORE INSERT ON products WHEN (SELECT COUNT(*) FROM products) >= 80 BEGIN SELECT RAISE(FAIL, 'the test stops the import here'); END",
    )
    .expect("trigger");
    let args = ["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "400", "--batch-size", "8", "--fashion-mnist-dir", path(&fm)];
    let mut child = Command::new(BIN).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    // Only a guard against an import that hangs: no outcome depends on when the loop ends.
    let deadline = Instant::now() + Duration::from_secs(600);
    while product_count(&db) < 40 && !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    child.wait().ok();
    let partial = product_count(&db);
    assert!((40..=80).contains(&partial), "stopped mid-import with {partial} products committed");
    conn.execute_batch("DROP TRIGGER stop_at_80").expect("drop the trigger");

    let out = lookalike(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{} unchanged", partial)), "resumed past committed work: {stderr}");
    let conn = rusqlite::Connection::open(&db).expect("open");
    let (products, vectors, distinct): (i64, i64, i64) = conn
        .query_row("SELECT (SELECT COUNT(*) FROM products), (SELECT COUNT(*) FROM vectors), (SELECT COUNT(DISTINCT id) FROM products)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("counts");
    assert_eq!((products, vectors, distinct), (400, 400, 400));
}

fn product_count(db: &Path) -> i64 {
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else { return 0 };
    conn.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0)).unwrap_or(0)
}

/// `bench e2e` times searches through the real server, on one kept-open connection by default
/// and on a new one per request when asked, and breaks each down by the server's stages.
#[test]
fn bench_e2e_reports_client_and_stage_medians_over_either_kind_of_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).expect("mkdir");
    for i in 0..3 {
        test_image(&photos, i);
    }
    for (flag, connections) in [(None, "one connection, kept open"), (Some("--fresh-connections"), "a new connection per request")] {
        let name = if flag.is_some() { "fresh" } else { "kept" };
        let mut args = vec!["bench", "e2e", "--db", path(shared_catalog()), "--images", path(&photos), "--requests", "5", "--out", path(dir.path()), "--name", name];
        args.extend(flag);
        ok(&args);
        let report = json(&std::fs::read_to_string(dir.path().join(format!("{name}.json"))).expect("report"));
        assert_eq!((report["requests"].as_u64(), report["images"].as_u64()), (Some(5), Some(3)), "{report}");
        assert_eq!(report["connections"], connections, "{report}");
        assert!(report["client_wall"]["median_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
        for stage in ["decode_ms", "preprocess_ms", "encode_ms", "search_ms", "metadata_ms", "total_ms"] {
            assert!(report["server_median_ms"][stage].as_f64().is_some_and(|ms| ms > 0.0), "{stage}: {report}");
        }
    }
}

/// The arguments of `lookalike eval` over `db` with Fashion-MNIST test queries from `fm`, then `extra`.
fn eval_args<'a>(db: &'a Path, fm: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["eval", "--db", path(db), "--fashion-mnist", "test", "--fashion-mnist-dir", path(fm)];
    args.extend_from_slice(extra);
    args
}

#[test]
fn eval_reports_all_three_methods_or_the_rows_asked_for() {
    let fm = fm_dir();
    let out = json(&ok(&eval_args(shared_catalog(), &fm, &["--queries", "50", "--seed", "3", "--json"])));
    assert_eq!(out["catalog_size"], 300);
    assert_eq!(out["queries"], 50);
    assert_eq!(out["seed"], 3);
    for method in ["lookalike", "original_recipe", "raw_pixels"] {
        let m = &out["methods"][method];
        for key in ["precision_at_1", "precision_at_5", "precision_at_10", "map_at_10", "knn_accuracy", "latency_ms_median", "latency_ms_p95"] {
            let v = m[key].as_f64().unwrap_or_else(|| panic!("{method}.{key} missing: {out}"));
            assert!(v >= 0.0, "{method}.{key} = {v}");
        }
        assert!(m["precision_at_10"].as_f64().unwrap_or(2.0) <= 1.0);
    }
    // With this small catalog raw pixels are already decent; the learned features must still be
    // far above chance (0.1).
    assert!(out["methods"]["lookalike"]["precision_at_10"].as_f64().unwrap_or(0.0) > 0.5, "{out}");

    // Only the rows asked for, each ranked as in the full run; each query's outcome written a
    // line, adding up to the report.
    let dir = tempfile::tempdir().expect("tempdir");
    let per_query = dir.path().join("queries.jsonl");
    let report = dir.path().join("report.json");
    let some = json(&ok(&eval_args(
        shared_catalog(),
        &fm,
        &["--queries", "50", "--seed", "3", "--json", "--methods", "raw_pixels, lookalike", "--per-query", path(&per_query), "--out", path(&report)],
    )));
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("--out file")).expect("--out JSON");
    assert_eq!(written, some, "--out holds the report printed");
    let rows: Vec<&String> = some["methods"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    assert_eq!(rows, ["lookalike", "raw_pixels"], "{some}");
    for method in ["lookalike", "raw_pixels"] {
        for key in ["precision_at_1", "precision_at_10", "map_at_10", "knn_accuracy"] {
            assert_eq!(some["methods"][method][key], out["methods"][method][key], "{method}.{key}");
        }
    }
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&per_query).expect("per-query file").lines().map(|l| serde_json::from_str(l).expect("a JSON object a line")).collect();
    assert_eq!(lines.len(), 50, "one line per query");
    for method in ["lookalike", "raw_pixels"] {
        let mut sum = 0.0;
        for line in &lines {
            assert!(line["query"].as_str().is_some_and(|id| id.starts_with("fmnist-test-")), "{line}");
            let outcome = &line["methods"][method];
            let hits = outcome["hits"].as_array().expect("hits");
            assert_eq!(hits.len(), 10, "{line}");
            assert!(hits.iter().all(|h| h["id"].as_str().is_some_and(|id| id.starts_with("fmnist-train-"))), "{line}");
            let relevant = hits.iter().filter(|h| h["label"] == line["label"]).count();
            let p10 = outcome["precision_at_10"].as_f64().expect("precision_at_10");
            assert_eq!(p10, relevant as f64 / 10.0, "{line}");
            sum += p10;
        }
        let reported = some["methods"][method]["precision_at_10"].as_f64().expect("P@10");
        assert!((sum / 50.0 - reported).abs() < 1e-9, "{method}: the lines' mean {} against the report's {reported}", sum / 50.0);
    }
    // A file that cannot be written is refused before the run, not after it.
    std::fs::write(dir.path().join("a-file"), "").expect("write");
    let unwritable = dir.path().join("a-file/q.jsonl");
    let refused = lookalike(&eval_args(shared_catalog(), &fm, &["--queries", "5", "--per-query", path(&unwritable)]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("a-file") && !stderr.contains("evaluating"), "{stderr}");
    for flag in ["--per-query", "--out"] {
        let refused = lookalike(&eval_args(shared_catalog(), &fm, &["--queries", "5", flag, path(dir.path())]));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains("is a folder") && !stderr.contains("evaluating"), "{flag}: a folder is refused before the run: {stderr}");
    }
    let refused = lookalike(&eval_args(shared_catalog(), &fm, &["--methods", "lookalike,best"]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("\"best\"") && stderr.contains("original_recipe"), "{stderr}");
    // A run that fails leaves the earlier files whole, and nothing beside them.
    let refused = lookalike(&eval_args(shared_catalog(), &fm, &["--queries", "5", "--methods", "lookalike_untuned", "--per-query", path(&per_query), "--out", path(&report)]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("needs a tuned catalog"), "an untuned catalog has no such row: {stderr}");
    assert_eq!(std::fs::read_to_string(&per_query).expect("per-query file").lines().count(), 50, "the earlier file is kept");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&report).expect("--out file")).expect("--out JSON"), some, "and the earlier report");
    let mut left: Vec<String> = std::fs::read_dir(dir.path()).expect("read dir").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["a-file", "queries.jsonl", "report.json"], "no temporary file is left behind");
    // Made as any file the user writes (umask), not owner-only as a temporary file is.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&per_query), mode(&dir.path().join("a-file")), "the per-query file's mode is the umask's");
    }
}

/// A shop photographs some of its products anew and names each photo after the product it
/// shows (`ID.png`, or several in `ID/`): `eval --product-photos` says how often each finds its
/// product, exactly as often as `lookalike search` with that photo ranks it first and in the
/// top 10. Photos that cannot measure it (a name no product has, the catalog's own photo saved
/// again, a file that is no photo) are left out and named.
#[test]
fn eval_measures_how_often_photos_of_catalog_products_find_them() {
    use rand::SeedableRng;
    let fm = FashionMnist::load(&fm_dir(), "train").expect("train split");
    let dir = tempfile::tempdir().expect("tempdir");
    let photos = dir.path().join("product-photos");
    std::fs::create_dir_all(photos.join(fm.product_id(5))).expect("mkdir");
    // "Taken anew": the product's catalog photo on a background, cropped, turned, re-lit,
    // blurred and saved as JPEG by the shopper-photo simulation, each with its own seed.
    let taken_anew = |i: usize, seed: u64| lookalike::perturb::perturb(&image::DynamicImage::ImageLuma8(fm.image(i).expect("image")), &mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut expected: Vec<(PathBuf, String)> = Vec::new();
    for i in 0..4 {
        let file = photos.join(format!("{}.png", fm.product_id(i)));
        taken_anew(i, i as u64).save(&file).expect("png");
        expected.push((file, fm.product_id(i)));
    }
    for (name, seed) in [("front.png", 50), ("back.png", 51)] {
        let file = photos.join(fm.product_id(5)).join(name);
        taken_anew(5, seed).save(&file).expect("png");
        expected.push((file, fm.product_id(5)));
    }
    fm.image(6).expect("image").save(photos.join(format!("{}.png", fm.product_id(6)))).expect("the catalog's own photo");
    // The catalog's own photo as a shop system serves it: enlarged and saved as JPEG.
    let resized = image::DynamicImage::ImageLuma8(fm.image(9).expect("image")).resize(112, 112, image::imageops::FilterType::CatmullRom);
    resized.to_rgb8().save(photos.join(format!("{}.jpg", fm.product_id(9)))).expect("jpeg");
    taken_anew(7, 7).save(photos.join("not-a-product.png")).expect("png");
    std::fs::write(photos.join(format!("{}.png", fm.product_id(8))), b"not a photo").expect("write");

    let per_photo = dir.path().join("per-photo.jsonl");
    let report = json(&ok(&["eval", "--db", path(shared_catalog()), "--product-photos", path(&photos), "--methods", "lookalike", "--json", "--per-query", path(&per_photo)]));
    let measured = &report["product_photos"];
    assert_eq!((measured["photos"].as_u64(), measured["products"].as_u64()), (Some(6), Some(5)), "{report}");
    assert_eq!(measured["unknown"], serde_json::json!(["not-a-product.png"]), "{report}");
    assert_eq!(measured["catalog_photos"], serde_json::json!([format!("{}.png", fm.product_id(6)), format!("{}.jpg", fm.product_id(9))]), "{report}");
    let unreadable = measured["unreadable"].as_array().expect("unreadable");
    assert!(unreadable.len() == 1 && unreadable[0].as_str().is_some_and(|r| r.starts_with(&format!("{}.png (", fm.product_id(8)))), "{report}");
    assert_eq!((report["queries"].as_u64(), report["queries_from"].as_str()), (Some(0), Some("none (products' photos alone)")), "{report}");
    // What search itself finds with each photo; --per-query says the same of each photo.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&per_photo).expect("per-query file").lines().map(json).collect();
    assert_eq!(lines.len(), 6, "one line a photo measured");
    let (mut first, mut on_first_page) = (0, 0);
    for (file, product) in &expected {
        let found = json(&ok(&["search", "--db", path(shared_catalog()), path(file), "-k", "10", "--json"]));
        let ids: Vec<&str> = found["hits"].as_array().expect("hits").iter().map(|h| h["id"].as_str().expect("id")).collect();
        first += usize::from(ids.first() == Some(&product.as_str()));
        on_first_page += usize::from(ids.contains(&product.as_str()));
        let name = file.strip_prefix(&photos).expect("in the folder").to_string_lossy().replace('\\', "/");
        let line = lines.iter().find(|l| l["photo"] == name.as_str()).unwrap_or_else(|| panic!("no line for {name}: {lines:?}"));
        let rank = ids.iter().position(|id| id == product).map(|i| i + 1);
        assert_eq!((&line["product"], &line["methods"]["lookalike"]["rank"]), (&serde_json::json!(product), &serde_json::json!(rank)), "{line}");
        let listed: Vec<&str> = line["methods"]["lookalike"]["hits"].as_array().expect("hits").iter().map(|h| h["id"].as_str().expect("id")).collect();
        assert_eq!(listed, ids, "{name}: the first page search shows");
    }
    let recall = &measured["methods"]["lookalike"];
    assert_eq!(recall["exact_recall_at_1"].as_f64(), Some(first as f64 / 6.0), "{report}");
    assert_eq!(recall["exact_recall_at_10"].as_f64(), Some(on_first_page as f64 / 6.0), "{report}");
    assert!(on_first_page >= 3, "most photos of a product find it among 300: {report}");
    // The table says the same, and what was left out.
    let table = ok(&["eval", "--db", path(shared_catalog()), "--product-photos", path(&photos), "--methods", "lookalike"]);
    assert!(table.contains("product photos: 6 photos of 5 catalog products") && table.contains("left out, 1 name no catalog product: not-a-product.png"), "{table}");
    // A catalog imported from a folder has paths for ids (`shirts/p1.png`): a photo named
    // after the file (`p1.png`, or in `p1/`) names it, unless two products share that name.
    let folder = dir.path().join("folder");
    for (sub, i) in [("shirts", 0), ("shirts", 1), ("shoes", 0)] {
        std::fs::create_dir_all(folder.join(sub)).expect("mkdir");
        fm.image(i).expect("image").save(folder.join(sub).join(format!("p{i}.png"))).expect("png");
    }
    let by_path = dir.path().join("by-path.db");
    ok(&["index", "--db", path(&by_path), "--images", path(&folder)]);
    let anew = dir.path().join("anew");
    std::fs::create_dir_all(anew.join("p1")).expect("mkdir");
    taken_anew(1, 60).save(anew.join("p1.png")).expect("png");
    taken_anew(1, 61).save(anew.join("p1").join("side.png")).expect("png");
    taken_anew(0, 62).save(anew.join("p0.png")).expect("png");
    let by_name = json(&ok(&["eval", "--db", path(&by_path), "--product-photos", path(&anew), "--methods", "lookalike", "--json"]));
    assert_eq!((by_name["product_photos"]["photos"].as_u64(), by_name["product_photos"]["products"].as_u64()), (Some(2), Some(1)), "{by_name}");
    assert_eq!(by_name["product_photos"]["unknown"], serde_json::json!(["p0.png"]), "shirts/p0.png or shoes/p0.png: {by_name}");
    // A folder in which no photo names a product says how to name them.
    let strangers = dir.path().join("strangers");
    std::fs::create_dir_all(&strangers).expect("mkdir");
    taken_anew(7, 7).save(strangers.join("holiday.png")).expect("png");
    let out = lookalike(&["eval", "--db", path(shared_catalog()), "--product-photos", path(&strangers)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("1 name no catalog product") && stderr.contains("fmnist-train-00000.jpg"), "{stderr}");
}

/// A shop measures quality on its own labelled photos: a folder in the catalog layout
/// (`styles.csv` + `images/`). Here the folder holds the very Fashion-MNIST test photos an
/// `eval --fashion-mnist` run drew, as PNG files under their own ids: every query must then
/// find exactly what it found there, so the folder's photos, labels and ids are read right.
/// What the folder cannot give (a photo that does not decode, a row without a label, a label
/// no product has) is said, and the rest is measured. `--exact` needs no labelled query.
#[test]
fn eval_measures_a_shops_own_labelled_photos() {
    let fm_path = fm_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let from_fm = dir.path().join("fm.jsonl");
    let reference = json(&ok(&eval_args(shared_catalog(), &fm_path, &["--queries", "20", "--seed", "5", "--methods", "lookalike", "--per-query", path(&from_fm), "--json"])));
    let lines =
        |file: &Path| -> Vec<serde_json::Value> { std::fs::read_to_string(file).expect("per-query file").lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect() };
    let drawn = lines(&from_fm);

    let shop = dir.path().join("shopper-photos");
    std::fs::create_dir_all(shop.join("images")).expect("mkdir");
    let fm = FashionMnist::load(&fm_path, "test").expect("test split");
    let mut csv = String::from("id,articleType,gender\n");
    for line in &drawn {
        let id = line["query"].as_str().expect("query id");
        let i: usize = id.trim_start_matches("fmnist-test-").parse().expect("index in the split");
        fm.image(i).expect("image").save(shop.join("images").join(format!("{id}.png"))).expect("png");
        csv.push_str(&format!("{id},{},Women\n", fm.class_name(i)));
    }
    // Left out, each said: a file that is no photo, a row without a label; measured but said:
    // a label no product of the catalog has.
    std::fs::write(shop.join("images/broken.png"), b"not a photo").expect("write");
    csv.push_str("broken,Sneaker,Women\n");
    std::fs::write(shop.join("images/unlabelled.png"), std::fs::read(shop.join("images").join(format!("{}.png", drawn[0]["query"].as_str().expect("id")))).expect("read"))
        .expect("write");
    csv.push_str("unlabelled,,Women\n");
    std::fs::write(shop.join("styles.csv"), &csv).expect("csv");

    let from_folder = dir.path().join("folder.jsonl");
    let args = ["eval", "--db", path(shared_catalog()), "--query-photos", path(&shop), "--methods", "lookalike", "--per-query", path(&from_folder), "--json"];
    let out = lookalike(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("1 photos could not be read") && stderr.contains("broken"), "{stderr}");
    assert!(stderr.contains("1 photos have no articleType") && stderr.contains("unlabelled"), "{stderr}");
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["queries"], 20, "{report}");
    assert_eq!(report["queries_from"], path(&shop));
    let by_id = |lines: Vec<serde_json::Value>| -> std::collections::BTreeMap<String, serde_json::Value> {
        lines.into_iter().map(|l| (l["query"].as_str().expect("id").to_string(), l)).collect()
    };
    assert_eq!(by_id(lines(&from_folder)), by_id(drawn.clone()), "each photo finds what it found as a Fashion-MNIST query");
    let p10 = |r: &serde_json::Value| r["methods"]["lookalike"]["precision_at_10"].as_f64().expect("P@10");
    assert!((p10(&report) - p10(&reference)).abs() < 1e-9, "{report}\n{reference}");
    // The same photos sorted into sub-folders named after their label, as a team sorting
    // photos by hand keeps them: each finds what it found. ("T-shirt/top" cannot name a
    // folder: those photos stay out.)
    let sorted = dir.path().join("sorted");
    let mut expected = std::collections::BTreeMap::new();
    for line in drawn.iter().filter(|line| line["label"] != "T-shirt/top") {
        let id = line["query"].as_str().expect("id");
        let label = line["label"].as_str().expect("label");
        std::fs::create_dir_all(sorted.join(label)).expect("mkdir");
        std::fs::copy(shop.join("images").join(format!("{id}.png")), sorted.join(label).join(format!("{id}.png"))).expect("copy");
        expected.insert(format!("{label}/{id}.png"), line["methods"].clone());
    }
    let from_sorted = dir.path().join("sorted.jsonl");
    let by_folder = json(&ok(&["eval", "--db", path(shared_catalog()), "--query-photos", path(&sorted), "--methods", "lookalike", "--per-query", path(&from_sorted), "--json"]));
    assert_eq!(by_folder["queries"].as_u64(), Some(expected.len() as u64), "{by_folder}");
    let found: std::collections::BTreeMap<String, serde_json::Value> =
        lines(&from_sorted).into_iter().map(|l| (l["query"].as_str().expect("id").to_string(), l["methods"].clone())).collect();
    assert_eq!(found, expected, "each photo in a label's sub-folder finds what it found as a Fashion-MNIST query");

    // A label no product of the catalog has (a typo, another naming): the run says so rather
    // than reporting that photo's zeros silently.
    let first = drawn[0]["query"].as_str().expect("id");
    let renamed: String = csv.lines().map(|line| if line.starts_with(&format!("{first},")) { format!("{first},Kaftan,Women\n") } else { format!("{line}\n") }).collect();
    std::fs::write(shop.join("styles.csv"), renamed).expect("csv");
    let out = lookalike(&["eval", "--db", path(shared_catalog()), "--query-photos", path(&shop), "--methods", "lookalike"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("1 of 20 queries have a label no catalog product has (\"Kaftan\")"), "{stderr}");
    // Labelled by a column the catalog lacks: nothing to judge by, and the catalog's columns said.
    let out = lookalike(&["eval", "--db", path(shared_catalog()), "--query-photos", path(&shop), "--label", "gender"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("has a \"gender\" column to judge relevance by (its columns: articleType, index, split"), "{stderr}");
    // The shop's own catalog folder given as queries: each photo finds itself, and the run says so.
    let itself = dir.path().join("itself.db");
    ok(&["index", "--db", path(&itself), "--kaggle", path(&shop)]);
    let out = lookalike(&["eval", "--db", path(&itself), "--query-photos", path(&shop), "--methods", "lookalike", "--queries", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("5 of 5 queries are catalog products themselves"), "{stderr}");
    // Re-photographed catalog products need no labelled query: `--exact` alone measures the
    // same as beside queries, and in a catalog without labels too (a folder of photos).
    let exact = |extra: &[&str]| {
        let mut args = vec!["eval", "--db", path(shared_catalog()), "--exact", "6", "--methods", "lookalike", "--json"];
        args.extend_from_slice(extra);
        json(&ok(&args))
    };
    let per_product = dir.path().join("per-product.jsonl");
    let alone = exact(&["--per-query", path(&per_product)]);
    assert_eq!((alone["queries"].as_u64(), alone["methods"].as_object().map(|m| m.len())), (Some(0), Some(0)), "{alone}");
    assert_eq!(alone["exact"]["products"], 6, "{alone}");
    // --per-query: a line a re-photographed product (no photo file), its rank where it is found.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&per_product).expect("per-query file").lines().map(json).collect();
    assert!(lines.len() == 6 && lines.iter().all(|l| l.get("photo").is_none() && l["product"].is_string()), "{lines:?}");
    let ranked_first = lines.iter().filter(|l| l["methods"]["lookalike"]["rank"] == 1).count();
    assert_eq!(alone["exact"]["methods"]["lookalike"]["exact_recall_at_1"].as_f64(), Some(ranked_first as f64 / 6.0), "{lines:?}");
    assert_eq!(alone["exact"], exact(&["--query-photos", path(&shop)])["exact"], "the same products, re-photographed alike");
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).expect("mkdir");
    for i in 0..3 {
        fm.image(i).expect("image").save(photos.join(format!("p{i}.png"))).expect("png");
    }
    let unlabelled = dir.path().join("unlabelled.db");
    ok(&["index", "--db", path(&unlabelled), "--images", path(&photos)]);
    let report = json(&ok(&["eval", "--db", path(&unlabelled), "--exact", "3", "--methods", "lookalike", "--json"]));
    assert_eq!(report["exact"]["products"], 3, "{report}");
    // Three products: each is on the first page whatever its rank.
    assert_eq!(report["exact"]["methods"]["lookalike"]["exact_recall_at_10"].as_f64(), Some(1.0), "{report}");
    let out = lookalike(&["eval", "--db", path(&unlabelled), "--exact", "3", "--scenes", "2"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--scenes"), "scenes need queries");
    // One source of queries: both, or neither, is refused; painting is for Fashion-MNIST.
    let db = path(shared_catalog());
    for args in [
        vec!["eval", "--db", db, "--query-photos", path(&shop), "--fashion-mnist", "test"],
        vec!["eval", "--db", db],
        vec!["eval", "--db", db, "--query-photos", path(&shop), "--colourise", "7"],
    ] {
        let out = lookalike(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && (stderr.contains("--fashion-mnist") || stderr.contains("cannot be used with")), "{args:?}: {stderr}");
    }
}

#[test]
fn tuning_is_stored_used_and_undone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let out = lookalike(&["tune", "--db", path(&db), "--label", "noSuchColumn"]);
    assert!(!out.status.success(), "no labels: nothing to tune");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("noSuchColumn") && stderr.contains("the catalog's columns: articleType, index, split"), "{stderr}");
    // A column of one value a product (here the running number) groups nothing: refused, with
    // the columns that do group the products.
    let out = lookalike(&["tune", "--db", path(&db), "--label", "index"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("\"index\" groups almost no products") && stderr.contains("columns that group them: articleType (10 values)"), "{stderr}");

    let out = lookalike(&["tune", "--db", path(&db), "--label", "articleType", "--dim", "64", "--hidden", "128", "--epochs", "8", "--augment", "64"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The perturbed photos are training data only: the built-in model's int8 copy encodes
    // them by default, and the catalog keeps its float model and vectors.
    assert!(stderr.contains("encoding 64 perturbed catalog photos with efficientnet-lite0-int8"), "{stderr}");
    // A tenth of each kind's products (26 of 300; fewer than the default 500) left out of
    // training, and a shopper-like photo of each searched before and after: what tuning gains
    // on products it never saw, said at once and kept for `info`.
    assert!(stderr.contains("tuning on 274 products, 10 distinct articleType values (26 more held out to measure what tuning gains)"), "{stderr}");
    let measured = stderr.lines().find(|l| l.starts_with("on shopper-like photos of 26 products held out of training: P@10 by articleType ")).expect("held-out line");
    let numbers: Vec<f64> = measured.split([' ', ',']).filter_map(|w| w.parse().ok()).filter(|x| (0.0..=1.0).contains(x)).collect();
    assert_eq!(numbers.len(), 6, "{measured}");
    // Relevance is counted by the photo's own label among 10 classes (a tenth by chance).
    assert!(numbers[0] > 0.3 && numbers[1] > 0.3, "{measured}");
    assert!(ok(&["info", "--db", path(&db)]).contains(&format!("tuning measured {measured}")));
    // A kind of product the tuning never learned, imported since: said by the import and by
    // `info`, with the command that learns it.
    let new_kind = dir.path().join("new-kind");
    std::fs::create_dir_all(new_kind.join("images")).expect("mkdir");
    std::fs::write(new_kind.join("images/jumpsuit-1.png"), test_photo(0).0).expect("photo");
    std::fs::write(new_kind.join("styles.csv"), "id,articleType\njumpsuit-1,Jumpsuit\n").expect("csv");
    let out = lookalike(&["index", "--db", path(&db), "--kaggle", path(&new_kind)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let note = "1 product(s) have articleType values the tuned space never learned (Jumpsuit 1): they are placed by looks alone; learn them with `lookalike tune --db ";
    assert!(out.status.success() && stderr.contains(&format!("note: {note}")), "{stderr}");
    assert!(ok(&["info", "--db", path(&db)]).contains(&format!("tuning: {note}")));
    // The same facts for scripts, each under its key.
    let info = json(&ok(&["info", "--db", path(&db), "--json"]));
    assert_eq!((info["products"].as_u64(), info["model"]["name"].as_str(), info["model"]["dim"].as_u64()), (Some(301), Some("efficientnet-lite0"), Some(1280)), "{info}");
    assert!(info["model"]["int8"].is_null(), "a float catalog has no int8 copy: {info}");
    let tuned = &info["tuned"];
    assert_eq!((tuned["label"].as_str(), tuned["output_dim"].as_u64(), tuned["held_out"]["products"].as_u64()), (Some("articleType"), Some(64), Some(26)), "{info}");
    let untuned = tuned["held_out"]["untuned"]["precision_at_10"].as_f64().expect("a number");
    assert_eq!(format!("{untuned:.3}"), format!("{:.3}", numbers[0]), "the line's numbers, unrounded: {info}");
    assert_eq!(tuned["values_not_learned"], serde_json::json!([{"value": "Jumpsuit", "products": 1}]), "{info}");
    assert!(info["photo_adapter"].is_null() && info["foreground_head"].is_null() && info["search_index"].as_str().is_some_and(|s| s.starts_with("exact scan")), "{info}");
    let out = lookalike(&["tune", "--db", path(&db), "--dim", "64", "--hidden", "128", "--epochs", "8", "--augment", "64", "--augment-precision", "fp32", "--hold-out", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("encoding 64 perturbed catalog photos with efficientnet-lite0\n"), "{stderr}");
    assert!(stderr.contains("tuning on 301 products, 11 distinct articleType values\n") && !stderr.contains("held out"), "{stderr}");
    assert!(!ok(&["info", "--db", path(&db)]).contains("never learned"), "learned now");
    let out = lookalike(&["tune", "--db", path(&db), "--augment-precision", "int4"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("int8"), "a bad precision is refused, naming the choices");
    let out = lookalike(&["tune", "--db", path(&db), "--dropout", "1.5"]);
    assert!(!out.status.success(), "bad dropout refused");
    let info = ok(&["info", "--db", path(&db)]);
    assert!(info.contains("tuned on: articleType") && info.contains("model: efficientnet-lite0 (") && !info.contains("tuning measured"), "{info}");
    let report = json(&ok(&["eval", "--db", path(&db), "--fashion-mnist", "test", "--queries", "50", "--fashion-mnist-dir", path(&fm_dir()), "--json"]));
    assert_eq!(report["tuned_on"], "articleType");
    let tuned = report["methods"]["lookalike"]["precision_at_10"].as_f64().expect("tuned");
    let untuned = report["methods"]["lookalike_untuned"]["precision_at_10"].as_f64().expect("untuned");
    assert!(tuned > 0.5 && untuned > 0.5, "tuned {tuned}, untuned {untuned}");

    // Search uses the tuned space: scores are cosines in it, and more-like-this still works.
    let hits = json(&ok(&["search", "--db", path(&db), "--like", "fmnist-train-00002", "-k", "5", "--json"]));
    assert_eq!(hits["hits"].as_array().map(Vec::len), Some(5));

    ok(&["tune", "--db", path(&db), "--off"]);
    assert!(ok(&["info", "--db", path(&db)]).contains("tuned on: -"));
}

/// The photo adapter: learned without labels from shopper-like photos of the catalog's own
/// products, stored checksummed, used for query photos only (a catalog product as the query
/// finds the same products as before), measured by `eval` beside the search without it, left
/// out with a note when damaged, and dropped by `--off`.
#[test]
fn the_photo_adapter_is_learned_used_for_photos_and_undone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let out = lookalike(&["tune", "--db", path(&db), "--adapt", "--augment", "0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--augment"), "0 photos refused");
    let out = lookalike(&["tune", "--db", path(&db), "--adapt", "--localise"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--localise"), "one thing at a time");
    assert!(ok(&["info", "--db", path(&db)]).contains("photo adapter: - (run `lookalike tune --adapt`"));
    let like = |db: &Path| json(&ok(&["search", "--db", path(db), "--like", "fmnist-train-00002", "-k", "5", "--json"]))["hits"].clone();
    let like_before = like(&db);
    let (photo, _) = test_image(dir.path(), 7);
    let photo_search = |db: &Path| json(&ok(&["search", "--db", path(db), path(&photo), "-k", "5", "--json"]))["hits"].clone();
    let photo_before = photo_search(&db);

    let out = lookalike(&["tune", "--db", path(&db), "--adapt", "--augment", "200"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("photo adapter learned"), "{stderr}");
    // The catalog's own model encodes the photos, whatever --augment-precision says.
    assert!(stderr.contains("photos of catalog products with efficientnet-lite0\n"), "{stderr}");
    // A tenth of each articleType's products (26 of 300) is held out of training and searched
    // for without the adapter and with it.
    assert!(stderr.contains("on shopper-like photos of 26 products held out of its training: P@10 by articleType "), "{stderr}");
    let info = ok(&["info", "--db", path(&db)]);
    assert!(info.contains("photo adapter: learned from 200 shopper-like photos"), "{info}");
    assert!(info.contains("photo adapter measured on shopper-like photos of 26 products held out of its training: P@10 by articleType "), "{info}");
    let conn = rusqlite::Connection::open(&db).expect("open");
    let report: String = conn.query_row("SELECT report FROM adapter", [], |r| r.get(0)).expect("stored");
    let report = json(&report);
    let (before, after) = (report["cosine_before"].as_f64().expect("before"), report["cosine_after"].as_f64().expect("after"));
    assert!(after > before, "the photos moved nearer their own products: {before} -> {after}");
    let held_out = &json(&ok(&["info", "--db", path(&db), "--json"]))["photo_adapter"]["held_out"];
    assert_eq!(held_out, &report["held_out"], "info --json shows what tune measured");
    assert_eq!((held_out["products"].as_u64(), held_out["label"].as_str()), (Some(26), Some("articleType")));
    for side in ["without", "with"] {
        for score in ["precision_at_10", "found_at_1", "found_at_10"] {
            let value = held_out[side][score].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&value), "{side} {score}: {held_out}");
        }
        assert!(held_out[side]["found_at_1"].as_f64() <= held_out[side]["found_at_10"].as_f64(), "{held_out}");
    }

    // Catalog vectors are not photos: more-like-this is unchanged; a photo's search changes.
    assert_eq!(like(&db), like_before);
    assert_ne!(photo_search(&db), photo_before);
    let report = json(&ok(&["eval", "--db", path(&db), "--fashion-mnist", "test", "--queries", "20", "--perturb", "--fashion-mnist-dir", path(&fm_dir()), "--json"]));
    for method in ["lookalike", "lookalike_unadapted"] {
        assert!(report["methods"][method]["precision_at_10"].as_f64().is_some(), "{method} measured: {report}");
    }

    // A damaged adapter is left out, with the reason, and search goes on without it.
    conn.execute("UPDATE adapter SET crc = crc + 1", []).expect("damage");
    assert!(ok(&["info", "--db", path(&db)]).contains("photo adapter: not used: the photo adapter in"));
    assert_eq!(photo_search(&db), photo_before);

    ok(&["tune", "--db", path(&db), "--adapt", "--off"]);
    assert!(ok(&["info", "--db", path(&db)]).contains("photo adapter: -"));
    assert_eq!(photo_search(&db), photo_before);
}

/// The foreground head: learned from composed photos of catalog products, stored, used by
/// `eval --scenes` (which reports detection on scenes of several products), removed by `--off`.
#[test]
fn localisation_is_learned_measured_and_undone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    assert!(ok(&["info", "--db", path(&db)]).contains("foreground head: - (products in photos are found training-free"));
    let out = lookalike(&["tune", "--db", path(&db), "--localise", "--scenes", "0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--scenes"), "0 scenes refused");
    let out = lookalike(&["tune", "--db", path(&db), "--localise", "--scenes", "40"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("foreground head learned"), "{stderr}");
    let conn = rusqlite::Connection::open(&db).expect("open");
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM foreground", [], |r| r.get(0)).expect("count");
    assert_eq!(stored, 1, "the head is stored in the catalog");
    let info = ok(&["info", "--db", path(&db)]);
    assert!(info.contains("foreground head: learned from 40 composed photos, balanced accuracy "), "{info}");

    let report = json(&ok(&["eval", "--db", path(&db), "--fashion-mnist", "test", "--queries", "30", "--scenes", "10", "--fashion-mnist-dir", path(&fm_dir()), "--json"]));
    let scenes = &report["scenes"];
    assert_eq!(scenes["scenes"], 10);
    let products = scenes["products"].as_u64().expect("products");
    assert!((20..=30).contains(&products), "2-3 products a scene: {products}");
    for key in ["detection_recall", "detection_precision", "scene_precision_at_10", "whole_photo_precision_at_10"] {
        let v = scenes[key].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    // Every placed product is either matched or lost for one reason.
    let lost: f64 = ["merged", "loose", "missed"].iter().map(|k| scenes["unmatched"][k].as_f64().unwrap_or(-1.0)).sum();
    let recall = scenes["detection_recall"].as_f64().unwrap_or(-1.0);
    assert!((recall + lost - 1.0).abs() < 1e-9, "recall {recall} + unmatched {lost}: {scenes}");
    for method in ["lookalike", "lookalike_item", "lookalike_item_crop", "original_recipe", "raw_pixels"] {
        assert!(report["methods"][method]["precision_at_10"].is_number(), "{method} reported");
    }

    ok(&["tune", "--db", path(&db), "--localise", "--off"]);
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM foreground", [], |r| r.get(0)).expect("count");
    assert_eq!(stored, 0, "--off removes the head");
    assert!(ok(&["info", "--db", path(&db)]).contains("foreground head: -"));
}

#[test]
fn perturbed_eval_reports_the_drop() {
    let out = json(&ok(&[
        "eval",
        "--db",
        path(shared_catalog()),
        "--fashion-mnist",
        "test",
        "--queries",
        "30",
        "--perturb",
        "--exact",
        "40",
        "--fashion-mnist-dir",
        path(&fm_dir()),
        "--json",
    ]));
    assert_eq!(out["perturbed"], true);
    let p = out["methods"]["lookalike"]["precision_at_10"].as_f64().expect("p@10");
    assert!(p > 0.1, "perturbed queries still find their kind above chance: {p}");
    // Re-photographed catalog products: found themselves (300 products; chance is 1 in 300 at
    // rank 1), and every method measured.
    let exact = &out["exact"];
    assert_eq!(exact["products"], 40);
    for method in ["lookalike", "lookalike_item", "original_recipe", "raw_pixels"] {
        let (at1, at10) = (exact["methods"][method]["exact_recall_at_1"].as_f64(), exact["methods"][method]["exact_recall_at_10"].as_f64());
        let (Some(at1), Some(at10)) = (at1, at10) else { panic!("{method} lacks exact recall: {exact}") };
        assert!((0.0..=1.0).contains(&at1) && at1 <= at10 && at10 <= 1.0, "{method}: {at1} {at10}");
    }
    let found = exact["methods"]["lookalike"]["exact_recall_at_10"].as_f64().unwrap_or(0.0);
    assert!(found >= 0.2, "re-photographed products are found in the top 10 far above chance: {found}");
}

/// The approximate (HNSW) index: saved beside the catalog on first use, reloaded and caught up
/// with later removals instead of rebuilt, rebuilt when its file is damaged; its answers agree
/// with the exact scan.
#[test]
fn approximate_index_is_saved_caught_up_and_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let ids = |out: &serde_json::Value| -> Vec<String> { out["hits"].as_array().expect("hits").iter().map(|h| h["id"].as_str().expect("id").to_string()).collect() };
    let search = |ann: &str| json(&ok(&["search", "--db", path(&db), "--like", "fmnist-train-00002", "-k", "10", "--json", "--ann", ann]));
    let exact = ids(&search("never"));
    let approx = ids(&search("always"));
    let overlap = approx.iter().filter(|id| exact.contains(id)).count();
    assert!(overlap >= 9, "graph top-10 {approx:?} vs exact {exact:?}");
    let graph = dir.path().join("copy.db.graph");
    let stamp = dir.path().join("copy.db.graph.json");
    assert!(graph.is_file() && stamp.is_file(), "the graph is saved beside the catalog");
    let generation = |s: &Path| json(&std::fs::read_to_string(s).expect("stamp"))["generation"].as_i64().expect("generation");
    let saved_at = generation(&stamp);

    ok(&["remove", "--db", path(&db), &approx[0]]);
    let after = ids(&search("always"));
    assert_eq!(after.len(), 10);
    assert!(!after.contains(&approx[0]), "a removed product leaves the saved graph too");
    assert!(generation(&stamp) > saved_at, "the caught-up graph is saved again");

    std::fs::write(&graph, b"torn").expect("damage the graph");
    let rebuilt = ids(&search("always"));
    assert_eq!(rebuilt.len(), 10, "a damaged graph file is rebuilt, not fatal");
    assert!(std::fs::metadata(&graph).expect("graph").len() > 1000);

    for precision in ["f16", "i8"] {
        let compressed = ids(&json(&ok(&["search", "--db", path(&db), "--like", "fmnist-train-00002", "-k", "10", "--json", "--ann", "never", "--precision", precision])));
        let overlap = compressed.iter().filter(|id| after.contains(id)).count();
        assert!(overlap >= 8, "{precision} top-10 {compressed:?} vs f32 {after:?}");
    }

    // Another process holding the graph's lock (here: this test) makes a search wait its turn,
    // and say so: the test lets go once it has said it waits, and not before.
    let lock = std::fs::File::open(dir.path().join("copy.db.graph.lock")).expect("the lock file exists");
    lock.lock().expect("take the lock");
    let mut waiting = Command::new(BIN)
        .args(["search", "--db", path(&db), "--like", "fmnist-train-00002", "--json", "--ann", "always"])
        .env("LOOKALIKE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut stderr, mut said) = wait_until_said(&mut waiting, "waiting for another process to finish with the search graph");
    assert!(waiting.try_wait().expect("poll").is_none(), "the search waits while the graph is locked");
    drop(lock);
    std::io::Read::read_to_string(&mut stderr, &mut said).expect("read stderr");
    assert!(waiting.wait().expect("wait").success(), "{said}");
}

#[test]
fn settings_file_supplies_options_the_line_and_environment_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = copy_catalog(dir.path());
    let settings = dir.path().join("lookalike.toml");
    // A path relative to the file; a per-command table; the file found by flag or variable.
    std::fs::write(&settings, "db = \"copy.db\"\n\n[search]\nk = 3\n").unwrap();
    let info = ok(&["info", "--config", path(&settings)]);
    assert!(info.contains("products: 300"), "{info}");
    let (query, _) = test_image(dir.path(), 0);
    let out = Command::new(BIN).args(["search", "--json", path(&query)]).env("LOOKALIKE_CONFIG", &settings).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(results["hits"].as_array().map(Vec::len), Some(3), "k = 3 from the [search] table");

    // The command line wins over the file, and the environment too.
    let out = lookalike(&["info", "--config", path(&settings), "--db", "/nonexistent/a.db"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/a.db"));
    let out = Command::new(BIN).args(["info", "--config", path(&settings)]).env("LOOKALIKE_DB", "/nonexistent/b.db").output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/b.db"));
    assert_eq!(std::fs::metadata(&db).map(|m| m.len() > 0).ok(), Some(true));

    // A typo is an error naming it, not a silently ignored setting; so is a missing file.
    std::fs::write(&settings, "dbb = \"copy.db\"\n").unwrap();
    let out = lookalike(&["info", "--config", path(&settings)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting \"dbb\""), "{}", String::from_utf8_lossy(&out.stderr));
    let out = lookalike(&["info", "--config", "/nonexistent/lookalike.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lookalike.toml"));
}
