//! Page rendering helpers shared by every domain.

use crate::web::Lang;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

pub fn html_response(html: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

pub fn lang_from(headers: &HeaderMap, ui_locales: Option<&str>) -> Lang {
    let al = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    Lang::negotiate(ui_locales, al)
}
