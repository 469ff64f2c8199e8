//! The load generator of `make bench`: HTTP/1.1 over TLS with keep-alive, one connection per
//! worker, the same code and TLS settings for the webhook and the ceiling server it is
//! compared with.

pub mod load;
pub mod tls;
