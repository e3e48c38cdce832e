//! Bakes the Slurm release this plugin is built for into `plugin_version`.
//!
//! Slurm only loads a SPANK plugin whose major.minor equals its own, and the
//! constant re-exported by slurm-spank comes from the bindings it bundles
//! (a newer Slurm), not from the headers on this machine. So the number is
//! read from the installed `slurm_version.h` and handed to `SPANK_PLUGIN!`
//! as a generated constant.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::exit;

fn main() {
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    let include_dir =
        env::var_os("SLURM_INCLUDE_DIR").map(PathBuf::from).unwrap_or_else(|| "/usr/include".into());
    // Accept both the directory holding `slurm/` and the `slurm/` directory itself.
    let candidates = [include_dir.join("slurm/slurm_version.h"), include_dir.join("slurm_version.h")];
    let header = candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        for path in &candidates {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        fail(&format!(
            "cannot find slurm_version.h (looked at {} and {}). Install the Slurm development headers \
             (Debian: libslurm-dev) or set SLURM_INCLUDE_DIR to the directory that contains slurm/slurm_version.h.",
            candidates[0].display(),
            candidates[1].display()
        ))
    });
    println!("cargo:rerun-if-changed={}", header.display());
    // Headers of one release come together: slurm_version.h without spank.h
    // next to it is a partial copy or a mix of two installations.
    let spank_header = header.with_file_name("spank.h");
    println!("cargo:rerun-if-changed={}", spank_header.display());
    if !spank_header.is_file() {
        fail(&format!(
            "found {} but no spank.h next to it: the Slurm headers there are incomplete or mismatched. \
             Point SLURM_INCLUDE_DIR at one release's complete include directory (with slurm/slurm_version.h \
             and slurm/spank.h), e.g. from that release's libslurm-dev or slurm-devel package.",
            header.display()
        ));
    }

    let text = fs::read_to_string(&header)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", header.display())));
    let number = parse_version_number(&text).unwrap_or_else(|| {
        fail(&format!("{} has no usable `#define SLURM_VERSION_NUMBER 0x......` line", header.display()))
    });
    let (major, minor, micro) = (number >> 16, (number >> 8) & 0xff, number & 0xff);

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| fail("cargo did not set OUT_DIR")));
    let generated = format!(
        "/// `SLURM_VERSION_NUMBER` from `{header}`: Slurm {major}.{minor:02}.{micro}.\n\
         pub const SLURM_VERSION_NUMBER: std::os::raw::c_uint = {number:#08x};\n\
         /// The same release as text, for messages.\n\
         pub const SLURM_VERSION_TEXT: &str = \"{major}.{minor:02}.{micro}\";\n",
        header = header.display(),
    );
    let target = out_dir.join("slurm_version.rs");
    fs::write(&target, generated)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", target.display())));
}

/// Finds `#define SLURM_VERSION_NUMBER <hex or decimal>`.
fn parse_version_number(header: &str) -> Option<u32> {
    header.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "#define" || words.next()? != "SLURM_VERSION_NUMBER" {
            return None;
        }
        let value = words.next()?;
        let number = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => value.parse().ok()?,
        };
        // Major 0 or anything above 0xffffff is not a Slurm release number.
        (number >> 16 != 0 && number <= 0xff_ffff).then_some(number)
    })
}

fn fail(message: &str) -> ! {
    eprintln!("error: spank-vscode build: {message}");
    exit(1);
}
