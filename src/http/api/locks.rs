//! Semantic locks: who holds each and who waits for it (see
//! [`crate::operator::locks`], whose bounds the listing keeps).

use super::problem::{Kind, Problem, Result};
use super::{query, Api, Reader};
use crate::operator::locks::{self as views, MAX_LOCKS_LISTED, MAX_SAGAS_LOOKED_AT};
use crate::protocol::locks::check_lock_name;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// `GET /v1/locks`: every lock that a saga not ended (or failed, keeping
/// its locks) holds or waits for, by name, with the holder and the
/// waiters in order; `complete` is false when a bound cut the search.
pub async fn list(State(api): State<Api>, _: Reader, uri: Uri) -> Result<Response> {
    let _: NoQuery = query(&uri)?;
    let mut conn = api.conn().await?;
    let listing = views::listing(&mut conn, api.settings())
        .await
        .map_err(|e| Problem::new(Kind::Unavailable, e))?;
    Ok(Json(json!({
        "locks": listing.locks,
        "looked_at": listing.looked_at,
        "complete": listing.complete,
        "max_sagas_looked_at": MAX_SAGAS_LOOKED_AT,
        "max_locks_listed": MAX_LOCKS_LISTED,
    }))
    .into_response())
}

/// `GET /v1/locks/{lock}`: one lock's holder (`null` when free) and
/// waiters. A name may hold `/`, as is or as `%2F`.
pub async fn one(
    State(api): State<Api>,
    _: Reader,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response> {
    let _: NoQuery = query(&uri)?;
    check_lock_name(&name).map_err(|e| Problem::new(Kind::BadRequest, e))?;
    let mut conn = api.conn().await?;
    let mut queues = views::queues(&mut conn, api.settings(), &[name])
        .await
        .map_err(|e| Problem::new(Kind::Unavailable, e))?;
    let queue = queues.pop().expect("one lock asked, one read");
    Ok(Json(queue).into_response())
}
