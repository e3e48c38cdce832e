//! Root-side `/proc` reading and pidfd signalling (work in progress).
