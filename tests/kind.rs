//! Kind consensus, end to end on the real model and real Fashion-MNIST garments: shopper-like
//! photos bring back more products of their own kind with `kind=match` (the default) than by
//! likeness alone, no hit scoring above its likeness; `kind` is a choice in the API and the
//! CLI, and a bad value is refused with the accepted ones.

mod common;

use common::{encoder, expect_error, fm_dir, lookalike, ok_json, path, search_json, search_photo, shared_catalog, test_photo, Server};
use lookalike::catalog::SqliteCatalog;
use lookalike::import::fashion_mnist::FashionMnist;
use lookalike::kind::KindMode;
use lookalike::search::{Items, SearchEngine, SearchRequest, SearchResults};
use rand::SeedableRng;
use serde_json::json;

fn search(engine: &SearchEngine, png: &[u8], kind: KindMode) -> SearchResults {
    let request = SearchRequest { k: 10, kind, ..SearchRequest::default() };
    engine.search_image(png, None, &request, Items::Main).expect("search")
}

#[test]
fn shopper_photos_find_more_of_their_kind_and_no_hit_scores_above_its_likeness() {
    let engine = SearchEngine::open(SqliteCatalog::open_existing(shared_catalog()).expect("catalog"), Box::new(encoder())).expect("engine");
    let test = FashionMnist::load(&fm_dir(), "test").expect("test split");
    let (mut same_kind_match, mut same_kind_any) = (0, 0);
    for i in 0..40 {
        // A held-out garment photographed as a shopper would (background, tilt, light, blur).
        let mut rng = rand::rngs::StdRng::seed_from_u64(1_000 + i as u64);
        let photo = lookalike::perturb::perturb(&image::DynamicImage::from(test.image(i).expect("image")), &mut rng);
        let mut png = Vec::new();
        photo.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
        let kind = test.class_name(i);

        let matched = search(&engine, &png, KindMode::Match);
        let any = search(&engine, &png, KindMode::Any);
        assert_eq!((matched.kind_mode, any.kind_mode), (KindMode::Match, KindMode::Any));
        let count = |r: &SearchResults| r.hits.iter().filter(|h| h.product.category() == Some(kind)).count();
        same_kind_match += count(&matched);
        same_kind_any += count(&any);

        // A hit's score never claims more likeness than the photo has to it (the cosine of the
        // same search by likeness alone), and scores still fall down the list.
        let deeper = engine.search_image(&png, None, &SearchRequest { k: 100, kind: KindMode::Any, ..SearchRequest::default() }, Items::Main).expect("search");
        for hit in &matched.hits {
            let alone = deeper.hits.iter().find(|h| h.product.id == hit.product.id).expect("a consensus hit is among the 100 likest");
            assert!(hit.score <= alone.score + 1e-6, "{}: {} vs {}", hit.product.id, hit.score, alone.score);
        }
        assert!(matched.hits.windows(2).all(|w| w[0].score >= w[1].score), "best first");
    }
    eprintln!("products of the photo's kind in the top 10 of 40 shopper photos: {same_kind_match} with kind=match, {same_kind_any} by likeness alone");
    assert!(same_kind_match > same_kind_any, "products of the photo's kind in the top 10 of 40 photos: {same_kind_match} with kind=match, {same_kind_any} by likeness alone");
}

#[test]
fn kind_is_chosen_in_the_api_and_the_cli_and_bad_values_are_refused() {
    let server = Server::start(shared_catalog(), &[], &[]);
    let (png, _) = test_photo(0);
    assert_eq!(ok_json(search_photo(&server, png.clone(), &[]))["kind"], "match", "the default");
    assert_eq!(ok_json(search_photo(&server, png.clone(), &[("kind", "any")]))["kind"], "any");
    let message = expect_error(search_photo(&server, png.clone(), &[("kind", "dresses")]), 422, "bad_parameters");
    assert!(message.contains("match") && message.contains("any"), "{message}");
    let like = ok_json(search_photo(&server, png, &[("k", "1")]));
    let id = like["hits"][0]["id"].as_str().expect("a hit").to_string();
    assert_eq!(ok_json(search_json(&server, json!({"product_id": id, "kind": "any"})))["kind"], "any");
    expect_error(search_json(&server, json!({"product_id": id, "kind": 3})), 422, "bad_parameters");

    let dir = tempfile::tempdir().expect("tempdir");
    let photo = dir.path().join("q.png");
    std::fs::write(&photo, test_photo(1).0).expect("write");
    let out = lookalike(&["search", "--db", path(shared_catalog()), path(&photo), "--kind", "sideways"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("match") && stderr.contains("any"), "{stderr}");
    let out = lookalike(&["search", "--db", path(shared_catalog()), path(&photo), "--kind", "any", "-k", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
