//! Artifacts: the reports, tables and links runs left, listed newest first
//! and read by key (every version) or by id.

use super::wire::{ArtifactList, ArtifactVersions};
use super::{ApiError, ApiResult, ApiState};
use crate::model::artifact::Artifact;
use crate::store::ObjectKind;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArtifactQuery {
    key: Option<String>,
    flow_run: Option<String>,
    limit: Option<usize>,
}

/// Every artifact, newest first. Blocks.
fn all_artifacts(state: &ApiState) -> ApiResult<Vec<Artifact>> {
    let mut artifacts: Vec<Artifact> = state
        .store
        .objects(ObjectKind::Artifact)?
        .iter()
        .map(|row| serde_json::from_str(&row.body).map_err(ApiError::internal))
        .collect::<ApiResult<_>>()?;
    // Ids are UUIDv7: their order is the order they were made in.
    artifacts.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(artifacts)
}

/// Artifacts, newest first; `key` keeps one key's versions, `flow_run` one run's.
#[utoipa::path(get, path = "/api/artifacts", tag = "artifacts",
    params(("key" = Option<String>, Query), ("flow_run" = Option<String>, Query, description = "a flow run id"),
        ("limit" = Option<usize>, Query, description = "at most this many (default 200)")),
    responses((status = 200, body = super::wire::ArtifactList)))]
pub(super) async fn list_artifacts(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<ArtifactQuery>,
) -> ApiResult<Json<ArtifactList>> {
    state
        .blocking(move |state| {
            let artifacts: Vec<Artifact> = all_artifacts(state)?
                .into_iter()
                .filter(|a| q.key.is_none() || a.key == q.key)
                .filter(|a| q.flow_run.as_deref().is_none_or(|run| a.flow_run == run))
                .take(q.limit.unwrap_or(200))
                .collect();
            Ok(Json(ArtifactList { artifacts }))
        })
        .await
}

/// The newest version of an artifact key (or the artifact with this id),
/// with every version of its key, newest first.
#[utoipa::path(get, path = "/api/artifacts/{key}", tag = "artifacts",
    params(("key" = String, Path, description = "an artifact key, or an artifact's id")),
    responses((status = 200, body = super::wire::ArtifactVersions), (status = 404, body = super::ErrorReply)))]
pub(super) async fn get_artifact(
    State(state): State<Arc<ApiState>>,
    Path(key): Path<String>,
) -> ApiResult<Json<ArtifactVersions>> {
    state
        .blocking(move |state| {
            let all = all_artifacts(state)?;
            let versions: Vec<Artifact> = match all.iter().find(|a| a.id == key) {
                Some(one) => vec![one.clone()],
                None => all
                    .into_iter()
                    .filter(|a| a.key.as_deref() == Some(key.as_str()))
                    .collect(),
            };
            let Some(latest) = versions.first().cloned() else {
                return Err(ApiError::not_found(format!(
                    "no artifact with key or id '{key}'; see `host artifact ls`"
                )));
            };
            Ok(Json(ArtifactVersions {
                artifact: latest,
                versions,
            }))
        })
        .await
}
