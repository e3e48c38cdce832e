//! User-side helpers (work in progress).
