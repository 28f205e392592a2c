//! Active health (placeholder while building).
