//! Bakes the Slurm release this plugin is built for into `plugin_version`.
//!
//! Slurm only loads a SPANK plugin whose major.minor equals its own, and the
//! constant re-exported by slurm-spank comes from the bindings it bundles
//! (a newer Slurm), not from the headers on this machine. So the number is
//! read from the installed `slurm_version.h` and handed to `SPANK_PLUGIN!`
//! as a generated constant.
//!
//! What differs between releases, and the checks on a target's headers, live
//! in src/release.rs, which this script compiles as a module of its own.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::exit;

#[path = "src/release.rs"]
mod release;

use release::{
    check_bundled_items, check_spank_header, is_tested, parse_version_number, release_text,
    PREPEND_TASK_ARGV_SINCE, TESTED,
};

fn main() {
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    println!("cargo:rerun-if-changed=src/release.rs");
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
    let release = release_text(number);
    let spank_text = fs::read_to_string(&spank_header)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", spank_header.display())));
    if let Err(why) = check_spank_header(&spank_text, number) {
        fail(&format!(
            "{} does not match {} (Slurm {release}): {why}. The headers are mismatched: use one \
             release's complete include directory",
            spank_header.display(),
            header.display()
        ));
    }
    println!("cargo:rerun-if-env-changed=SKIP_SLURM_BINDINGS");
    println!("cargo:rerun-if-env-changed=BINDGEN_EXTRA_CLANG_ARGS");
    if env::var_os("SKIP_SLURM_BINDINGS").is_none() {
        // slurm-spank then runs bindgen on <slurm/spank.h> from clang's include path.
        if number < PREPEND_TASK_ARGV_SINCE {
            fail(&format!(
                "slurm-spank's bindgen route needs a spank.h with spank_prepend_task_argv (Slurm 23.11 or \
                 later), and {} is Slurm {release}: set SKIP_SLURM_BINDINGS=1 (as .cargo/config.toml does)",
                header.display()
            ));
        }
        let clang_args = env::var("BINDGEN_EXTRA_CLANG_ARGS").unwrap_or_default();
        if include_dir != Path::new("/usr/include") && !clang_args.contains(&*include_dir.to_string_lossy()) {
            fail(&format!(
                "without SKIP_SLURM_BINDINGS, bindgen would read /usr/include's spank.h, not {}'s: set \
                 BINDGEN_EXTRA_CLANG_ARGS=\"-I {}\"",
                include_dir.display(),
                include_dir.display()
            ));
        }
    } else {
        if let Err(why) = check_bundled_items(&spank_text) {
            fail(&format!(
                "{} (Slurm {release}) differs from slurm-spank's bundled bindings: {why}. Build without \
                 SKIP_SLURM_BINDINGS (bindgen on these headers: BINDGEN_EXTRA_CLANG_ARGS=\"-I {}\", \
                 see docs/admin-guide.md)",
                spank_header.display(),
                include_dir.display()
            ));
        }
    }

    if !is_tested(number) {
        let tested: Vec<&str> = TESTED.iter().map(|(_, name)| *name).collect();
        println!(
            "cargo:warning=Slurm {release} is not among the releases tested in the lab ({}); its headers \
             passed every check, but run vscode-shim doctor on the cluster before offering it to users",
            tested.join(", ")
        );
    }

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

fn fail(message: &str) -> ! {
    eprintln!("error: spank-vscode build: {message}");
    exit(1);
}
