//! The admin API of offline profiles, the data model and test data (seed).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use fieldsync_protocol::profile::OfflineProfile;
use fieldsync_protocol::protocol::codes;
use serde::Serialize;

use super::auth::authenticate_admin;
use super::request::{blocking, path, read_json};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::seed::{SeedSpec, generate};

#[derive(Debug, Serialize)]
pub struct PublishedProfile {
    version: i64,
    profile: OfflineProfile,
}

/// `GET /v1/admin/profiles`.
pub async fn list_profiles(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<PublishedProfile>>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let all = blocking(move || db.profiles()).await?;
    Ok(Json(
        all.into_iter()
            .map(|(profile, version)| PublishedProfile { version, profile })
            .collect(),
    ))
}

/// `GET /v1/admin/profiles/{name}`.
pub async fn get_profile(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<PublishedProfile>> {
    let name = path(segments)?;
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let (profile, version) = blocking(move || db.profile(&name))
        .await?
        .ok_or_else(|| ApiError::not_found("no such profile"))?;
    Ok(Json(PublishedProfile { version, profile }))
}

/// `PUT /v1/admin/profiles/{name}`: validates and publishes a profile.
pub async fn put_profile(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    segments: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Json<PublishedProfile>> {
    let name = path(segments)?;
    authenticate_admin(&app, &headers).await?;
    let profile: OfflineProfile = read_json(&app, &headers, body).await?;
    if profile.name != name {
        return Err(ApiError::bad_request(
            codes::INVALID_PROFILE,
            "the profile's name differs from the URL",
        ));
    }
    let db = app.db.clone();
    let p = profile.clone();
    let version = blocking(move || db.put_profile(&p)).await?;
    Ok(Json(PublishedProfile { version, profile }))
}

/// `GET /v1/admin/model`: the data model in force (the one profiles may
/// use), with its version.
pub async fn model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<crate::model::ModelVersion>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    let in_force = blocking(move || db.model()).await?;
    Ok(Json((*in_force).clone()))
}

/// `PUT /v1/admin/model`: publishes a new version of the data model; the
/// server migrates its tables at once and devices follow at their next
/// sync. A model that cannot follow the one in force is refused with
/// `invalid_model`, naming the problem.
pub async fn publish_model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<crate::model::Published>> {
    authenticate_admin(&app, &headers).await?;
    let mut raw: serde_json::Value = read_json(&app, &headers, body).await?;
    // What `GET /v1/admin/model` answers may come back edited: its version
    // fields are the server's to set.
    if let Some(fields) = raw.as_object_mut() {
        for key in ["version", "published_at", "source", "changes"] {
            fields.remove(key);
        }
    }
    let model = fieldsync_protocol::profile::DataModel::parse(&raw.to_string())?;
    let db = app.db.clone();
    let published = blocking(move || db.publish_model(&model, crate::model::SOURCE_ADMIN)).await?;
    Ok(Json(published))
}

/// `GET /v1/admin/model/versions`: every version of the data model,
/// newest first.
pub async fn model_versions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::model::ModelVersion>>> {
    authenticate_admin(&app, &headers).await?;
    let db = app.db.clone();
    Ok(Json(blocking(move || db.model_versions()).await?))
}

#[derive(Debug, Serialize)]
pub struct SeedResult {
    rows: BTreeMap<String, usize>,
}

/// Sample data is the Field Service model's: refused, naming what is
/// missing, when the model in force lacks one of its tables or columns.
pub(super) fn check_seedable(model: &fieldsync_protocol::profile::DataModel) -> ApiResult<()> {
    for t in crate::field_service_model().tables {
        let Some(have) = model.table(&t.name) else {
            return Err(ApiError::bad_request(
                codes::BAD_REQUEST,
                format!(
                    "sample data is for the Field Service model, and the data model in force has no table '{}'",
                    t.name
                ),
            ));
        };
        for c in &t.columns {
            if have.column(&c.name).map(|h| h.kind) != Some(c.kind) {
                return Err(ApiError::bad_request(
                    codes::BAD_REQUEST,
                    format!(
                        "sample data is for the Field Service model, and the data model in force has no {:?} column '{}.{}'",
                        c.kind, t.name, c.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `POST /v1/admin/seed`: writes generated field-service data (demo, tests).
pub async fn seed(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<SeedResult>> {
    authenticate_admin(&app, &headers).await?;
    let spec: SeedSpec = read_json(&app, &headers, body).await?;
    if spec
        .now_ms
        .is_some_and(|ms| !(0..=MAX_SEED_NOW_MS).contains(&ms))
    {
        return Err(ApiError::bad_request(
            codes::BAD_REQUEST,
            "now_ms is a time from 1970 to 9999 in milliseconds",
        ));
    }
    if spec.work_orders > 2_000_000 {
        return Err(ApiError::bad_request(
            codes::BAD_REQUEST,
            "at most 2,000,000 work orders",
        ));
    }
    let db = app.db.clone();
    let rows = blocking(move || {
        check_seedable(&db.model()?.model)?;
        let mut counts = BTreeMap::new();
        for (table, rows) in generate(&spec, db.now_ms()) {
            for chunk in rows.chunks(10_000) {
                db.bulk_insert(&table, chunk)?;
            }
            counts.insert(table, rows.len());
        }
        Ok::<_, ApiError>(counts)
    })
    .await?;
    Ok(Json(SeedResult { rows }))
}

/// The latest `now_ms` a seed request may name (the last millisecond of
/// the year 9999): dates are generated around it.
pub(super) const MAX_SEED_NOW_MS: i64 = 253_402_300_799_999;
