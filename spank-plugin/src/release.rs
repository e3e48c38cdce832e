//! What differs between the Slurm releases the plugin is built for, in one
//! place: each difference, the releases it concerns, and what the plugin does
//! about it.
//!
//! build.rs compiles this file too (`#[path]`), so that a target release's
//! headers are checked against these facts before anything is built; the
//! plugin itself only carries the release number build.rs reads from them
//! (`crate::slurm_version`). Keep it free of anything but `std`.
//!
//! Built and run in the lab (tests/test-all): 22.05 (Debian 12), 24.11
//! (Debian 13) and 26.05 (Debian testing), each against its own headers.
//!
//! 1. **`plugin_version`.** Slurm loads a SPANK plugin only if its
//!    `plugin_version` has Slurm's own major.minor, in every release. The
//!    number is the target's `SLURM_VERSION_NUMBER` (build.rs), never the one
//!    slurm-spank bundles (23.11.5): one build per release.
//! 2. **`spank_prepend_task_argv`** is declared from 23.11 on
//!    ([`PREPEND_TASK_ARGV_SINCE`]); 22.05 lacks it. slurm-spank's bundled
//!    bindings declare it and its own bindgen route needs it, so 22.05 builds
//!    use the bundled bindings; the plugin never calls it, so a 22.05 build
//!    needs no such symbol from Slurm at load time.
//! 3. **`enum spank_item`** is the same 32 items in 22.05, 24.11 and 26.05
//!    ([`BUNDLED_ITEMS`], what slurm-spank 0.4.1 bundles from 23.11). The
//!    plugin passes these numbers to `spank_get_item` (job id, uid, gid), so a
//!    release that inserted or reordered items would read the wrong one:
//!    build.rs stops unless the target's enum begins with them
//!    ([`check_bundled_items`]).
//! 4. **`slurm_spank_init_failure_mode`** (25.05 on,
//!    [`INIT_FAILURE_MODE_SINCE`]): a plugin may export this int so that a
//!    failing `slurm_spank_init` of a required plugin returns that code
//!    instead (`ESPANK_NODE_FAILURE`, `ESPANK_JOB_FAILURE`, both new in
//!    25.05's slurm_errno.h). The plugin does not export it, so a failing
//!    init (a bad plugstack line) returns its error as in every earlier
//!    release: the step fails with the `vscode:` line, and the node is not
//!    drained for what is a configuration mistake.
//! 5. **`SLURM_JOB_END_TIME`** is in a job's environment from 23.02 on;
//!    22.05 has none, and no spank item gives the end time. The plugin does
//!    not set `VSCODE_SLURM_JOB_END` from it: the keeper asks the controller
//!    for the time left before each warning, which also sees a limit an
//!    admin moved, and works the same in every release.
//!
//! Nothing else the plugin relies on differs between the three releases, as
//! the lab shows on each: options registered in `slurm_spank_init` reach
//! salloc/sbatch and the job-script context (`spank_option_getopt` in the
//! epilog answers what salloc/sbatch were given), `spank_job_control_setenv`
//! reaches the epilog as `SPANK_VSCODE`, and steps keep `SLURM_JOB_ID` in
//! their environment (the epilog's sign of a job's processes, see
//! vscode_slurm_procfs).

/// Slurm 23.11, the first release whose spank.h declares `spank_prepend_task_argv`.
pub const PREPEND_TASK_ARGV_SINCE: u32 = 0x17_0b_00;

/// Slurm 25.05, the first release that looks for `slurm_spank_init_failure_mode`.
pub const INIT_FAILURE_MODE_SINCE: u32 = 0x19_05_00;

/// The releases (major.minor as in `SLURM_VERSION_NUMBER >> 8`) the lab builds
/// the plugin for and runs the tests on; others build (their headers pass the
/// same checks) but are not tested, and build.rs says so.
pub const TESTED: [(u32, &str); 3] = [(0x16_05, "22.05"), (0x18_0b, "24.11"), (0x1a_05, "26.05")];

/// `enum spank_item` as slurm-spank 0.4.1 bundles it (from Slurm 23.11).
pub const BUNDLED_ITEMS: [&str; 32] = [
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

/// "24.11" for `0x180b05`.
pub fn release_text(number: u32) -> String {
    format!("{}.{:02}", number >> 16, (number >> 8) & 0xff)
}

/// Whether the lab tests this release (see [`TESTED`]).
pub fn is_tested(number: u32) -> bool {
    TESTED.iter().any(|(major_minor, _)| *major_minor == number >> 8)
}

/// A spank.h must belong to the release its slurm_version.h names: a copy
/// from another release would compile and then fail at load or call time.
pub fn check_spank_header(spank: &str, number: u32) -> Result<(), String> {
    if !spank.contains("slurm_spank_init") || !spank.contains("enum spank_item") {
        return Err("it is not a SPANK header (no slurm_spank_init or enum spank_item)".to_owned());
    }
    if number >= PREPEND_TASK_ARGV_SINCE && !spank.contains("spank_prepend_task_argv") {
        return Err("it lacks spank_prepend_task_argv, which every spank.h since 23.11 declares".to_owned());
    }
    if number >= INIT_FAILURE_MODE_SINCE && !spank.contains("slurm_spank_init_failure_mode") {
        return Err(
            "it lacks slurm_spank_init_failure_mode, which every spank.h since 25.05 declares".to_owned()
        );
    }
    Ok(())
}

/// The target's `enum spank_item` must begin with [`BUNDLED_ITEMS`], in that
/// order (releases may append items, never reorder them).
pub fn check_bundled_items(spank: &str) -> Result<(), String> {
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
pub fn spank_items(spank: &str) -> Option<Vec<String>> {
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

/// Finds `#define SLURM_VERSION_NUMBER <hex or decimal>` in slurm_version.h.
pub fn parse_version_number(header: &str) -> Option<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a release's spank.h as far as these checks read it.
    fn spank_h(items: &[&str], extra: &str) -> String {
        format!(
            "extern spank_f slurm_spank_init;\n{extra}\nenum spank_item {{\n    {},\n}};\n",
            items.join(",\n    /* a comment, with a comma */\n    ")
        )
    }

    #[test]
    fn the_tested_releases_pass_and_their_numbers_read_back() {
        let with_all = "spank_prepend_task_argv\nextern int slurm_spank_init_failure_mode;";
        for (number, header_extra) in
            [(0x16_05_08, ""), (0x18_0b_05, "spank_prepend_task_argv"), (0x1a_05_05, with_all)]
        {
            let header = format!("#undef X\n#define SLURM_VERSION_NUMBER {number:#08x}\n");
            assert_eq!(parse_version_number(&header), Some(number));
            assert!(is_tested(number), "{}", release_text(number));
            let spank = spank_h(&BUNDLED_ITEMS, header_extra);
            assert_eq!(check_spank_header(&spank, number), Ok(()));
            assert_eq!(check_bundled_items(&spank), Ok(()));
        }
        assert!(!is_tested(0x19_05_03));
        assert_eq!(release_text(0x19_0b_00), "25.11");
    }

    #[test]
    fn headers_of_another_release_than_the_version_file_are_refused() {
        let old = spank_h(&BUNDLED_ITEMS, "");
        let why = check_spank_header(&old, 0x18_0b_05).unwrap_err();
        assert!(why.contains("spank_prepend_task_argv"), "{why}");
        let without_mode = spank_h(&BUNDLED_ITEMS, "spank_prepend_task_argv");
        let why = check_spank_header(&without_mode, 0x1a_05_05).unwrap_err();
        assert!(why.contains("slurm_spank_init_failure_mode"), "{why}");
        assert!(check_spank_header("int x;", 0x16_05_08).is_err());
    }

    #[test]
    fn an_inserted_reordered_or_numbered_item_is_refused_and_appended_ones_are_not() {
        let mut inserted: Vec<&str> = BUNDLED_ITEMS.to_vec();
        inserted.insert(1, "S_JOB_SOMETHING_NEW");
        let why = check_bundled_items(&spank_h(&inserted, "")).unwrap_err();
        assert_eq!(why, "item 1 is S_JOB_SOMETHING_NEW, the bindings have S_JOB_GID");
        let mut appended: Vec<&str> = BUNDLED_ITEMS.to_vec();
        appended.push("S_JOB_SOMETHING_NEW");
        assert_eq!(check_bundled_items(&spank_h(&appended, "")), Ok(()));
        let why = check_bundled_items(&spank_h(&BUNDLED_ITEMS[..31], "")).unwrap_err();
        assert_eq!(why, "it has 31 items, the bindings 32");
        let numbered = spank_h(&["S_JOB_UID = 0", "S_JOB_GID"], "");
        assert!(check_bundled_items(&numbered).is_err());
        assert!(parse_version_number("#define SLURM_VERSION_NUMBER 0x00ff01").is_none());
    }
}
