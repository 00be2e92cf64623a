//! The live web dashboard at `/`: a page shell, one script and one style
//! sheet, built into the binary, that read everything they show from the
//! API under `/v1` with the bearer token the user pastes (kept in the
//! tab's `sessionStorage`). Served with the API, on the same address.
//!
//! Everything a saga carries (its input, results, errors, correlation id,
//! operators' reasons) is written by whoever starts or handles it, so the
//! script puts it on the page as text nodes only, never as markup; the
//! Content-Security-Policy ([`CSP`]) is the second wall: no inline script,
//! nothing loaded from another origin, the page not framed.
//!
//! The files are served with a strong `ETag` (a digest of their bytes, so
//! one per build) and `Cache-Control: no-cache`: a browser keeps them and
//! asks each time whether they changed, so that a new daemon's dashboard
//! is never mixed with an old script.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// What the page may load and run: its own script, style sheet and API
/// calls, nothing inline, nothing from elsewhere, in no frame.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// One file of the dashboard, with its validator.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: &'static str,
}

/// The routes of the dashboard: `/`, `/assets/app.js`, `/assets/style.css`.
pub fn routes() -> Router {
    static INDEX: std::sync::LazyLock<Asset> =
        std::sync::LazyLock::new(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    static APP: std::sync::LazyLock<Asset> =
        std::sync::LazyLock::new(|| asset(APP_JS, "text/javascript; charset=utf-8"));
    static STYLE: std::sync::LazyLock<Asset> =
        std::sync::LazyLock::new(|| asset(STYLE_CSS, "text/css; charset=utf-8"));
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route(
            "/assets/app.js",
            get(|headers: HeaderMap| async move { serve(&APP, &headers) }),
        )
        .route(
            "/assets/style.css",
            get(|headers: HeaderMap| async move { serve(&STYLE, &headers) }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Asset {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Asset {
        body,
        content_type,
        etag: Box::leak(format!("\"{hex}\"").into_boxed_str()),
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == asset.etag || t == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_TYPE, asset.content_type);
    set(headers, header::ETAG, asset.etag);
    set(headers, header::CACHE_CONTROL, "no-cache");
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_script_and_style_from_its_own_origin_only() {
        // No inline script or style: the policy would block them.
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("<style"));
        let handler = INDEX_HTML.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "an inline event handler: on{handler:?}");
        assert!(INDEX_HTML.contains(r#"<script src="/assets/app.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/assets/style.css">"#));
    }

    #[test]
    fn the_script_never_parses_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "Function(",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }

    #[test]
    fn an_unchanged_file_is_not_sent_again() {
        let app = asset(APP_JS, "text/javascript");
        let mut headers = HeaderMap::new();
        let first = serve(&app, &headers);
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        headers.insert(header::IF_NONE_MATCH, etag);
        let again = serve(&app, &headers);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(again.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}
