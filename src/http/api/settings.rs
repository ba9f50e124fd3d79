//! `GET /v1/dashboard/settings`: how the browser page subscribes, from the
//! `dashboard.page_*` configuration. No token: it is configuration the page itself
//! shows, read before the page has connected (or been given a token).

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::App;

/// `GET /v1/dashboard/settings` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PageSettingsBody {
    /// `Subscribe.max_delay_ms` of the page's (default) batched subscriptions.
    pub max_delay_ms: u32,
    /// `Subscribe.conflate_ms` while it shows more than `conflate_above` series.
    pub conflate_ms: u32,
    pub conflate_above: usize,
}

/// The dashboard page's subscription settings.
///
/// How the browser page subscribes: batched, and conflated while it shows many
/// series. No token.
#[utoipa::path(
    get,
    path = "/v1/dashboard/settings",
    operation_id = "dashboard_settings",
    tag = "dashboard",
    responses(
        (status = 200, description = "The settings (sent with `Cache-Control: no-cache`).",
            body = PageSettingsBody),
    )
)]
pub async fn page_settings(State(app): State<Arc<App>>) -> Response {
    let d = &app.config.dashboard;
    // validate() keeps both within what a Subscribe accepts (at most 60,000 ms).
    let ms = |t: Duration| u32::try_from(t.as_millis()).unwrap_or(u32::MAX);
    (
        // A hub restarted with other settings must not be hidden by a cached copy.
        [(header::CACHE_CONTROL, "no-cache")],
        Json(PageSettingsBody {
            max_delay_ms: ms(d.page_max_delay),
            conflate_ms: ms(d.page_conflate_interval),
            conflate_above: d.page_conflate_above,
        }),
    )
        .into_response()
}
