//! `vscode-shim setup`: prints what a user puts on the laptop (the ssh host
//! entry, VS Code's settings and a check command), and with `--write` adds
//! the host entry to the ssh config file. It asks nothing.
//!
//! `--proxy` prints the other host kind, a `ProxyCommand` entry for every
//! SSH client, with the `known_hosts` line of the user's job host key (made
//! here once if the home has none: the key lives in the cluster's home, so
//! this runs on a login node); `--write` then adds both.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use clap::Args;

/// Default ssh config file for the VS Code hosts (`remote.SSH.configFile`).
const DEFAULT_CONFIG: &str = "~/.ssh/vscode-slurm.config";
/// A proxy host gets in no one's way, so it goes where every client looks.
const DEFAULT_PROXY_CONFIG: &str = "~/.ssh/config";
const DEFAULT_KNOWN_HOSTS: &str = "~/.ssh/known_hosts";

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

    /// The ssh config file: for RemoteCommand, one used only by VS Code
    /// (remote.SSH.configFile, default ~/.ssh/vscode-slurm.config); with
    /// --proxy, the usual one (default ~/.ssh/config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,

    /// A ProxyCommand host for every SSH client (VSCodium, Cursor, JetBrains
    /// Gateway, ssh, scp, rsync) instead of a RemoteCommand one for VS Code;
    /// also prints the known_hosts line of your job host key.
    #[arg(long)]
    pub proxy: bool,

    /// With --proxy --write: the known_hosts file the job host key is added to.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_KNOWN_HOSTS, requires = "proxy")]
    pub known_hosts: String,

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

impl SetupArgs {
    fn config(&self) -> &str {
        match (&self.config, self.proxy) {
            (Some(config), _) => config,
            (None, false) => DEFAULT_CONFIG,
            (None, true) => DEFAULT_PROXY_CONFIG,
        }
    }
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
    if args.write && args.config().starts_with("~/") && std::env::var_os("HOME").is_none() {
        eprintln!(
            "vscode-shim setup: HOME is not set, so {} is nowhere; give --config a full path",
            args.config()
        );
        return 2;
    }
    if args.proxy {
        return run_proxy(args);
    }
    let path = expand_home(args.config());
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
    let config = args.config();
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
    let command = shim_command("vscode-shim".to_owned(), args, remote_command_word);
    block.push_str(&format!("    RemoteCommand {command}\n"));
    block
}

/// `COMMAND [--profile P] -- ARGS`, each word quoted by `word` (for the
/// shells it passes through, and for ssh's `%` tokens).
fn shim_command(mut command: String, args: &SetupArgs, word: fn(&str) -> String) -> String {
    if let Some(profile) = &args.profile {
        command.push_str(&format!(" --profile {}", word(profile)));
    }
    command.push_str(" --");
    for arg in &args.salloc_args {
        command.push(' ');
        command.push_str(&word(arg));
    }
    command
}

/// `--proxy`: the Host entry and the known_hosts line, printed, and with
/// `--write` added where they are missing (never twice).
fn run_proxy(args: &SetupArgs) -> i32 {
    if let Err(e) = check_proxy_names(args) {
        eprintln!("vscode-shim setup: {e}");
        return 2;
    }
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        eprintln!(
            "vscode-shim setup: HOME is not set, so there is no job host key to show; run it on a login node"
        );
        return 2;
    };
    let public = match vscode_slurm_common::host_key::ensure(
        &home.join(vscode_slurm_protocol::proxy::HOST_KEY),
        vscode_slurm_protocol::proxy::HOST_KEY_COMMENT,
    ) {
        Ok(public) => public,
        Err(e) => {
            eprintln!("vscode-shim setup: {e}");
            return 1;
        }
    };
    let known = known_hosts_line(args, &public);
    let config_path = expand_home(args.config());
    let known_path = expand_home(&args.known_hosts);
    if args.write {
        if let Err(e) = check_known_hosts(&known_path, args, &known) {
            eprintln!("vscode-shim setup: {e}; nothing written");
            return 1;
        }
    }
    print!("{}", render_proxy(args, &known));
    if !args.write {
        return 0;
    }
    let block = proxy_block(args);
    match fs::read_to_string(&config_path) {
        Ok(text) if has_host(&text, &args.name) => {
            eprintln!(
                "vscode-shim setup: {} already has Host {}; left as it is",
                config_path.display(),
                args.name
            )
        }
        Ok(_) | Err(_) => match append(&config_path, &block) {
            Ok(()) => eprintln!("vscode-shim setup: added Host {} to {}", args.name, config_path.display()),
            Err(e) => {
                eprintln!("vscode-shim setup: cannot write {}: {e}", config_path.display());
                return 1;
            }
        },
    }
    let present = fs::read_to_string(&known_path).is_ok_and(|text| text.lines().any(|l| l.trim() == known));
    if present {
        eprintln!("vscode-shim setup: {} already has the job host key", known_path.display());
    } else if let Err(e) = append_line(&known_path, &known) {
        eprintln!("vscode-shim setup: cannot write {}: {e}", known_path.display());
        return 1;
    } else {
        eprintln!("vscode-shim setup: added the job host key to {}", known_path.display());
    }
    0
}

/// A known_hosts entry for the alias with another key would make ssh refuse
/// every connection: say so before writing anything.
fn check_known_hosts(path: &std::path::Path, args: &SetupArgs, line: &str) -> Result<(), String> {
    let alias = vscode_slurm_protocol::proxy::host_key_alias(&args.login);
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let other = text.lines().map(str::trim).any(|l| {
        l != line && l.split_whitespace().next().is_some_and(|hosts| hosts.split(',').any(|h| h == alias))
    });
    if other {
        return Err(format!(
            "{} has another key for {alias}; remove that line (ssh-keygen -R {alias} -f {}) and run this again",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// `ALIAS TYPE KEY`, the line the laptop's known_hosts needs.
pub fn known_hosts_line(args: &SetupArgs, public: &str) -> String {
    format!("{} {public}", vscode_slurm_protocol::proxy::host_key_alias(&args.login))
}

/// The ProxyCommand host entry, as `--write` adds it.
pub fn proxy_block(args: &SetupArgs) -> String {
    let alias = vscode_slurm_protocol::proxy::host_key_alias(&args.login);
    let mut block = format!(
        "Host {}
    User {}
    HostKeyAlias {alias}
",
        args.name, args.user
    );
    let mut login = format!("ssh -T -l {}", args.user);
    if let Some(identity) = &args.identity_file {
        block.push_str(&format!(
            "    IdentityFile {identity}
"
        ));
        login.push_str(&format!(" -i {identity}"));
    }
    let command = shim_command(format!("{login} {} vscode-shim proxy", args.login), args, proxy_command_word);
    block.push_str(&format!(
        "    ProxyCommand {command}
"
    ));
    block
}

/// Everything `setup --proxy` prints.
pub fn render_proxy(args: &SetupArgs, known: &str) -> String {
    let name = &args.name;
    format!(
        "# 1. ssh config on the laptop: this block belongs in {config}; it gets in the way of\n\
         #    nothing (ssh to {login} itself stays as it is).\n\
         \n\
         {block}\
         \n\
         # 2. The job host key, one line for the laptop's {known_hosts}\n\
         #    (ssh then checks every job's server without asking):\n\
         \n\
         {known}\n\
         \n\
         # 3. Use it with any SSH client: ssh {name}, scp FILE {name}:, rsync, ssh -L, ssh -X;\n\
         #    VS Code, VSCodium, Cursor, Windsurf: Remote-SSH: Connect to Host... > {name};\n\
         #    JetBrains Gateway, Zed: a host named {name}. Each connection is a window of the\n\
         #    profile's job (Slurm or HTCondor, queued on first use), so the first one waits for the job.\n",
        config = args.config(),
        login = args.login,
        block = proxy_block(args),
        known_hosts = args.known_hosts,
    )
}

/// Appends one line, making the file 0600 (and its directory 0700) if new.
fn append_line(path: &std::path::Path, line: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let existing = fs::read(path).unwrap_or_default();
    let mut text = String::new();
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    let mut file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

/// Quotes a word for the login node's shell, and doubles `%` (ssh expands
/// `%` tokens in RemoteCommand).
fn remote_command_word(arg: &str) -> String {
    shell_word(arg).replace('%', "%%")
}

/// A word of a ProxyCommand's remote command: the laptop's shell runs the
/// ProxyCommand and takes one layer of quoting off, then the login node's
/// shell reads what ssh passes on, so each word is quoted twice (and `%`
/// doubled, for ssh's own expansion).
fn proxy_command_word(arg: &str) -> String {
    shell_word(&shell_word(arg)).replace('%', "%%")
}

/// `arg` as one word for a POSIX shell: as it is when that is safe, else
/// single-quoted.
fn shell_word(arg: &str) -> String {
    let safe = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_=:,./+@%".contains(c));
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// With `--proxy`, the login node, user and key go into the ProxyCommand
/// unquoted, as ssh's own arguments: only what such names are made of.
fn check_proxy_names(args: &SetupArgs) -> Result<(), String> {
    let fine = |text: &str, extra: &str| {
        !text.is_empty()
            && !text.starts_with('-')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    if !fine(&args.login, ".-_:") {
        return Err(format!(
            "--login {:?} is not a host name (letters, digits, '.', '-', '_', ':')",
            args.login
        ));
    }
    if !fine(&args.user, ".-_@") {
        return Err(format!(
            "--user {:?} is not a user name (letters, digits, '.', '-', '_', '@')",
            args.user
        ));
    }
    if let Some(identity) = args.identity_file.as_deref().filter(|i| !fine(i, "._-/~+")) {
        return Err(format!(
            "--identity-file {identity:?} must be a plain path (letters, digits, '.', '_', '-', '/', '~', '+')"
        ));
    }
    if let Some(profile) = &args.profile {
        crate::profile::check_profile(profile)?;
    }
    Ok(())
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
        assert_eq!(proxy_command_word("--time=4:00:00"), "--time=4:00:00");
        assert_eq!(proxy_command_word("a|b"), r"''\''a|b'\'''");
    }
}
