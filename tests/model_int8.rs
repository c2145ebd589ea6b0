//! The int8 copy of the built-in model: calibrated on a new catalog's own photos, stored with
//! the catalog (its file made again where it is missing), its vectors kept apart from the float
//! model's, and close to them (measured here on the same photos).

mod common;

use std::path::Path;

use common::*;
use lookalike::assets::Assets;
use lookalike::catalog::SqliteCatalog;

/// An asset directory whose runtime, weights and data are the real ones and whose model cache
/// starts empty, so the test sees every model file being made.
fn scratch_home() -> tempfile::TempDir {
    let real = Assets::from_env();
    real.onnxruntime_lib().expect("ONNX Runtime (run `make setup`)");
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["lib", "weights", "samples", "fashion-mnist"] {
        std::os::unix::fs::symlink(real.root().join(sub), dir.path().join(sub)).expect("linking assets");
    }
    dir
}

fn run(home: &Path, args: &[&str]) -> std::process::Output {
    command(args).env("LOOKALIKE_HOME", home).output().expect("the lookalike binary runs")
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(out.status.success(), "lookalike {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `search --json` of a photo: the answer on stdout.
fn search(home: &Path, db: &Path, photo: &Path) -> serde_json::Value {
    let out = run(home, &["search", "--db", path(db), "--json", "-k", "3", path(photo)]);
    assert!(out.status.success(), "search failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn int8_files(home: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(home.join("models")).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.to_string_lossy().contains("-int8-")).collect()).unwrap_or_default()
}

/// The cosine of each of `catalog`'s vectors to the float model's vector of the same photo
/// (the shared catalog holds the same 300 products, indexed in float), lowest first.
fn cosines_to_float(catalog: &SqliteCatalog) -> Vec<f32> {
    let float = SqliteCatalog::open_existing(shared_catalog()).expect("float catalog");
    let mut cosines = Vec::new();
    for product in catalog.all_products().expect("products") {
        let a = catalog.vector(product.key).expect("read").expect("vector");
        let other = float.get_by_id(&product.id).expect("read").expect("the same product in the float catalog");
        let b = float.vector(other.key).expect("read").expect("float vector");
        cosines.push(a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>());
    }
    cosines.sort_by(f32::total_cmp);
    cosines
}

#[test]
fn an_int8_catalog_is_calibrated_on_its_photos_and_kept_apart_from_float_vectors() {
    let home = scratch_home();
    let home = home.path();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("int8.db");
    let out = ok(home, &["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "300", "--model", "efficientnet-lite0-int8"]);
    assert!(out.contains("calibrating efficientnet-lite0-int8"), "{out}");
    assert_eq!(int8_files(home).len(), 1, "one int8 file, made from this catalog's calibration");
    let info = ok(home, &["info", "--db", path(&db)]);
    assert!(info.contains("model: efficientnet-lite0-int8 (1280-d vectors); int8 copy calibrated on "), "{info}");
    assert!(info.contains(", 7-bit weights\n"), "{info}");
    let out = run(home, &["info", "--db", path(&db), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(info["model"]["int8"]["weight_bits"], 7, "{info}");

    // Close to the float model's vectors of the same photos (7-bit weights: on CPUs without
    // VNNI, 8-bit ones overflow ONNX Runtime's 16-bit sums; src/model/quantise.rs).
    let int8 = SqliteCatalog::open_existing(&db).expect("int8 catalog");
    let description: serde_json::Value = serde_json::from_str(&int8.model_description().expect("read").expect("stored")).expect("json");
    assert_eq!(description["int8"]["weight_bits"], 7, "{description}");
    let cosines = cosines_to_float(&int8);
    let (lowest, median) = (cosines[0], cosines[cosines.len() / 2]);
    eprintln!("int8 vs float vectors of the same 300 photos: median cosine {median:.4}, lowest {lowest:.4}");
    assert!(median > 0.95 && lowest > 0.85, "int8 vectors drift from the float model's: median {median}, lowest {lowest}");

    // A catalog photo searched with the int8 model finds its own product first.
    let product = int8.get_by_id("fmnist-train-00007").expect("read").expect("product");
    let photo = int8.image_bytes(product.key, &product.image).expect("stored photo");
    let photo_path = dir.path().join("p.png");
    std::fs::write(&photo_path, photo).expect("write photo");
    let found = search(home, &db, &photo_path);
    assert_eq!(found["hits"][0]["id"], "fmnist-train-00007", "{found}");

    // Float vectors are refused in the int8 catalog, and the int8 model is refused in a float one.
    let mixed = run(home, &["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "310", "--model", "efficientnet-lite0"]);
    assert!(!mixed.status.success(), "float vectors went into an int8 catalog");
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("efficientnet-lite0-int8"), "{}", String::from_utf8_lossy(&mixed.stderr));
    let float_query = run(home, &["search", "--db", path(&db), "--model", "efficientnet-lite0", path(&photo_path)]);
    assert!(!float_query.status.success(), "a float query vector was searched in an int8 catalog");
    assert!(String::from_utf8_lossy(&float_query.stderr).contains("efficientnet-lite0-int8"), "{}", String::from_utf8_lossy(&float_query.stderr));
    let float_copy = copy_catalog(dir.path());
    let wrong = run(home, &["search", "--db", path(&float_copy), "--model", "efficientnet-lite0-int8", path(&photo_path)]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("calibrated on a catalog's own photos"), "{}", String::from_utf8_lossy(&wrong.stderr));

    // The catalog carries its calibration: on a machine without the file, it is made again,
    // identical (same name: the name is a hash of the ranges and the weights' width).
    let made = int8_files(home);
    std::fs::remove_file(&made[0]).expect("remove the int8 file");
    let again = search(home, &db, &photo_path);
    assert_eq!(again["hits"], found["hits"], "the remade model answers the same");
    assert_eq!(int8_files(home), made);
}

#[test]
fn a_float_catalog_imported_by_the_int8_copy_is_searched_with_the_float_model() {
    let home = scratch_home();
    let home = home.path();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("imported.db");
    let out = ok(home, &["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "300", "--import-precision", "int8"]);
    assert!(out.contains("calibrating the int8 copy of efficientnet-lite0"), "{out}");
    // Only this machine runs the copy: its weights as wide as this CPU's kernels allow.
    let width = match lookalike::model::quantise::local_weight_bits() {
        8 => "(8-bit weights: this CPU has VNNI)",
        _ => "(7-bit weights: this CPU has no VNNI)",
    };
    assert!(out.contains(width), "{out}");
    assert_eq!(int8_files(home).len(), 1, "the copy's file, made from this import's calibration");
    // The catalog is the float model's: no int8 model name, no stored description.
    let info = ok(home, &["info", "--db", path(&db)]);
    assert!(info.contains("model: efficientnet-lite0 (1280-d"), "{info}");
    let imported = SqliteCatalog::open_existing(&db).expect("catalog");
    assert!(imported.model_description().expect("read").is_none());

    // The copy encoded them: close to the float model's vectors of the same photos, not equal.
    let cosines = cosines_to_float(&imported);
    let (lowest, median, highest) = (cosines[0], cosines[cosines.len() / 2], cosines[cosines.len() - 1]);
    eprintln!("int8-imported vs float vectors of the same 300 photos: median cosine {median:.4}, lowest {lowest:.4}, highest {highest:.6}");
    assert!(median > 0.95 && lowest > 0.85, "int8-imported vectors drift from the float model's: median {median}, lowest {lowest}");
    assert!(median < 0.99999, "the vectors are the float model's own: the int8 copy did not encode them");

    // Searched with the float model (the catalog's, by default), a catalog photo finds its
    // own product first; a float import adds to the same catalog.
    let product = imported.get_by_id("fmnist-train-00007").expect("read").expect("product");
    let photo_path = dir.path().join("p.png");
    std::fs::write(&photo_path, imported.image_bytes(product.key, &product.image).expect("stored photo")).expect("write photo");
    let found = search(home, &db, &photo_path);
    assert_eq!(found["hits"][0]["id"], "fmnist-train-00007", "{found}");
    let more = ok(home, &["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "310"]);
    assert!(more.contains("indexed 10 new or changed, 300 unchanged"), "{more}");
    // A later int8 import into the catalog encodes with the copy the first one calibrated: no
    // calibration, no second copy.
    let later = ok(home, &["index", "--db", path(&db), "--fashion-mnist", "train", "--limit", "320", "--import-precision", "int8"]);
    assert!(later.contains("indexed 10 new or changed, 310 unchanged"), "{later}");
    assert!(!later.contains("calibrating"), "{later}");
    assert!(later.contains("int8 copy of efficientnet-lite0 this catalog was first imported with") && later.contains(&width[1..width.len() - 1]), "{later}");
    assert_eq!(int8_files(home).len(), 1, "the first import's copy, used again");

    // A plug-in model has no int8 copy; an unknown precision is refused with the choices.
    let described = dir.path().join("plug-in.json");
    let mut spec = lookalike::model::resolve(&Assets::from_env(), "efficientnet-lite0").expect("the built-in model");
    spec.name = "my-lite0".into();
    std::fs::write(&described, serde_json::to_string(&spec).expect("JSON")).expect("write description");
    let plug_in =
        run(home, &["index", "--db", path(&dir.path().join("p.db")), "--fashion-mnist", "train", "--limit", "20", "--model", path(&described), "--import-precision", "int8"]);
    assert!(!plug_in.status.success(), "a plug-in model was imported in int8");
    assert!(String::from_utf8_lossy(&plug_in.stderr).contains("needs a built-in model"), "{}", String::from_utf8_lossy(&plug_in.stderr));
    assert!(!dir.path().join("p.db").exists(), "the refused import left a catalog file behind");
    let bad = run(home, &["index", "--db", path(&db), "--fashion-mnist", "train", "--import-precision", "int4"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values: int8, fp32"), "{}", String::from_utf8_lossy(&bad.stderr));
}
