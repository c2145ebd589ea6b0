//! Removals made through servers without the catalog, recorded beside the description.
//!
//! `sync` makes the collection agree with the catalog, so a catalog product that a server
//! without the catalog removed would be sent back by the next one. Such a server therefore
//! records the removal in the side collection (`NAME_lookalike`, beside the description's
//! chunks, one point per product id); the next `sync` removes those products from the catalog
//! too and forgets the records. Adding the product again through the API, on any server,
//! forgets its record: the latest write wins.

use std::collections::HashMap;

use anyhow::Result;
use qdrant_client::qdrant::{
    Condition, DeletePointsBuilder, Filter as QFilter, PointId, PointStruct, PointsIdsList, UpsertPointsBuilder, Value as QValue, WriteOrdering, WriteOrderingType,
};

use super::{is_not_found, point_id, IfMissing, QdrantIndex};

/// The payload field of a recorded removal: the product's id. Description chunks have none.
pub(super) const REMOVED_FIELD: &str = "removed";

impl QdrantIndex {
    /// Records that product `id` was removed through a server without the catalog, so that the
    /// next `sync` removes it from the catalog instead of sending it back. Written before the
    /// point is deleted: a removal that fails half-way can be made again (the point is still
    /// there to find).
    pub(super) fn record_removal(&self, id: &str) -> Result<()> {
        let payload = HashMap::from([(REMOVED_FIELD.to_string(), QValue::from(id.to_string()))]);
        let point = PointStruct::new(point_id(id), vec![1.0], payload);
        let request = UpsertPointsBuilder::new(self.description_collection(), vec![point]).wait(true).ordering(WriteOrdering { r#type: WriteOrderingType::Strong as i32 });
        self.retry("recording a removal", || self.client.upsert_points(request.clone()))?;
        Ok(())
    }

    /// Forgets the recorded removals of `ids`: added again, or applied to the catalog.
    pub fn forget_removals(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let points: Vec<PointId> = ids.iter().map(|id| PointId::from(point_id(id))).collect();
        let request = DeletePointsBuilder::new(self.description_collection())
            .points(PointsIdsList { ids: points })
            .wait(true)
            .ordering(WriteOrdering { r#type: WriteOrderingType::Strong as i32 });
        // No side collection (a collection never described): no record to forget.
        self.retry("forgetting recorded removals", || async {
            match self.client.delete_points(request.clone()).await {
                Err(e) if is_not_found(&e) => Ok(()),
                other => other.map(|_| ()),
            }
        })
    }

    /// The ids of products removed through servers without the catalog whose removals no
    /// `sync` has applied to the catalog yet.
    pub fn recorded_removals(&self) -> Result<Vec<String>> {
        let filter = QFilter::must_not([Condition::is_empty(REMOVED_FIELD)]);
        // No side collection (a collection never described): nothing recorded.
        self.strings_of("reading recorded removals", self.description_collection(), filter, REMOVED_FIELD, IfMissing::Empty)
    }
}
