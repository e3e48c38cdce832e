//! `vscode-shim setup`: prints what a user puts on the laptop (the ssh host
//! entry, VS Code's settings and a check command), and with `--write` adds
//! the host entry to the ssh config file. It asks nothing.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use clap::Args;

/// Default ssh config file for the VS Code hosts (`remote.SSH.configFile`).
const DEFAULT_CONFIG: &str = "~/.ssh/vscode-slurm.config";

/// Prints the laptop's ssh config entry and VS Code settings for a session in a Slurm job.
///
/// Run it anywhere (it only prints); with --write the ssh host entry is also
/// appended to --config, unless that file already has a `Host` entry for
/// the alias.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The cluster's login node, as reached from the laptop.
    #[arg(long, value_name = "HOST")]
    pub login: String,

    /// Your user name on the cluster.
    #[arg(long, value_name = "NAME")]
    pub user: String,

    /// The host alias VS Code connects to (Remote-SSH: Connect to Host).
    #[arg(long, value_name = "ALIAS")]
    pub name: String,

    /// The ssh config file used only by VS Code (remote.SSH.configFile).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: String,

    /// The ssh key for the login node, if not one of ssh's defaults.
    #[arg(long, value_name = "FILE")]
    pub identity_file: Option<String>,

    /// A site profile for the shim (passed on as `vscode-shim --profile NAME`).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// How long VS Code waits for the session, queueing included
    /// (remote.SSH.connectTimeout): longer than the usual wait for a job.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub connect_timeout: u32,

    /// Append the host entry to --config after printing it.
    #[arg(long)]
    pub write: bool,

    /// Arguments for salloc, e.g. `--partition=gpu --time=4:00:00`.
    #[arg(last = true, value_name = "SALLOC_ARGS")]
    pub salloc_args: Vec<String>,
}

/// Runs `setup`; returns the exit code.
pub fn run(args: &SetupArgs) -> i32 {
    let optional = [("--profile", &args.profile), ("--identity-file", &args.identity_file)];
    // Each of these becomes one word of an ssh config line or of RemoteCommand.
    if let Some(bad) = [("--login", &args.login), ("--user", &args.user), ("--name", &args.name)]
        .into_iter()
        .chain(optional.into_iter().filter_map(|(flag, value)| Some((flag, value.as_ref()?))))
        .find(|(_, value)| value.is_empty() || value.chars().any(|c| c.is_whitespace() || c == '#'))
    {
        eprintln!("vscode-shim setup: {} must be one word without spaces or '#'", bad.0);
        return 2;
    }
    if args.write && args.config.starts_with("~/") && std::env::var_os("HOME").is_none() {
        eprintln!(
            "vscode-shim setup: HOME is not set, so {} is nowhere; give --config a full path",
            args.config
        );
        return 2;
    }
    let path = expand_home(&args.config);
    if args.write {
        match fs::read_to_string(&path) {
            Ok(text) if has_host(&text, &args.name) => {
                eprintln!(
                    "vscode-shim setup: {} already has a Host entry for {}; nothing written \
                     (edit that entry, or choose another --name)",
                    path.display(),
                    args.name
                );
                return 1;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("vscode-shim setup: cannot read {}: {e}; nothing written", path.display());
                return 1;
            }
        }
    }
    print!("{}", render(args));
    if args.write {
        if let Err(e) = append(&path, &host_block(args)) {
            eprintln!("vscode-shim setup: cannot write {}: {e}", path.display());
            return 1;
        }
        eprintln!("vscode-shim setup: added Host {} to {}", args.name, path.display());
    }
    0
}

/// Everything `setup` prints.
pub fn render(args: &SetupArgs) -> String {
    let config = &args.config;
    let name = &args.name;
    let check = format!(
        "ssh -F {} -o RemoteCommand=none {name} \
         'command -v vscode-shim && salloc --help | grep -q -- --vscode && echo ok'",
        shell_path(config)
    );
    format!(
        "# 1. ssh config: this block belongs in {config}, a file used only by VS Code\n\
         #    (its RemoteCommand would get in the way of plain ssh and scp to {login}).\n\
         \n\
         {block}\
         \n\
         # 2. VS Code settings.json (Preferences: Open User Settings (JSON)):\n\
         \n\
         \"remote.SSH.configFile\": {config_json},\n\
         \"remote.SSH.enableRemoteCommand\": true,\n\
         \"remote.SSH.useLocalServer\": true,\n\
         \"remote.SSH.enableDynamicForwarding\": true,\n\
         \"remote.SSH.connectTimeout\": {timeout}\n\
         \n\
         # 3. Check (starts no job; prints the shim's path and ok):\n\
         \n\
         {check}\n\
         \n\
         # Then connect VS Code to {name}: Remote-SSH: Connect to Host... > {name}.\n",
        login = args.login,
        block = host_block(args),
        config_json = vscode_slurm_common::json::string(config),
        timeout = args.connect_timeout,
    )
}

/// The ssh host entry, as written by `--write`.
pub fn host_block(args: &SetupArgs) -> String {
    let mut block = format!("Host {}\n    HostName {}\n    User {}\n", args.name, args.login, args.user);
    if let Some(identity) = &args.identity_file {
        block.push_str(&format!("    IdentityFile {identity}\n"));
    }
    let mut command = String::from("vscode-shim");
    if let Some(profile) = &args.profile {
        command.push_str(&format!(" --profile {}", remote_command_word(profile)));
    }
    command.push_str(" --");
    for arg in &args.salloc_args {
        command.push(' ');
        command.push_str(&remote_command_word(arg));
    }
    block.push_str(&format!("    RemoteCommand {command}\n"));
    block
}

/// Quotes a word for the login node's shell, and doubles `%` (ssh expands
/// `%` tokens in RemoteCommand).
fn remote_command_word(arg: &str) -> String {
    let safe = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_=:,./+@%".contains(c));
    let quoted = if safe { arg.to_owned() } else { format!("'{}'", arg.replace('\'', r"'\''")) };
    quoted.replace('%', "%%")
}

/// A path for the check command: `~/` stays unquoted so the laptop's shell
/// expands it.
fn shell_path(path: &str) -> String {
    let (home, rest) = match path.strip_prefix("~/") {
        Some(rest) => ("~/", rest),
        None => ("", path),
    };
    let safe =
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || "-_=:,./+@%".contains(c));
    if safe {
        format!("{home}{rest}")
    } else {
        format!("{home}'{}'", rest.replace('\'', r"'\''"))
    }
}

/// A JSON string literal, for settings.json.
/// Whether an ssh config text has a `Host` line naming `alias`.
pub fn has_host(text: &str, alias: &str) -> bool {
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let (keyword, rest) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some(split) => split,
            None => return false,
        };
        keyword.eq_ignore_ascii_case("host")
            && rest
                .trim_start_matches(|c: char| c.is_whitespace() || c == '=')
                .split_whitespace()
                .any(|pattern| pattern.trim_matches('"') == alias)
    })
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Appends the block after a blank line; creates the file 0600 (and its
/// directory 0700) if needed.
fn append(path: &std::path::Path, block: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let existing = fs::read(path).unwrap_or_default();
    let mut text = String::new();
    if !existing.is_empty() {
        if !existing.ends_with(b"\n") {
            text.push('\n');
        }
        text.push('\n');
    }
    text.push_str(block);
    let mut file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lines_are_recognised() {
        let text = "Host other\n  HostName x\n\nhost  a b mycluster # comment\nHost=solo\n";
        assert!(has_host(text, "mycluster"));
        assert!(has_host(text, "solo"));
        assert!(has_host(text, "a"));
        assert!(!has_host(text, "x"));
        assert!(!has_host(text, "comment"));
        assert!(!has_host("# Host mycluster\n", "mycluster"));
    }

    #[test]
    fn odd_config_paths_stay_valid_json_and_shell() {
        assert_eq!(vscode_slurm_common::json::string(r#"~/a "b"\c"#), r#""~/a \"b\"\\c""#);
        assert_eq!(shell_path("~/.ssh/vscode-slurm.config"), "~/.ssh/vscode-slurm.config");
        assert_eq!(shell_path("~/my dir/c's"), r"~/'my dir/c'\''s'");
        assert_eq!(shell_path("/abs path"), "'/abs path'");
    }

    #[test]
    fn remote_command_words_are_quoted_for_the_shell_and_ssh() {
        assert_eq!(remote_command_word("--time=4:00:00"), "--time=4:00:00");
        assert_eq!(remote_command_word("--comment=a b"), "'--comment=a b'");
        assert_eq!(remote_command_word("it's"), r"'it'\''s'");
        assert_eq!(remote_command_word("--output=%j"), "--output=%%j");
    }
}
