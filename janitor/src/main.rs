//! `vscode-janitor`: for admins, run as root from cron on login nodes. Finds
//! VS Code servers that Remote-SSH left running outside the scheduler and,
//! with `--kill`, ends them. See `cli.rs` for the rules in one place.

mod cli;
mod duration;
mod jobs;
mod judge;
mod log;
mod note;
mod process;
mod procfs;
mod reaper;
mod report;
mod single_run;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use nix::unistd::{Uid, User};

use crate::cli::{usage_error, Cli};
use crate::judge::{Policy, Verdict};
use crate::report::Entry;

fn main() {
    let cli: Cli = vscode_slurm_common::cli::parse_or_exit();
    if let Some(what) = &cli.generate {
        use clap::CommandFactory;
        std::process::exit(vscode_slurm_common::cli::generate(Cli::command(), what));
    }
    let only_uid = match cli.user.as_deref() {
        None => None,
        Some(name) => match User::from_name(name) {
            Ok(Some(user)) => Some(user.uid.as_raw()),
            Ok(None) => usage_error(&format!("unknown user '{name}'")),
            Err(e) => {
                eprintln!("vscode-janitor: cannot look up user '{name}': {e}");
                std::process::exit(1);
            }
        },
    };
    // Other users' executables (/proc/PID/exe, which also tells root's
    // slurmstepd from a user's look-alike) are root's to read; a partial view
    // would misjudge trees, so there is no non-root mode.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("vscode-janitor: must run as root: it reads every user's processes");
        std::process::exit(1);
    }
    let _run = single_run::take().unwrap_or_else(|why| {
        eprintln!("vscode-janitor: {why}");
        std::process::exit(1);
    });
    std::process::exit(run(&cli, only_uid));
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this node".into())
}

fn run(cli: &Cli, only_uid: Option<u32>) -> i32 {
    let (table, jobs) = match procfs::scan() {
        Ok(scanned) => scanned,
        Err(e) => {
            eprintln!("vscode-janitor: cannot read /proc: {e}");
            return 1;
        }
    };
    let names: RefCell<HashMap<u32, Option<String>>> = RefCell::default();
    let user_name = |uid: u32| {
        names
            .borrow_mut()
            .entry(uid)
            .or_insert_with(|| User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name))
            .clone()
    };
    let policy =
        Policy { min_age: cli.min_age, min_uid: cli.min_uid, only_uid, self_pid: std::process::id() as i32 };
    let mut entries: Vec<Entry> = judge::judge(&table, &policy, &user_name)
        .into_iter()
        .filter_map(|tree| match tree.verdict {
            Verdict::Orphaned(why) => Some(Entry { tree, why, reaped: None, note: None }),
            Verdict::Kept(_) => None,
        })
        .collect();
    let host = hostname();

    let mut code = 0;
    if cli.kill {
        let log = log::Log::open();
        // All together: one grace period, one wait and one pass over /proc
        // per round for every tree, however many there are.
        let targets: Vec<reaper::Target<'_>> =
            entries.iter().map(|e| reaper::Target { members: &e.tree.members, uid: e.tree.uid }).collect();
        let results = reaper::end_trees(&targets, &jobs, cli.grace);
        drop(targets);
        for (entry, reaped) in entries.iter_mut().zip(results) {
            entry.reaped = Some(reaped);
        }
        for entry in &entries {
            let line = report::log_line(&host, entry);
            if entry.reaped.as_ref().is_some_and(|r| r.ended()) {
                log.notice(&line);
            } else {
                log.warning(&line);
                code = 1;
            }
        }
        if cli.message {
            leave_notes(&host, &mut entries, &log);
        }
    }

    if cli.json {
        print!(
            "{}",
            report::json(&report::Run { host: &host, kill: cli.kill, min_age: cli.min_age }, &entries)
        );
    } else if !cli.quiet {
        if !entries.is_empty() {
            print!("{}", report::table(&entries));
        } else if !cli.kill {
            println!("no orphaned VS Code servers on {host}");
        }
    }
    code
}

/// One note per user, listing every server of theirs this run ended.
fn leave_notes(host: &str, entries: &mut [Entry], log: &log::Log) {
    let when = note::utc(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    let mut by_uid: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.reaped.as_ref().is_some_and(|r| r.ended() && r.signalled > 0) {
            by_uid.entry(entry.tree.uid).or_default().push(i);
        }
    }
    for (uid, indexes) in by_uid {
        let servers: Vec<note::Ended<'_>> = indexes
            .iter()
            .map(|&i| {
                let t = &entries[i].tree;
                note::Ended { pid: t.root, age: t.age, command: &t.command, why: entries[i].why }
            })
            .collect();
        let text = note::compose(host, &when, &servers);
        let outcome = match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(user)) => note::write(&user.dir, uid, user.gid.as_raw(), &text)
                .map(|path| path.display().to_string())
                .map_err(|e| e.to_string()),
            Ok(None) => Err(format!("uid {uid} has no passwd entry")),
            Err(e) => Err(format!("cannot look up uid {uid}: {e}")),
        };
        if let Err(e) = &outcome {
            let user = entries[indexes[0]].tree.user.clone();
            log.warning(&format!("no note left for {user}: {e}"));
        }
        for i in indexes {
            entries[i].note = Some(outcome.clone());
        }
    }
}
