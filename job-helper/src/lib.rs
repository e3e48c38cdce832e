//! The sans-IO stream rewriters of `vscode-job-helper`, as a library so that
//! fuzz targets and tests outside the binary can drive them. The binary
//! (`src/main.rs`) does the IO around them.

pub mod bind_rewrite;
pub mod listening;
