//! The data model in force, cached per version, and publishing a new one.

use std::sync::Arc;

use fieldsync_protocol::profile::DataModel;

use crate::schema;
use crate::store_error::StoreResult;

use super::backend::{Backend, Db};

impl Db {
    /// The data model in force. A version another instance published is
    /// read on the first call after it (one small read of the newest
    /// version's number per call).
    pub fn model(&self) -> StoreResult<crate::model::Shared> {
        let newest = self.read(crate::model::latest_number)?;
        self.model_at(newest)
    }

    /// The model in force, knowing the newest version is `newest`: the
    /// cached one unless another instance published a newer one.
    pub(super) fn model_at(&self, newest: i64) -> StoreResult<crate::model::Shared> {
        let cached = self.cached_model();
        if newest <= cached.version {
            return Ok(cached);
        }
        match self.read(|c| crate::model::version(c, newest))? {
            Some(v) => {
                let v = Arc::new(v);
                let mut slot = self.model.write().unwrap_or_else(|p| p.into_inner());
                if slot.version < v.version {
                    *slot = v.clone();
                }
                Ok(slot.clone())
            }
            None => Ok(cached),
        }
    }

    /// The data model as this instance last read it.
    pub fn cached_model(&self) -> crate::model::Shared {
        self.model.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every version of the data model, newest first.
    pub fn model_versions(&self) -> StoreResult<Vec<crate::model::ModelVersion>> {
        self.read(crate::model::versions)
    }

    /// Publishes `model` as the next version (see [`crate::model`]): the
    /// data tables are migrated in the same transaction.
    pub fn publish_model(
        &self,
        model: &DataModel,
        source: &str,
    ) -> StoreResult<crate::model::Published> {
        let now = self.now_text();
        let published = self.write(|c| crate::model::publish_in(c, model, source, &now))?;
        if let Backend::Postgres(pool) = &self.backend {
            // After the commit, concurrently: the tables stay readable
            // and writable while their new indexes build.
            let mut client = pool.get()?;
            let built = schema::build_model_indexes_concurrently(&mut client, model);
            pool.put(client);
            built?;
        }
        self.model()?;
        Ok(published)
    }
}
