//! HTTP routes on the one listener: the dashboard (see [`assets`]), `/healthz`,
//! `/readyz`, `/metrics` (see [`status`]), the two WebSocket endpoints (see
//! [`upgrade`]), the REST API (see [`api`], [`revocations`]) and its OpenAPI
//! description at `/v1/openapi.json` (see [`openapi`]), generated from the same
//! handler list the router is built from.
//!
//! Every refusal is a plain-text body with a status that says what went wrong:
//! 400 malformed upgrade, 401 missing/invalid/expired token, 403 wrong role or
//! origin, 426 unsupported WebSocket version.

pub mod api;
pub mod assets;
pub mod openapi;
pub mod revocations;
pub mod status;
pub mod upgrade;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{app::App, shutdown::Shutdown};

/// Request extension the listener attaches to every request of a connection, and
/// carried into the session a WebSocket upgrade starts.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The session's shutdown signal (it keeps the listener's drain waiting while
    /// held).
    pub shutdown: Shutdown,
    /// Whatever holds the connection's place under the listener's caps; released
    /// when the connection and any session upgraded from it are gone.
    _place: Arc<dyn Send + Sync>,
    /// The device a verified client certificate names (or why it names none).
    pub device_cert: Option<Arc<Result<crate::tls::device::DeviceCert, String>>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, shutdown: Shutdown, place: impl Send + Sync + 'static) -> Self {
        Self {
            peer,
            shutdown,
            _place: Arc::new(place),
            device_cert: None,
        }
    }
}

/// Routes served but deliberately not described in `/v1/openapi.json`, each as
/// (method, path, why). Every other route is described: `tests/openapi.rs` reads
/// every `.route("PATH", ...)` in `src/` and fails on a path not listed here (write
/// paths there as literals).
pub const UNDESCRIBED: &[(&str, &str, &str)] = &[(
    "GET",
    "/{*file}",
    "the dashboard's scripts, styles and images: the files of the page at `GET /` \
     (which is described), not an API; a catch-all no OpenAPI path template can express",
)];

/// The described routes and their description, built from one list of handlers:
/// `routes!` serves each handler at the method and path of its `#[utoipa::path]`
/// and adds that operation (and the schemas it names) to the document.
fn described() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(assets::index))
        .routes(routes!(status::healthz))
        .routes(routes!(status::readyz))
        .routes(routes!(status::metrics))
        .routes(routes!(upgrade::device))
        .routes(routes!(upgrade::dashboard))
        .routes(routes!(
            api::notifications::list,
            api::notifications::create
        ))
        .routes(routes!(api::notifications::status))
        .routes(routes!(api::devices::devices))
        .routes(routes!(api::devices::put_device))
        .routes(routes!(api::settings::page_settings))
        .routes(routes!(revocations::list, revocations::revoke))
        .routes(routes!(openapi::serve))
}

/// Every route of the listener: the described ones and [`UNDESCRIBED`].
pub fn router(app: Arc<App>) -> Router {
    let (described, _) = described().split_for_parts();
    described
        .route("/{*file}", get(assets::serve))
        .with_state(app)
}

/// The OpenAPI document of every described route (served at `/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    described().into_openapi()
}

/// Every route [`router`] serves, as (METHOD, path template), sorted: the described
/// ones, read from [`openapi`], and [`UNDESCRIBED`].
pub fn routes() -> Vec<(String, String)> {
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace", "query",
    ];
    let document = serde_json::to_value(openapi()).unwrap_or_default();
    let paths = document["paths"].as_object().cloned().unwrap_or_default();
    let mut out: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
        })
        .chain(
            UNDESCRIBED
                .iter()
                .map(|(method, path, _)| (method.to_string(), path.to_string())),
        )
        .collect();
    out.sort();
    out
}

/// A refusal: status plus a one-line explanation.
pub fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            // The message may echo a request path: never let it be sniffed as HTML.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

    fn document() -> Value {
        serde_json::to_value(openapi()).unwrap()
    }

    /// Every operation of the document, as (METHOD path, operation).
    fn operations(doc: &Value) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in METHODS {
                if let Some(op) = item.get(*m) {
                    out.push((format!("{} {path}", m.to_ascii_uppercase()), op.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_document_names_the_hub_and_its_version() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "telehub");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn every_operation_is_complete() {
        let doc = document();
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for (op_name, op) in operations(&doc) {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "{op_name}: operationId {id:?} twice"
            );
            assert!(op["summary"].is_string(), "{op_name}: no summary");
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{op_name}"
            );
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            for requirement in op["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{op_name}: no scheme {name}");
                }
            }
            let responses = op["responses"].as_object().unwrap();
            assert_eq!(secured, responses.contains_key("401"), "{op_name}: 401");
            assert_eq!(secured, responses.contains_key("403"), "{op_name}: 403");
            // Every refusal is a one-line text/plain body.
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = response["content"].as_object();
                    let types: Vec<_> = content.into_iter().flat_map(|c| c.keys()).collect();
                    // Health and readiness answer 503 with their JSON state.
                    let json = status == "503"
                        && matches!(op_name.as_str(), "GET /healthz" | "GET /readyz");
                    assert!(
                        json || types == ["text/plain"],
                        "{op_name} {status}: {types:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn routes_are_the_described_ones_and_the_listed_exclusions() {
        let routes = routes();
        let described = operations(&document()).len();
        assert_eq!(routes.len(), described + UNDESCRIBED.len());
        for (method, path, _) in UNDESCRIBED {
            assert!(routes.contains(&(method.to_string(), path.to_string())));
        }
        assert!(routes.contains(&("GET".into(), "/v1/openapi.json".into())));
    }
}
