//! A photo query, step by step: decode and preprocess, encode (with the products found in the
//! photo), then search with the view of the photo that finds most.

use std::time::Instant;

use anyhow::{Context, Result};

use super::{ms, EncodedPhoto, FoundItem, ItemResults, Items, PreparedQuery, Query, QueryVector, SearchEngine, SearchError, SearchRequest, SearchResults, Timings};
use crate::colour;
use crate::encoder::QueryEmbedding;
use crate::localise::{self, find_items, ForegroundHead};
use crate::preprocess::{self, Crop};
use crate::straighten;
use crate::types::{Detection, Filter};

impl SearchEngine {
    /// Products most similar to the photo in `bytes`, optionally cropped to `crop` first.
    ///
    /// The whole path, top to bottom. The HTTP server runs the same three steps but sends the
    /// middle one through its batching worker pool ([`SearchEngine::encode_photos`] on several
    /// queries at once), so it calls them separately.
    pub fn search_image(&self, bytes: &[u8], crop: Option<Crop>, request: &SearchRequest, items: Items) -> Result<SearchResults, SearchError> {
        let started = Instant::now();
        let query = self.prepare_query(bytes, crop, items)?;
        let mut timings = query.timings.clone();

        let t = Instant::now();
        let photo = self.encode_photos(vec![query])?.into_iter().next().context("the encoder returned no embedding")?;
        timings.encode_ms = ms(t);

        self.search_photo(&photo, request, timings, started)
    }

    /// Decode → crop → composite on white → resize and normalise: the shopper's photo as the
    /// model's input tensor. CPU work that allocates; the bytes are only borrowed, nothing is
    /// written anywhere.
    pub fn prepare_query(&self, bytes: &[u8], crop: Option<Crop>, items: Items) -> Result<PreparedQuery, SearchError> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let input = &self.encoder.spec().input;
        let image = preprocess::decode_reduced(bytes, &self.limits, preprocess::needed_side(input, crop))?;
        timings.decode_ms = ms(t);

        let t = Instant::now();
        let pixels = preprocess::input_pixels(&image, crop, input);
        let tensor = pixels.tensor(input);
        let localise_in = crop.is_none().then(|| (image.width(), image.height()));
        let foreground = self.foreground_head()?;
        let tiles = if crop.is_none() && foreground.is_some() { localise::tile_inputs(&image, input) } else { Vec::new() };
        // A tilted photo may also be searched straightened ([`SearchEngine::encode_photos`]).
        let tilted = crop.is_none().then(|| straighten::Tilted::of(&image, input)).flatten();
        timings.preprocess_ms = ms(t);
        let photo = (crop.is_none() && items == Items::All).then_some(image);
        Ok(PreparedQuery { tensor, pixels, localise_in, tiles, foreground, photo, tilted, timings })
    }

    /// Runs the encoder on prepared queries and finds the products in each photo, in order;
    /// then encodes, in one more batch, each tilted photo straightened whose view as taken
    /// found nothing very similar ([`straighten::worth_straightening`]) and, for queries that
    /// kept their photo (`Items::All`), each product found on its own.
    pub fn encode_photos(&self, queries: Vec<PreparedQuery>) -> Result<Vec<EncodedPhoto>, SearchError> {
        // One batch: every photo, then every photo's tiles.
        let count = queries.len();
        let mut tensors = Vec::with_capacity(count);
        let mut rest = Vec::with_capacity(count);
        let mut tile_crops: Vec<Vec<Crop>> = Vec::with_capacity(count);
        let mut tile_tensors = Vec::new();
        let mut tilted = Vec::new();
        for (q, query) in queries.into_iter().enumerate() {
            tensors.push(query.tensor);
            let (crops, inputs): (Vec<Crop>, Vec<Vec<f32>>) = query.tiles.into_iter().unzip();
            tile_crops.push(crops);
            tile_tensors.extend(inputs);
            if let Some(photo) = query.tilted {
                tilted.push((q, photo));
            }
            rest.push((query.localise_in, query.photo, query.pixels, query.foreground));
        }
        let tile_count = tile_tensors.len();
        let expected = tensors.len() + tile_count;
        tensors.extend(tile_tensors);
        let mut encoded = self.encoder.encode_queries(&tensors)?;
        if encoded.len() != expected {
            return Err(SearchError::Internal(anyhow::anyhow!("the encoder returned {} embeddings for {} images", encoded.len(), expected)));
        }
        drop(tensors);
        let mut tile_grids = encoded.split_off(count).into_iter();
        let (mut found, photos): (Vec<EncodedPhoto>, Vec<Option<image::DynamicImage>>) = encoded
            .into_iter()
            .zip(rest)
            .zip(tile_crops)
            .map(|((embedding, (localise_in, photo, pixels, foreground)), crops)| {
                let tiles: Vec<(Crop, crate::encoder::GridFeatures)> = crops.into_iter().zip(tile_grids.by_ref()).filter_map(|(crop, tile)| Some((crop, tile.grid?))).collect();
                (self.find_products(embedding, &tiles, localise_in, &pixels, foreground.as_deref()), photo)
            })
            .unzip();

        // The second batch: straightened photos first, then the products found, each on its own.
        let input = &self.encoder.spec().input;
        let very_similar = if tilted.is_empty() { None } else { self.likeness_bands()?.map(|b| b.very_similar) };
        let mut crops = Vec::new();
        let mut straightened_of = Vec::new();
        for (q, photo) in tilted {
            let best = self.best_score(&mut Query::new(QueryVector::Photo(&found[q].whole.vector)))?;
            found[q].as_taken_best = Some(best);
            if straighten::worth_straightening(best, very_similar) {
                crops.push(photo.straightened_input(input));
                straightened_of.push(q);
            }
        }
        let mut owners = Vec::new();
        for (q, photo) in photos.iter().enumerate() {
            let Some(photo) = photo else { continue };
            for (i, item) in found[q].items.iter().enumerate() {
                crops.push(preprocess::prepare_image(photo, Some(item.crop), input));
                owners.push((q, i));
            }
        }
        if !crops.is_empty() {
            let mut vectors = self.encoder.encode(&crops)?;
            if vectors.len() != crops.len() {
                return Err(SearchError::Internal(anyhow::anyhow!("the encoder returned {} embeddings for {} images", vectors.len(), crops.len())));
            }
            let items = vectors.split_off(straightened_of.len());
            for (q, view) in straightened_of.into_iter().zip(vectors) {
                found[q].straightened = Some(view);
            }
            for ((q, i), embedding) in owners.into_iter().zip(items) {
                found[q].items[i].vector = Some(embedding.vector);
            }
        }
        Ok(found)
    }

    /// The products on a query's feature map, as boxes on the photo, and the photo's colour
    /// (its main product's, where one was found).
    fn find_products(
        &self,
        query: QueryEmbedding,
        tiles: &[(Crop, crate::encoder::GridFeatures)],
        photo: Option<(u32, u32)>,
        pixels: &preprocess::InputPixels,
        foreground: Option<&ForegroundHead>,
    ) -> EncodedPhoto {
        let (Some(grid), Some((width, height))) = (&query.grid, photo) else {
            let colour = colour::of_query(pixels, None, None);
            return EncodedPhoto { whole: query.embedding, straightened: None, as_taken_best: None, colour, items: Vec::new() };
        };
        let fit = self.encoder.spec().input.fit;
        let found = match foreground {
            Some(head) if !tiles.is_empty() => localise::find_items_tiled(grid, tiles, head, width, height, fit),
            head => find_items(grid, head),
        };
        // Where the learned head sees product: the colour is read there (a floor's colours are
        // discounted wherever they show).
        let map = found.foreground_map();
        let foreground = map.as_ref().map(|at| at as colour::Foreground<'_>);
        let colour = colour::of_query(pixels, found.main().map(|main| main.bounds), foreground);
        let mut items: Vec<FoundItem> = Vec::new();
        for item in found.products() {
            // Items wholly on the padding around a photo are not in the photo.
            let Some(on_photo) = preprocess::input_box_to_crop(item.bounds, 0.0, width, height, fit) else { continue };
            let detection = Detection { bounds: [on_photo.x, on_photo.y, on_photo.width, on_photo.height], score: item.score };
            // Searched with a margin around its box: what `eval --scenes` measures.
            let colour = colour::of_query(pixels, Some(item.bounds), foreground);
            items.push(FoundItem { detection, crop: on_photo.grown(localise::ITEM_CROP_MARGIN), vector: None, colour });
        }
        EncodedPhoto { whole: query.embedding, straightened: None, as_taken_best: None, colour, items }
    }

    /// What a search for the photo looks for: the whole photo, as taken or straightened (when
    /// it looked tilted), whichever view's best match in the catalog scores higher
    /// ([`straighten::pick_view`]).
    ///
    /// Not its main item: pooled over the item or cropped to it, the query found fewer
    /// products of the right kind on clean and on shopper-style photos of one product, and
    /// the very product less often (docs/localisation-study.md). The items found are offered
    /// beside the results instead (`detections`, `Items::All`), for the shopper to choose.
    pub fn query_vector<'a>(&self, photo: &'a EncodedPhoto) -> Result<&'a [f32], SearchError> {
        Ok(self.chosen_view(photo)?.0)
    }

    /// [`SearchEngine::query_vector`], and the query that searches for it.
    fn chosen_view<'a>(&self, photo: &'a EncodedPhoto) -> Result<(&'a [f32], Query<'a>), SearchError> {
        let as_taken = photo.whole.vector.as_slice();
        let mut as_taken_query = Query::new(QueryVector::Photo(as_taken));
        let Some(straightened) = &photo.straightened else { return Ok((as_taken, as_taken_query)) };
        let straight = straightened.vector.as_slice();
        let mut straight_query = Query::new(QueryVector::Photo(straight));
        // (Scored when the photo was encoded: if `tune` changed the space since, in the old one;
        // it only chooses between two views of one photo.)
        let as_taken_best = match photo.as_taken_best {
            Some(best) => best,
            None => self.best_score(&mut as_taken_query)?,
        };
        Ok(match straighten::pick_view(&[as_taken_best, self.best_score(&mut straight_query)?]) {
            0 => (as_taken, as_taken_query),
            _ => (straight, straight_query),
        })
    }

    /// The score of the product nearest `query`; minus infinity in an empty catalog.
    fn best_score(&self, query: &mut Query<'_>) -> Result<f32, SearchError> {
        let index = self.read_index()?;
        let vector = query.in_space(&index.space)?;
        Ok(index.search(vector, 1, &Filter::default(), None)?.first().map_or(f32::NEG_INFINITY, |h| h.score))
    }

    /// The last two steps of a photo search: nearest neighbours of the photo (and of each item
    /// encoded on its own, as `Items::All` asked [`SearchEngine::prepare_query`] to), then product
    /// metadata. `timings` carries the earlier stages' times; `started` is when the search began,
    /// for `total_ms`.
    pub fn search_photo(&self, photo: &EncodedPhoto, request: &SearchRequest, timings: Timings, started: Instant) -> Result<SearchResults, SearchError> {
        let query_colour = photo.colour.map(|c| c.descriptor);
        let (_, query) = self.chosen_view(photo)?;
        let mut results = self.search_in_space(query, query_colour.as_ref(), request)?;
        results.query_colour = photo.colour;
        for item in &photo.items {
            let Some(vector) = &item.vector else { continue };
            // A filter no product meets finds nothing for any item either: not searched again.
            if results.why_nothing_matches.is_some() {
                results.items.push(ItemResults { detection: item.detection, query_colour: item.colour, hits: Vec::new() });
                continue;
            }
            // Each item by its own colour: in a red top and blue jeans, the jeans' look-alikes
            // are blue.
            let item_colour = item.colour.map(|c| c.descriptor);
            let found = self.search_vector_with_colour(vector, item_colour.as_ref(), request)?;
            results.timings.search_ms += found.timings.search_ms;
            results.timings.metadata_ms += found.timings.metadata_ms;
            results.items.push(ItemResults { detection: item.detection, query_colour: item.colour, hits: found.hits });
        }
        results.detections = photo.detections();
        results.timings = Timings { search_ms: results.timings.search_ms, metadata_ms: results.timings.metadata_ms, total_ms: ms(started), ..timings };
        Ok(results)
    }
}
