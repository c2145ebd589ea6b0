//! End-to-end tests of `lookalike serve`: the real binary, the real model, a small real
//! Fashion-MNIST catalog, spoken to over HTTP on 127.0.0.1. Every route, every error status,
//! catalog changes with persistence across a restart, load shedding, and the page driven by a
//! headless Chromium (tests/browser/run.mjs).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

#[test]
fn every_route_answers_and_is_in_the_openapi_document() {
    let server = Server::start(shared_catalog(), &[], &[]);
    let http = client();
    let get = |route: &str| http.get(server.url(route)).send().expect("request");

    let page = get("/");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/html"));
    let html = page.text().expect("html");
    assert!(html.contains("accept=\"image/*\"") && !html.contains("capture"), "the picker offers camera and files");
    assert!(!html.contains("http://") && !html.contains("https://"), "no external resources");
    for (route, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let r = get(route);
        assert_eq!(r.status(), 200, "{route}");
        assert!(r.headers()["content-type"].to_str().unwrap_or_default().starts_with(kind), "{route}");
    }

    assert_eq!(ok_json(get("/healthz"))["status"], "ok");
    let ready = ok_json(get("/readyz"));
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["products"], 300);

    let facets = ok_json(get("/api/facets"));
    assert_eq!(facets["products"], 300);
    let facet = facets["facets"].as_array().expect("facets").iter().find(|f| f["column"] == "articleType").expect("articleType facet");
    let values = facet["values"].as_array().expect("values");
    assert_eq!(values.len(), 10, "the ten Fashion-MNIST classes");
    assert_eq!(values.iter().map(|v| v["count"].as_u64().unwrap_or(0)).sum::<u64>(), 300);
    assert!(facets["facets"].as_array().expect("facets").iter().all(|f| f["column"] != "index"), "ids are not a facet");

    // Every product, a page at a time, each once; a filter narrows the listing as the facet counts.
    let (mut listed, mut next, mut pages) = (std::collections::BTreeSet::new(), None::<String>, 0);
    loop {
        let route = match &next {
            Some(token) => format!("/api/products?limit=120&page={token}"),
            None => "/api/products?limit=120".to_string(),
        };
        let page = ok_json(get(&route));
        let products = page["products"].as_array().expect("products");
        assert!(products.len() <= 120 && products.iter().all(|p| p["metadata"]["articleType"].is_string()) && page["total"] == 300, "{route}");
        listed.extend(products.iter().map(|p| p["id"].as_str().expect("id").to_string()));
        pages += 1;
        match page["next_page"].as_str() {
            Some(token) => next = Some(token.to_string()),
            None => break,
        }
    }
    assert_eq!((listed.len(), pages), (300, 3), "300 products in pages of 120");
    let shirts = values.iter().find(|v| v["value"] == "Shirt").and_then(|v| v["count"].as_u64()).expect("Shirt facet");
    let filtered = ok_json(get("/api/products?filter=articleType%3DShirt&limit=500"));
    assert_eq!(filtered["total"].as_u64(), Some(shirts), "the filter's total is the facet's count");
    let filtered = filtered["products"].as_array().expect("products");
    assert!(filtered.iter().all(|p| p["metadata"]["articleType"] == "Shirt") && filtered.len() as u64 == shirts, "the Shirt filter lists the {shirts} shirts");
    let none = ok_json(get("/api/products?filter=articletype%3DShirt"));
    assert_eq!((&none["total"], &none["why_nothing_matches"]), (&json!(0), &json!("no product has a column \"articletype\" (did you mean \"articleType\"?)")));
    for route in ["/api/products?limit=0", "/api/products?limit=501", "/api/products?page=not-a-token", "/api/products?sort=name", "/api/products?filter=nocolumn"] {
        expect_error(get(route), 422, "bad_parameters");
    }

    let product = ok_json(get("/api/products/fmnist-train-00001"));
    assert_eq!(product["id"], "fmnist-train-00001");
    assert!(product["metadata"]["articleType"].is_string());
    let image = get(product["image_url"].as_str().expect("image_url"));
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    assert!(image.bytes().expect("bytes").starts_with(b"\x89PNG"));
    expect_error(get("/api/products/no-such-product"), 404, "not_found");
    expect_error(get("/api/products/no-such-product/image"), 404, "not_found");
    // Nothing from the request is ever used as a file path.
    let traversal = get("/api/products/..%2F..%2Fetc%2Fpasswd/image");
    assert_eq!(traversal.status(), 404);

    // A search first, so the metrics have an encoder observation.
    ok_json(search_photo(&server, test_photo(0).0, &[("k", "3")]));
    let metrics = get("/metrics");
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().expect("metrics");
    for needle in [
        "lookalike_http_requests_total{route=\"/api/search\",method=\"POST\",status=\"200\"} 1",
        "lookalike_http_request_duration_seconds_bucket{route=\"/api/search\",le=\"+Inf\"} 1",
        "lookalike_encoder_batch_duration_seconds_count 1",
        "lookalike_catalog_products 300",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }

    let openapi = ok_json(get("/api/openapi.json"));
    assert!(openapi["openapi"].as_str().unwrap_or_default().starts_with("3."));
    let paths = &openapi["paths"];
    for (route, method) in [
        ("/", "get"),
        ("/app.js", "get"),
        ("/style.css", "get"),
        ("/api/search", "post"),
        ("/api/products", "get"),
        ("/api/products", "post"),
        ("/api/products/{id}", "get"),
        ("/api/products/{id}", "patch"),
        ("/api/products/{id}", "delete"),
        ("/api/products/{id}/image", "get"),
        ("/api/facets", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/openapi.json", "get"),
    ] {
        assert!(paths[route][method].is_object(), "{method} {route} missing from the OpenAPI document");
    }
    assert_eq!(paths.as_object().map(|p| p.len()), Some(12), "every documented path is tested above");
}

#[test]
fn photo_search_ranks_filters_pages_and_crops() {
    let server = Server::start(shared_catalog(), &[], &[]);
    let mut same_class = 0;
    for i in 0..10 {
        let (png, class) = test_photo(i);
        let result = ok_json(search_photo(&server, png, &[("k", "5")]));
        let hits = result["hits"].as_array().expect("hits");
        assert_eq!(hits.len(), 5);
        let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().expect("score")).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
        assert_eq!(hits.iter().map(|h| h["rank"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        same_class += hits.iter().filter(|h| h["category"] == class.as_str()).count();
        for key in ["id", "name", "metadata", "image_url", "likeness"] {
            assert!(!hits[0][key].is_null(), "hit lacks {key}");
        }
        // Words for how alike: never more alike further down the list.
        let band = |h: &serde_json::Value| ["very_similar", "similar", "related"].iter().position(|b| h["likeness"] == *b).expect("a known likeness");
        assert!(hits.windows(2).all(|w| band(&w[0]) <= band(&w[1])), "likeness follows rank: {hits:?}");
        assert!(result["timings"]["encode_ms"].as_f64().unwrap_or(0.0) > 0.0);
    }
    assert!(same_class > 30, "precision@5 on held-out photos: {same_class}/50");

    let (png, _) = test_photo(0);
    // Filters: k results while enough match, all matching.
    let bags = ok_json(search_photo(&server, png.clone(), &[("k", "8"), ("filter", "articleType=Bag")]));
    assert_eq!(bags["hits"].as_array().map(Vec::len), Some(8));
    assert!(bags["hits"].as_array().expect("hits").iter().all(|h| h["metadata"]["articleType"] == "Bag"));
    assert!(bags.get("why_nothing_matches").is_none(), "said only when nothing matches: {bags}");
    // A filter that matches nothing says which part no product has (a typo, a stale link).
    let typo = ok_json(search_photo(&server, png.clone(), &[("k", "8"), ("filter", "articleType=bag")]));
    assert_eq!(typo["hits"], json!([]));
    assert_eq!(typo["why_nothing_matches"], "no product has articleType=bag (did you mean articleType=Bag?)");
    // Every product found in a photo finds nothing either, each item's list empty.
    let mut scene = Vec::new();
    two_products_photo().write_to(&mut std::io::Cursor::new(&mut scene), image::ImageFormat::Png).expect("png");
    let items = ok_json(search_photo(&server, scene, &[("items", "all"), ("filter", "articleType=bag")]));
    let listed = items["items"].as_array().expect("items");
    assert!(listed.len() == 2 && listed.iter().all(|i| i["hits"] == json!([])) && items["why_nothing_matches"] == typo["why_nothing_matches"], "{items}");
    let both = ok_json(search_json(&server, json!({"product_id": "fmnist-train-00000", "k": 5, "filters": {"articleType": "Bag", "split": "test"}})));
    assert_eq!(both["why_nothing_matches"], "no product has split=test (split has: train)");
    // Paging: page two continues page one.
    let first = ids(&ok_json(search_photo(&server, png.clone(), &[("k", "10")])));
    let second = ok_json(search_photo(&server, png.clone(), &[("k", "5"), ("offset", "5")]));
    assert_eq!(ids(&second), first[5..].to_vec());
    assert_eq!(second["hits"][0]["rank"], 6);
    // Crop: the server crops before preprocessing, so scores change.
    let whole = ok_json(search_photo(&server, png.clone(), &[("k", "3")]));
    let cropped = ok_json(search_photo(&server, png.clone(), &[("k", "3"), ("crop", "0,0,0.5,0.5")]));
    assert_ne!(whole["hits"][0]["score"], cropped["hits"][0]["score"]);

    // What was found in the photo, and with items=all each found product's own results.
    assert!(whole["detections"].is_array() && whole.get("items").is_none(), "detections always, items only when asked: {whole}");
    let all = ok_json(search_photo(&server, png.clone(), &[("k", "3"), ("items", "all")]));
    let (detections, items) = (all["detections"].as_array().expect("detections"), all["items"].as_array().expect("items"));
    assert_eq!(items.len(), detections.len());
    for (item, detection) in items.iter().zip(detections) {
        assert_eq!(item["box"], detection["box"]);
        let b: Vec<f64> = item["box"].as_array().expect("box").iter().map(|v| v.as_f64().expect("number")).collect();
        assert!(b.len() == 4 && b.iter().all(|v| (0.0..=1.0).contains(v)) && b[0] + b[2] <= 1.0 + 1e-6 && b[1] + b[3] <= 1.0 + 1e-6, "box {b:?}");
        assert_eq!(item["hits"].as_array().map(Vec::len), Some(3));
    }
    assert_eq!(ids(&all), ids(&whole), "items=all keeps the main results");
    let cropped_all = ok_json(search_photo(&server, png.clone(), &[("k", "3"), ("crop", "0,0,0.5,0.5"), ("items", "all")]));
    assert_eq!(cropped_all["detections"], json!([]), "a shopper's crop is searched as it is");

    // The photo's vector, then the same search by vector (JSON), with filters and paging.
    let with_vector = ok_json(search_photo(&server, png.clone(), &[("k", "5"), ("include_vector", "true")]));
    let vector = with_vector["query_vector"].as_array().expect("query_vector").clone();
    assert_eq!(vector.len(), 1280);
    let by_vector = ok_json(search_json(&server, json!({"vector": vector, "k": 5})));
    assert_eq!(ids(&by_vector), ids(&with_vector));
    let filtered = ok_json(search_json(&server, json!({"vector": vector, "k": 4, "offset": 2, "filters": {"articleType": ["Bag", "Sandal"]}})));
    assert_eq!(filtered["hits"].as_array().map(Vec::len), Some(4));
    assert!(filtered["hits"].as_array().expect("hits").iter().all(|h| h["metadata"]["articleType"] == "Bag" || h["metadata"]["articleType"] == "Sandal"));
    assert_eq!(filtered["hits"][0]["rank"], 3);

    // More like this: the product's stored vector, the product itself left out.
    let like = ok_json(search_json(&server, json!({"product_id": "fmnist-train-00000", "k": 6})));
    let like_ids = ids(&like);
    assert_eq!(like_ids.len(), 6);
    assert!(!like_ids.contains(&"fmnist-train-00000".to_string()));
    let class = ok_json(client().get(server.url("/api/products/fmnist-train-00000")).send().expect("get"))["category"].clone();
    let same = like["hits"].as_array().expect("hits").iter().filter(|h| h["category"] == class).count();
    assert!(same >= 3, "more like this finds the same kind: {same}/6");
    let one_class = ok_json(search_json(&server, json!({"product_id": "fmnist-train-00000", "k": 5, "filters": {"articleType": "Dress"}})));
    assert!(one_class["hits"].as_array().expect("hits").iter().all(|h| h["metadata"]["articleType"] == "Dress"));
}

#[test]
fn errors_have_the_right_status_and_a_json_body() {
    let server = Server::start(shared_catalog(), &["--max-upload-mb", "1"], &[]);
    let (png, _) = test_photo(0);

    // 400: a PNG signature followed by garbage; an empty file.
    let mut broken = png[..40].to_vec();
    broken.extend_from_slice(&[0x55; 64]);
    expect_error(search_photo(&server, broken, &[]), 400, "unreadable_image");
    expect_error(search_photo(&server, Vec::new(), &[]), 400, "unreadable_image");

    // 413: over --max-upload-mb 1, as a photo and as a JSON body.
    let mut big = png.clone();
    big.resize(1_300_000, 0);
    let message = expect_error(search_photo(&server, big, &[]), 413, "too_large");
    // One figure for the limit everywhere: the flag's, the page's and the message's.
    assert!(message.contains("up to 1 MB") && message.contains("1.2 MB"), "{message}");
    let page = client().get(server.url("/")).send().expect("page").text().expect("html");
    assert!(page.contains("up to <span id=\"max-upload\">1 MB</span>") && page.contains("content=\"1048576\""), "the page gives the server's limit");
    let huge = format!("{{\"vector\": [{}]}}", vec!["0.5"; 400_000].join(","));
    let r = client().post(server.url("/api/search")).header("content-type", "application/json").body(huge).send().expect("post");
    expect_error(r, 413, "too_large");

    // 415: not an image; a body that is neither multipart nor JSON.
    let message = expect_error(search_photo(&server, b"<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>".to_vec(), &[]), 415, "unsupported_type");
    assert!(message.contains("JPEG, PNG"), "the message says what is accepted: {message}");
    expect_error(search_photo(&server, b"just some text\n".to_vec(), &[]), 415, "unsupported_type");
    let r = client().post(server.url("/api/search")).header("content-type", "text/plain").body("hello").send().expect("post");
    expect_error(r, 415, "unsupported_type");

    // 422: parameters that make no sense.
    expect_error(search_photo(&server, png.clone(), &[("k", "0")]), 422, "bad_parameters");
    expect_error(search_photo(&server, png.clone(), &[("k", "lots")]), 422, "bad_parameters");
    expect_error(search_photo(&server, png.clone(), &[("k", "1000")]), 422, "bad_parameters");
    expect_error(search_photo(&server, png.clone(), &[("crop", "0.5,0.5,0.9,0.1")]), 422, "bad_parameters");
    expect_error(search_photo(&server, png.clone(), &[("crop", "a,b")]), 422, "bad_parameters");
    expect_error(search_photo(&server, png.clone(), &[("filter", "articleType")]), 422, "bad_parameters");
    expect_error(search_photo(&server, png.clone(), &[("size", "M")]), 422, "bad_parameters");
    let message = expect_error(search_photo(&server, png.clone(), &[("items", "every")]), 422, "bad_parameters");
    assert!(message.contains("main") && message.contains("all"), "says what items takes: {message}");
    expect_error(search_json(&server, json!({"product_id": "fmnist-train-00000", "items": "all"})), 422, "bad_parameters");
    let no_image = client().post(server.url("/api/search")).multipart(Form::new().text("k", "5")).send().expect("post");
    expect_error(no_image, 422, "bad_parameters");
    expect_error(search_json(&server, json!({"k": 5})), 422, "bad_parameters");
    expect_error(search_json(&server, json!({"product_id": "fmnist-train-00000", "vector": [1.0]})), 422, "bad_parameters");
    expect_error(search_json(&server, json!({"vector": [1.0, 2.0]})), 422, "bad_parameters");
    expect_error(search_json(&server, json!({"product_id": "fmnist-train-00000", "crop": "0,0,1,1"})), 422, "bad_parameters");
    expect_error(search_json(&server, json!({"product_id": 42})), 422, "bad_parameters");

    // 404: unknown product for "more like this".
    expect_error(search_json(&server, json!({"product_id": "no-such-product"})), 404, "not_found");

    // The server is still fine after all that.
    assert_eq!(ok_json(search_photo(&server, png, &[("k", "2")]))["hits"].as_array().map(Vec::len), Some(2));
}

// The encoder queue's load shedding (503 with Retry-After) is tested in tests/batcher.rs, with
// the worker held by a gate so that the queue is full for certain.

#[test]
fn catalog_changes_need_the_token_are_searchable_at_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let token = "s3cret-admin-token";
    let (png, _) = test_photo(7);
    let add_form = || {
        Form::new()
            .text("id", "shop-boot-1")
            .part("image", Part::bytes(png.clone()).file_name("boot.png"))
            .text("metadata", r#"{"productDisplayName": "Black ankle boot", "articleType": "Ankle boot"}"#)
            .text("baseColour", "Black")
    };

    {
        // No token configured: changes are off, and the message says how to turn them on.
        let server = Server::start(&db, &[], &[]);
        let r = client().post(server.url("/api/products")).bearer_auth(token).multipart(add_form()).send().expect("post");
        let message = expect_error(r, 403, "forbidden");
        assert!(message.contains("--admin-token") && message.contains("LOOKALIKE_ADMIN_TOKEN"), "{message}");
        let r = client().delete(server.url("/api/products/fmnist-train-00000")).bearer_auth(token).send().expect("delete");
        expect_error(r, 403, "forbidden");
    }

    let server = Server::start(&db, &[], &[("LOOKALIKE_ADMIN_TOKEN", token)]);
    let http = client();
    let r = http.post(server.url("/api/products")).multipart(add_form()).send().expect("post");
    assert_eq!(r.headers().get("www-authenticate").map(|v| v.to_str().unwrap_or_default()), Some("Bearer"));
    expect_error(r, 401, "unauthorized");
    let r = http.post(server.url("/api/products")).bearer_auth("wrong").multipart(add_form()).send().expect("post");
    expect_error(r, 401, "unauthorized");
    let r = http.delete(server.url("/api/products/fmnist-train-00000")).bearer_auth("s3cret-admin-tokeN").send().expect("delete");
    expect_error(r, 401, "unauthorized");
    let r = http.post(server.url("/api/products")).bearer_auth(token).multipart(Form::new().text("id", "x")).send().expect("post");
    expect_error(r, 422, "bad_parameters");

    let r = http.post(server.url("/api/products")).bearer_auth(token).multipart(add_form()).send().expect("post");
    assert_eq!(r.status(), 201);
    let added = ok_json(r);
    assert_eq!(added["id"], "shop-boot-1");
    assert_eq!(added["name"], "Black ankle boot");
    assert_eq!(added["colour"], "Black");

    // Searchable at once: the same photo finds it first, with similarity ~1.
    let found = ok_json(search_photo(&server, png.clone(), &[("k", "3")]));
    assert_eq!(found["hits"][0]["id"], "shop-boot-1");
    assert!(found["hits"][0]["score"].as_f64().unwrap_or(0.0) > 0.99);
    assert_eq!(found["hits"][0]["likeness"], "very_similar", "the same photo is very similar in words too");
    let image = http.get(server.url("/api/products/shop-boot-1/image")).send().expect("image");
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(image.bytes().expect("bytes"), png, "the uploaded bytes are kept in the catalog");
    assert_eq!(ok_json(http.get(server.url("/readyz")).send().expect("readyz"))["products"], 301);

    // Another size listed with the very same photo takes the stored vectors (nothing is
    // encoded: the encoder's photo count stays), and the product shows it as a variant.
    let photos_encoded = || {
        let text = http.get(server.url("/metrics")).send().expect("metrics").text().expect("text");
        text.lines().find_map(|l| l.strip_prefix("lookalike_encoder_batch_size_sum ")).and_then(|n| n.parse::<f64>().ok()).unwrap_or_else(|| panic!("no photo count in:\n{text}"))
    };
    let encoded_before = photos_encoded();
    let size_43 = Form::new().text("id", "shop-boot-1-43").part("image", Part::bytes(png.clone()).file_name("boot.png")).text("size", "43");
    assert_eq!(http.post(server.url("/api/products")).bearer_auth(token).multipart(size_43).send().expect("post").status(), 201);
    assert_eq!(photos_encoded(), encoded_before, "a photo the catalog has is not encoded again");
    let boot = ok_json(http.get(server.url("/api/products/shop-boot-1")).send().expect("get"));
    assert_eq!(boot["variants"][0]["id"], "shop-boot-1-43", "{boot}");
    assert_eq!(boot["variants"][0]["metadata"]["size"], "43", "{boot}");
    let found = ok_json(search_photo(&server, png.clone(), &[("k", "3")]));
    let mut listings = vec![found["hits"][0]["id"].clone(), found["hits"][0]["variants"][0]["id"].clone()];
    listings.sort_by_key(|id| id.to_string());
    assert_eq!(listings, [json!("shop-boot-1"), json!("shop-boot-1-43")], "one result for the photo: {found}");
    assert!(found["hits"][0]["score"].as_f64().unwrap_or(0.0) > 0.99, "{found}");
    assert_eq!(http.delete(server.url("/api/products/shop-boot-1-43")).bearer_auth(token).send().expect("delete").status(), 204);
    let boot = ok_json(http.get(server.url("/api/products/shop-boot-1")).send().expect("get"));
    assert!(boot.get("variants").is_none(), "a product alone with its photo has no variants: {boot}");

    // Its metadata alone changes (a new name, price and kind, a column removed), no photo
    // sent: searches, filters, the listing and the facets show it at once, and the same photo
    // still finds it as closely (its vector is kept).
    let patch = |id: &str, body: &serde_json::Value| {
        let request = http.patch(server.url(&format!("/api/products/{id}"))).bearer_auth(token);
        request.header("content-type", "application/merge-patch+json").body(body.to_string()).send().expect("patch")
    };
    let change = json!({"metadata": {"productDisplayName": "Black leather boot", "price": 59.99, "articleType": "Boots", "baseColour": null}});
    let patched = ok_json(patch("shop-boot-1", &change));
    assert_eq!((&patched["name"], &patched["price"], &patched["category"]), (&json!("Black leather boot"), &json!("59.99"), &json!("Boots")));
    // The shop's colour removed, the product is named by its photo's colour, as `index` names
    // products whose rows name none (not left out of the colour facet).
    assert!(patched["metadata"].get("baseColour").is_none(), "{patched}");
    let computed = patched["metadata"]["colour"].as_str().unwrap_or_else(|| panic!("a computed colour: {patched}")).to_string();
    assert_eq!(patched["colour"], computed.as_str());
    let found = ok_json(search_photo(&server, png.clone(), &[("k", "3")]));
    assert_eq!((&found["hits"][0]["id"], &found["hits"][0]["name"]), (&json!("shop-boot-1"), &json!("Black leather boot")));
    assert!(found["hits"][0]["score"].as_f64().unwrap_or(0.0) > 0.99);
    let boots = ok_json(search_photo(&server, png.clone(), &[("k", "5"), ("filter", "articleType=Boots")]));
    assert_eq!(ids(&boots), ["shop-boot-1"], "the new kind is filtered on at once");
    let listed = ok_json(http.get(server.url("/api/products?filter=articleType%3DBoots")).send().expect("list"));
    assert_eq!(listed["products"].as_array().map(Vec::len), Some(1));
    let facets = ok_json(http.get(server.url("/api/facets")).send().expect("facets"));
    let kinds = facets["facets"].as_array().expect("facets").iter().find(|f| f["column"] == "articleType").expect("articleType facet").clone();
    assert!(kinds["values"].as_array().expect("values").iter().any(|v| v["value"] == "Boots" && v["count"] == 1), "{kinds}");
    // Bad patches lose nothing: the product is as the last good one left it.
    expect_error(http.patch(server.url("/api/products/shop-boot-1")).json(&change).send().expect("patch"), 401, "unauthorized");
    expect_error(patch("no-such-product", &change), 404, "not_found");
    for bad in [json!({"metadata": {"sizes": ["S", "M"]}}), json!({"metadata": {"_lookalike_id": "x"}}), json!({"price": "1"}), json!({"metadata": {"": "x"}})] {
        expect_error(patch("shop-boot-1", &bad), 422, "bad_parameters");
    }
    let r = http.patch(server.url("/api/products/shop-boot-1")).bearer_auth(token).body("price=1").send().expect("patch");
    expect_error(r, 415, "unsupported_type");
    let reserved = add_form().text("_lookalike_key", "7");
    expect_error(http.post(server.url("/api/products")).bearer_auth(token).multipart(reserved).send().expect("post"), 422, "bad_parameters");
    assert_eq!(ok_json(http.get(server.url("/api/products/shop-boot-1")).send().expect("get"))["name"], "Black leather boot");
    drop(server);

    // Survives a restart.
    let server = Server::start(&db, &["--admin-token", token], &[]);
    let found = ok_json(search_photo(&server, png.clone(), &[("k", "3")]));
    assert_eq!(found["hits"][0]["id"], "shop-boot-1");
    let stored = ok_json(http.get(server.url("/api/products/shop-boot-1")).send().expect("get"));
    assert_eq!((&stored["price"], &stored["metadata"]["articleType"]), (&json!("59.99"), &json!("Boots")));
    assert!(stored["metadata"].get("baseColour").is_none() && stored["colour"] == computed.as_str(), "{stored}");

    // Delete: gone from search at once and after a restart.
    let r = http.delete(server.url("/api/products/shop-boot-1")).bearer_auth(token).send().expect("delete");
    assert_eq!(r.status(), 204);
    let r = http.delete(server.url("/api/products/shop-boot-1")).bearer_auth(token).send().expect("delete");
    expect_error(r, 404, "not_found");
    assert!(!ids(&ok_json(search_photo(&server, png.clone(), &[("k", "20")]))).contains(&"shop-boot-1".to_string()));
    expect_error(http.get(server.url("/api/products/shop-boot-1")).send().expect("get"), 404, "not_found");
    drop(server);
    let server = Server::start(&db, &[], &[]);
    assert!(!ids(&ok_json(search_photo(&server, png, &[("k", "20")]))).contains(&"shop-boot-1".to_string()));
    assert_eq!(ok_json(http.get(server.url("/readyz")).send().expect("readyz"))["products"], 300);
}

/// The page in a real headless Chromium, at desktop and phone sizes (tests/browser/run.mjs):
/// a shop catalog with names, prices and links, a photo, a photo of two products, a 30 MB
/// photo and a text file. Screenshots go to artifacts/. The script installs Chromium,
/// playwright-core and axe-core if they are missing. The page runs on a throttled network, so
/// that a check which reads the page before a response's body has arrived fails every time,
/// not once in dozens of runs (run.mjs, LOOKALIKE_BROWSER_DOWNLOAD_BPS).
#[test]
fn the_page_works_in_a_headless_browser() {
    if std::env::var_os("LOOKALIKE_SKIP_BROWSER_TEST").is_some() {
        eprintln!("LOOKALIKE_SKIP_BROWSER_TEST is set: browser test skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cdn = image_server(dir.path().join("cdn"));
    let db = shop_catalog(dir.path(), &cdn);
    // The page admits photos from the shop's image server alone (the strict page below shows one).
    let server = Server::start(&db, &["--image-origin", &cdn], &[]);
    // A photo to upload: a test-split shirt, enlarged so the area is easy to draw.
    let (png, _) = test_photo(1);
    let photo = image::load_from_memory(&png).expect("decode").resize(280, 280, image::imageops::FilterType::Triangle);
    // Two products of the first results whose photo files leave the shop's folder after the
    // import: one moved to the shop's image server, which its `image_url` links (the image
    // route redirects there: another origin), one gone for good (no link: a placeholder).
    let photo_path = dir.path().join("photo.png");
    photo.save(&photo_path).expect("save photo");
    let uploaded = std::fs::read(&photo_path).expect("read photo");
    let hits = ok_json(search_photo(&server, uploaded, &[("k", "24")]))["hits"].as_array().expect("hits").clone();
    let pick = |linked: bool| {
        let id = hits[2..].iter().filter_map(|h| h["id"].as_str()).find(|id| id.parse::<usize>().is_ok_and(|n| n.is_multiple_of(2) == linked)).expect("such a hit").to_string();
        let file = dir.path().join("shop/images").join(format!("{id}.png"));
        match linked {
            true => std::fs::rename(&file, dir.path().join("cdn").join(format!("{id}.png"))).expect("move the photo to the image server"),
            false => std::fs::remove_file(&file).expect("remove the photo"),
        }
        id
    };
    let (linked_id, gone_id) = (pick(true), pick(false));
    let scene_path = dir.path().join("two-products.png");
    two_products_photo().save(&scene_path).expect("save scene");
    // A camera-sized photo over the server's 20 MB limit: a BMP (uncompressed, so its size is
    // certain) of the shirt at 3,200 px with sensor-like noise. The page must shrink it.
    let big_path = dir.path().join("camera.bmp");
    camera_sized(&photo).save(&big_path).expect("save big photo");
    let big = std::fs::metadata(&big_path).expect("big photo").len();
    assert!(big > 30_000_000, "the big photo is {big} bytes");
    let text_path = dir.path().join("notes.txt");
    std::fs::write(&text_path, "not an image\n").expect("write text file");
    // Not a photo either, and over the limit: refused on the device, before it is sent.
    let huge_text_path = dir.path().join("huge.txt");
    std::fs::write(&huge_text_path, vec![b'x'; 21 * 1024 * 1024 + 1]).expect("write huge file");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("scripts/browser-test.sh"))
        .env("LOOKALIKE_URL", &server.url)
        .env("LOOKALIKE_PHOTO", &photo_path)
        .env("LOOKALIKE_SCENE", &scene_path)
        .env("LOOKALIKE_BIG_PHOTO", &big_path)
        .env("LOOKALIKE_TEXT_FILE", &text_path)
        .env("LOOKALIKE_HUGE_FILE", &huge_text_path)
        .env("LOOKALIKE_LINKED_PHOTO_ID", &linked_id)
        .env("LOOKALIKE_GONE_PHOTO_ID", &gone_id)
        .env("LOOKALIKE_ARTIFACTS", root.join("artifacts"))
        .status()
        .expect("run scripts/browser-test.sh");
    assert!(status.success(), "the browser test failed (see its output above)");
}

/// The shop's own image server, on another origin than lookalike's: serves `dir`'s files by
/// name (`GET /NAME`), 404 for anything else. Its address.
fn image_server(dir: std::path::PathBuf) -> String {
    use std::io::{BufRead, Write};
    std::fs::create_dir_all(&dir).expect("mkdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("http://127.0.0.1:{}", listener.local_addr().expect("address").port());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let name = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let body = (!name.contains('/') && !name.contains("..")).then(|| std::fs::read(dir.join(&name)).ok()).flatten();
            let head = match &body {
                Some(bytes) => format!("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len()),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            };
            let mut stream = reader.into_inner();
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body.as_deref().unwrap_or_default()));
        }
    });
    address
}

/// A shop's catalog in the "Fashion Product Images" layout (`images/ID.png` + `styles.csv`),
/// imported with `lookalike index --kaggle`: 120 Fashion-MNIST training garments with a name,
/// a price, a link to their page and the usual columns (a `baseColour` of Black, White, Grey
/// or, one in ten, Multi). Each pullover (the uploaded photo's kind) is listed in sizes S, M
/// and L, three rows with one photo, as shops' exports list size variants. Products with an
/// even id link their photo on the shop's image server `cdn` too (`image_url`).
fn shop_catalog(dir: &Path, cdn: &str) -> std::path::PathBuf {
    let shop = dir.join("shop");
    std::fs::create_dir_all(shop.join("images")).expect("mkdir");
    let fm = lookalike::import::fashion_mnist::FashionMnist::load(&fm_dir(), "train").expect("train split");
    let mut csv = String::from("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName,price,link,size,image_url\n");
    for i in 0..120 {
        let id = 5000 + i;
        let img = image::DynamicImage::ImageLuma8(fm.image(i).expect("image")).resize(112, 112, image::imageops::FilterType::Triangle);
        // One in ten patterned ("Multi": no one colour), in red and blue stripes, so the page's
        // dot of several colours shows.
        let colour = if i % 10 == 9 { "Multi" } else { ["Black", "White", "Grey"][i % 3] };
        let img = if colour == "Multi" { striped(&img) } else { img };
        img.save(shop.join("images").join(format!("{id}.png"))).expect("save");
        let class = fm.class_name(i);
        let gender = if i % 2 == 0 { "Women" } else { "Men" };
        let price = format!("€{}.99", 19 + (i * 7) % 60);
        let row = |id: usize, size: &str| {
            let image_url = if id.is_multiple_of(2) { format!("{cdn}/{id}.png") } else { String::new() };
            format!("{id},{gender},Apparel,Clothing,{class},{colour},Fall,2024,Casual,{colour} {class} no. {i},{price},https://shop.example/p/{id},{size},{image_url}\n")
        };
        if class != "Pullover" {
            csv.push_str(&row(id, ""));
            continue;
        }
        csv.push_str(&row(id, "S"));
        for (variant, size) in [(id + 1000, "M"), (id + 2000, "L")] {
            std::fs::copy(shop.join("images").join(format!("{id}.png")), shop.join("images").join(format!("{variant}.png"))).expect("copy the photo");
            csv.push_str(&row(variant, size));
        }
    }
    std::fs::write(shop.join("styles.csv"), csv).expect("csv");
    let db = dir.join("shop.db");
    let out = lookalike(&["index", "--db", path(&db), "--kaggle", path(&shop)]);
    assert!(out.status.success(), "index failed: {}", String::from_utf8_lossy(&out.stderr));
    db
}

/// Two test-split garments (a trouser and a bag) far apart on one black 448 px photo: two
/// products found, as tests/localise.rs shows.
fn two_products_photo() -> image::DynamicImage {
    let fm = lookalike::import::fashion_mnist::FashionMnist::load(&fm_dir(), "test").expect("test split");
    let mut photo = image::GrayImage::new(448, 448);
    for (index, x, y) in [(2usize, 0i64, 0i64), (18, 256, 256)] {
        let garment = image::imageops::resize(&fm.image(index).expect("image"), 192, 192, image::imageops::FilterType::Triangle);
        image::imageops::overlay(&mut photo, &garment, x, y);
    }
    image::DynamicImage::ImageLuma8(photo)
}

/// `photo` at 3,200 px with a little deterministic noise, as a camera's sensor adds.
fn camera_sized(photo: &image::DynamicImage) -> image::DynamicImage {
    let mut big = photo.resize_exact(3200, 3200, image::imageops::FilterType::Triangle).to_rgb8();
    let mut state = 12345u32;
    for p in big.pixels_mut() {
        for c in p.0.iter_mut() {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *c = c.saturating_add((state >> 29) as u8);
        }
    }
    image::DynamicImage::ImageRgb8(big)
}

/// The search graph is used where a scan would be slower and the graph measures its recall
/// target on the catalog's own products; the choice and the recall are in `/metrics` and `info`.
#[test]
fn the_index_choice_is_measured_recorded_and_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = copy_catalog(dir.path());
    let info = |db: &Path| String::from_utf8_lossy(&lookalike(&["info", "--db", path(db)]).stdout).to_string();
    assert!(info(&db).contains("search index: exact scan (300 products of 1280-d; a scan is as fast as the graph up to 3906)"), "{}", info(&db));
    let metrics = |server: &Server| client().get(server.url("/metrics")).send().expect("metrics").text().expect("text");

    // 300 products: scanned exactly by default.
    // Whole lines: the gauge's HELP text itself reads "lookalike_index_graph 1 when ...".
    let gauge_line = |text: &str, line: &str| text.lines().any(|l| l == line);
    let server = Server::start(&db, &[], &[]);
    let text = metrics(&server);
    assert!(gauge_line(&text, "lookalike_index_graph 0"), "{text}");
    drop(server);

    // Told that a scan is slower above 100 products: the graph is built, measured and used.
    let server = Server::start(&db, &["--ann-above", "100"], &[]);
    let text = metrics(&server);
    assert!(gauge_line(&text, "lookalike_index_graph 1"), "{text}");
    let recall: f32 = text.lines().find_map(|l| l.strip_prefix("lookalike_index_recall_at_10 ")).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("recall gauge: {text}"));
    assert!(recall >= 0.99, "the graph is used at recall@10 {recall}");
    let (png, _) = test_photo(3);
    assert_eq!(ok_json(search_photo(&server, png, &[("k", "10")]))["hits"].as_array().map(Vec::len), Some(10));
    drop(server);
    let stamp: serde_json::Value = serde_json::from_slice(&std::fs::read(lookalike::catalog::with_suffix(&db, ".graph.json")).expect("graph stamp")).expect("stamp json");
    assert_eq!(stamp["recall_at_10"].as_f64().map(|r| r as f32), Some(recall), "the recall is kept with the graph");

    // A recall target is a fraction.
    let out = lookalike(&["search", "--db", path(&db), path(&dir.path().join("none.png")), "--ann-recall", "1.5"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--ann-recall must be between 0 and 1"), "{}", String::from_utf8_lossy(&out.stderr));
}
