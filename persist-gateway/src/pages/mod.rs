//! The configuration pages: one self-contained page (HTML, CSS and script
//! inline, no external assets, so it works on an air-gapped plant network)
//! at `GET /pages`, built in the browser from the REST API's own OpenAPI
//! document, so every record type of every module gets them for free.
//!
//! Per record type a list (paged, sortable by any column, filtered by
//! column, live: it follows `/api/v1/events`) and a create / edit form:
//! labelled inputs from the metadata (numbers with their bounds, enums and
//! references as selects, a reference's rows named by their descriptive
//! field, date-times in local time with the zone shown, multiline text,
//! secret fields write-only), checked in the browser and then by the
//! server, whose messages appear beside the field or the form. Saving sends
//! the row version read (`If-Match`), so a record someone else changed
//! meanwhile is not overwritten: the page says so. Deleting first shows
//! what cascades with the record or refuses the delete. On a node that
//! refuses writes (the backup) everything is read-only, with a link to the
//! master.
//!
//! The page asks for an API token once and keeps it for the browser tab
//! (`sessionStorage`); every request carries it as the API demands.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The page.
const APP: &str = include_str!("app.html");

/// The pages' route, to merge into the status listener's router.
pub fn router() -> Router {
    Router::new().route("/pages", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing but this page's own inline code, and only to this node.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; form-action 'none'; base-uri 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        APP,
    )
}
