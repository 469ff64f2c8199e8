//! `make bench`: the load generator (HTTP/1.1 over TLS with keep-alive, one connection per
//! worker, the same code and TLS settings for the webhook and the ceiling server it is
//! compared with), realistic AdmissionReviews, and the driver's work against the real API
//! server.

pub mod cluster;
pub mod load;
pub mod review;
pub mod tls;
