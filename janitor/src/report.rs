//! What the janitor prints: a table for the admin at a terminal, one JSON
//! document for scripts, and the log line per ended tree. Pure formatting.

use std::fmt::Write as _;
use std::time::Duration;
use vscode_slurm_common::json;

use crate::duration;
use crate::judge::{Tree, Why};
use crate::reaper::Reaped;

/// The command column is cut here; the full line is in `--json`.
const COMMAND_WIDTH: usize = 60;

/// One orphaned tree and, with `--kill`, what became of it.
pub struct Entry {
    pub tree: Tree,
    pub why: Why,
    pub reaped: Option<Reaped>,
    /// With `--message`: where the note went, or why it could not be written.
    pub note: Option<Result<String, String>>,
}

pub fn result_text(reaped: &Reaped) -> String {
    if !reaped.ended() {
        let pids: Vec<String> = reaped.survivors.iter().map(|p| p.to_string()).collect();
        format!("FAILED: {} still running ({})", pids.len(), pids.join(" "))
    } else if reaped.signalled == 0 {
        "already gone".into()
    } else if reaped.needed_sigkill > 0 {
        format!("ended ({} by SIGKILL)", reaped.needed_sigkill)
    } else {
        "ended".into()
    }
}

/// Also flattens control characters: an argument with a newline in it must
/// not start a row of its own, or a log line that looks like another.
fn truncate(text: &str, width: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= width {
        flat
    } else {
        let cut: String = flat.chars().take(width.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

pub fn table(entries: &[Entry]) -> String {
    let killing = entries.iter().any(|e| e.reaped.is_some());
    let mut rows: Vec<Vec<String>> = vec![["USER", "PID", "AGE", "RSS", "CPU", "PROCS", "COMMAND", "WHY"]
        .iter()
        .map(|s| s.to_string())
        .collect()];
    if killing {
        rows[0].push("RESULT".into());
    }
    for e in entries {
        let t = &e.tree;
        let mut row = vec![
            t.user.clone(),
            t.root.to_string(),
            duration::format(t.age),
            duration::format_bytes(t.rss_bytes),
            duration::format(t.cpu),
            t.members.len().to_string(),
            truncate(&t.command, COMMAND_WIDTH),
            e.why.text().to_owned(),
        ];
        if let Some(reaped) = &e.reaped {
            row.push(result_text(reaped));
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The syslog line for one ended (or not) tree.
pub fn log_line(host: &str, entry: &Entry) -> String {
    let t = &entry.tree;
    let result = entry.reaped.as_ref().map(result_text).unwrap_or_else(|| "not ended".into());
    format!(
        "{result}: VS Code server of {} (uid {}) on {host}: pid {}, {} processes, age {}, rss {}, cpu {}, why: {}; command: {}",
        t.user,
        t.uid,
        t.root,
        t.members.len(),
        duration::format(t.age),
        duration::format_bytes(t.rss_bytes),
        duration::format(t.cpu),
        entry.why.text(),
        truncate(&t.command, 200),
    )
}

pub struct Run<'a> {
    pub host: &'a str,
    pub kill: bool,
    pub min_age: Duration,
}

/// One document, whatever was found: `trees` is empty rather than absent.
pub fn json(run: &Run<'_>, entries: &[Entry]) -> String {
    let mut out = format!(
        "{{\"host\":{},\"mode\":{},\"min_age_secs\":{},\"trees\":[",
        json::string(run.host),
        json::string(if run.kill { "kill" } else { "dry-run" }),
        run.min_age.as_secs()
    );
    for (i, e) in entries.iter().enumerate() {
        let t = &e.tree;
        if i > 0 {
            out.push(',');
        }
        let pids: Vec<String> = t.members.iter().map(|m| m.pid.to_string()).collect();
        let _ = write!(
            out,
            "{{\"user\":{},\"uid\":{},\"pid\":{},\"age_secs\":{},\"rss_bytes\":{},\"cpu_ms\":{},\"processes\":{},\
             \"pids\":[{}],\"command\":{},\"why\":{},\"reason\":{},\"result\":",
            json::string(&t.user),
            t.uid,
            t.root,
            t.age.as_secs(),
            t.rss_bytes,
            t.cpu.as_millis(),
            t.members.len(),
            pids.join(","),
            json::string(&t.command),
            json::string(e.why.text()),
            json::string(e.why.key()),
        );
        match &e.reaped {
            None => out.push_str("null"),
            Some(r) => {
                let survivors: Vec<String> = r.survivors.iter().map(|p| p.to_string()).collect();
                let _ = write!(
                    out,
                    "{{\"ended\":{},\"signalled\":{},\"already_gone\":{},\"needed_sigkill\":{},\"survivors\":[{}]}}",
                    r.ended(),
                    r.signalled,
                    r.already_gone,
                    r.needed_sigkill,
                    survivors.join(",")
                );
            }
        }
        match &e.note {
            None => out.push_str(",\"note\":null"),
            Some(Ok(path)) => {
                let _ = write!(out, ",\"note\":{}", json::string(path));
            }
            Some(Err(error)) => {
                let _ = write!(out, ",\"note\":null,\"note_error\":{}", json::string(error));
            }
        }
        out.push('}');
    }
    out.push_str("]}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{Member, Verdict};

    fn entry(user: &str, pid: i32, command: &str, why: Why) -> Entry {
        Entry {
            tree: Tree {
                root: pid,
                uid: 2001,
                user: user.into(),
                age: Duration::from_secs(7_380),
                members: vec![Member { pid, start_ticks: 1 }, Member { pid: pid + 1, start_ticks: 2 }],
                rss_bytes: 312 << 20,
                cpu: Duration::from_millis(65_500),
                command: command.into(),
                verdict: Verdict::Orphaned(why),
            },
            why,
            reaped: None,
            note: None,
        }
    }

    #[test]
    fn dry_run_table_has_aligned_columns_and_cut_commands() {
        let long = format!("/home/alice/.vscode-server/bin/{}/node", "f".repeat(60));
        let entries = [
            entry("alice", 100, &long, Why::Reparented),
            entry("bob", 20000, "sh /home/bob/.vscode-server/x", Why::NoSshSession),
        ];
        let text = table(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("USER   PID    AGE    RSS   CPU    PROCS  COMMAND"), "{text}");
        assert!(lines[0].ends_with("WHY"));
        assert!(
            lines[1]
                .starts_with("alice  100    2h03m  312M  1m05s  2      /home/alice/.vscode-server/bin/ff"),
            "{text}"
        );
        assert!(lines[1].contains("fff...  reparented to init"), "{text}");
        assert!(lines[2].ends_with("owner has no ssh session"));
        let why_column = lines[0].find("WHY").unwrap();
        assert_eq!(lines[2].find("owner has"), Some(why_column));
    }

    #[test]
    fn kill_table_says_what_happened() {
        let mut ok = entry("alice", 100, "node", Why::Reparented);
        ok.reaped = Some(Reaped { signalled: 2, ..Reaped::default() });
        let mut hard = entry("alice", 200, "node", Why::Reparented);
        hard.reaped = Some(Reaped { signalled: 3, needed_sigkill: 1, ..Reaped::default() });
        let mut stuck = entry("bob", 300, "node", Why::NoSshSession);
        stuck.reaped =
            Some(Reaped { signalled: 2, needed_sigkill: 2, survivors: vec![301], ..Reaped::default() });
        let text = table(&[ok, hard, stuck]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("RESULT"));
        assert!(lines[1].ends_with("ended"));
        assert!(lines[2].ends_with("ended (1 by SIGKILL)"));
        assert!(lines[3].ends_with("FAILED: 1 still running (301)"));
    }

    #[test]
    fn json_is_one_escaped_document() {
        let mut e = entry("alice", 100, "node \"quoted\" \\ tab\t\u{1}", Why::Reparented);
        e.reaped = Some(Reaped { signalled: 2, needed_sigkill: 1, ..Reaped::default() });
        e.note = Some(Ok("/home/alice/.vscode-server/ENDED-BY-ADMIN.txt".into()));
        let mut failed = entry("bob", 200, "x", Why::NoSshSession);
        failed.reaped = Some(Reaped::default());
        failed.note = Some(Err("no \"dir\"".into()));
        let run = Run { host: "login", kill: true, min_age: Duration::from_secs(3_600) };
        let text = json(&run, &[e, failed]);
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("{\"host\":\"login\",\"mode\":\"kill\",\"min_age_secs\":3600,\"trees\":[{"));
        assert!(text.contains(
            "\"user\":\"alice\",\"uid\":2001,\"pid\":100,\"age_secs\":7380,\"rss_bytes\":327155712,\"cpu_ms\":65500,\
             \"processes\":2,\"pids\":[100,101],\"command\":\"node \\\"quoted\\\" \\\\ tab\\t\\u0001\","
        ));
        assert!(text.contains("\"why\":\"reparented to init\",\"reason\":\"reparented\""));
        assert!(text.contains(
            "\"result\":{\"ended\":true,\"signalled\":2,\"already_gone\":0,\"needed_sigkill\":1,\"survivors\":[]}"
        ));
        assert!(text.contains("\"note\":\"/home/alice/.vscode-server/ENDED-BY-ADMIN.txt\""));
        assert!(text.contains("\"note\":null,\"note_error\":\"no \\\"dir\\\"\"}]}"));
        let empty = json(&Run { kill: false, ..run }, &[]);
        assert_eq!(empty, "{\"host\":\"login\",\"mode\":\"dry-run\",\"min_age_secs\":3600,\"trees\":[]}\n");
    }

    #[test]
    fn log_line_is_one_line_with_the_essentials() {
        let mut e = entry("bob", 300, "node\nserver", Why::NoSshSession);
        e.reaped = Some(Reaped { signalled: 2, ..Reaped::default() });
        let line = log_line("login", &e);
        assert!(line.starts_with(
            "ended: VS Code server of bob (uid 2001) on login: pid 300, 2 processes, age 2h03m"
        ));
        assert!(line.ends_with("why: owner has no ssh session; command: node server"), "{line}");
    }
}
