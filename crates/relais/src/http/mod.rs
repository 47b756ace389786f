//! The HTTP edge shared by every domain: the accept loop ([`serve`]:
//! HTTP/1.1, TLS, timeouts, connection cap), request extractors
//! ([`params`]), cookies ([`cookies`]), page helpers ([`page`]) and the
//! failure limits shared by the nodes ([`limits`]: throttles, client
//! address).

pub mod cookies;
pub mod limits;
pub mod page;
pub mod params;
pub mod serve;
