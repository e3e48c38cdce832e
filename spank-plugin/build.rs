//! Bakes the Slurm release this plugin is built for into `plugin_version`.
//!
//! Slurm only loads a SPANK plugin whose major.minor equals its own, and the
//! constant re-exported by slurm-spank comes from the bindings it bundles
//! (a newer Slurm), not from the headers on this machine. So the number is
//! read from the installed `slurm_version.h` and handed to `SPANK_PLUGIN!`
//! as a generated constant.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
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
    let release = format!("{major}.{minor:02}");
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
        if number < SLURM_23_11 {
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

/// Slurm 23.11, the first release whose spank.h declares `spank_prepend_task_argv`.
const SLURM_23_11: u32 = 0x17_0b_00;

/// A spank.h must belong to the release its slurm_version.h names: a copy
/// from another release would compile and then fail at load or call time.
fn check_spank_header(spank: &str, number: u32) -> Result<(), String> {
    if !spank.contains("slurm_spank_init") || !spank.contains("enum spank_item") {
        return Err("it is not a SPANK header (no slurm_spank_init or enum spank_item)".to_owned());
    }
    if number >= SLURM_23_11 && !spank.contains("spank_prepend_task_argv") {
        return Err("it lacks spank_prepend_task_argv, which every spank.h since 23.11 declares".to_owned());
    }
    Ok(())
}

/// `enum spank_item` as slurm-spank 0.4.1 bundles it (from Slurm 23.11):
/// with SKIP_SLURM_BINDINGS the plugin passes these numbers to
/// `spank_get_item`, so the target's enum must begin with the same names in
/// the same order (releases may append items, never reorder them).
const BUNDLED_ITEMS: [&str; 32] = [
    "S_JOB_UID",
    "S_JOB_GID",
    "S_JOB_ID",
    "S_JOB_STEPID",
    "S_JOB_NNODES",
    "S_JOB_NODEID",
    "S_JOB_LOCAL_TASK_COUNT",
    "S_JOB_TOTAL_TASK_COUNT",
    "S_JOB_NCPUS",
    "S_JOB_ARGV",
    "S_JOB_ENV",
    "S_TASK_ID",
    "S_TASK_GLOBAL_ID",
    "S_TASK_EXIT_STATUS",
    "S_TASK_PID",
    "S_JOB_PID_TO_GLOBAL_ID",
    "S_JOB_PID_TO_LOCAL_ID",
    "S_JOB_LOCAL_TO_GLOBAL_ID",
    "S_JOB_GLOBAL_TO_LOCAL_ID",
    "S_JOB_SUPPLEMENTARY_GIDS",
    "S_SLURM_VERSION",
    "S_SLURM_VERSION_MAJOR",
    "S_SLURM_VERSION_MINOR",
    "S_SLURM_VERSION_MICRO",
    "S_STEP_CPUS_PER_TASK",
    "S_JOB_ALLOC_CORES",
    "S_JOB_ALLOC_MEM",
    "S_STEP_ALLOC_CORES",
    "S_STEP_ALLOC_MEM",
    "S_SLURM_RESTART_COUNT",
    "S_JOB_ARRAY_ID",
    "S_JOB_ARRAY_TASK_ID",
];

fn check_bundled_items(spank: &str) -> Result<(), String> {
    let items = spank_items(spank).ok_or("no `enum spank_item { ... }` in it")?;
    for (index, bundled) in BUNDLED_ITEMS.iter().enumerate() {
        match items.get(index) {
            Some(item) if item == bundled => {}
            Some(item) => return Err(format!("item {index} is {item}, the bindings have {bundled}")),
            None => {
                return Err(format!("it has {} items, the bindings {}", items.len(), BUNDLED_ITEMS.len()))
            }
        }
    }
    Ok(())
}

/// The enumerator names of `enum spank_item`, in order; None if an item has
/// an explicit value (positions would then not be the values).
fn spank_items(spank: &str) -> Option<Vec<String>> {
    let body = spank.split("enum spank_item {").nth(1)?.split("};").next()?;
    let mut code = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        rest = rest[start..].split_once("*/").map_or("", |(_, after)| after);
    }
    code.push_str(rest);
    let mut items = Vec::new();
    for item in code.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if item.contains('=') || item.starts_with('#') {
            return None;
        }
        items.push(item.to_owned());
    }
    Some(items)
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
