//! HTTPS to real servers (feature `tls`).
