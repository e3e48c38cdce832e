//! A proxy window (`vscode-shim proxy`): one SSH connection served by the
//! node's own OpenSSH server in inetd mode (`sshd -i`), as the user, on the
//! step's stdin and stdout. No port of the session exists on the cluster
//! network: the connection's bytes ride Slurm's step I/O to the login node.
//!
//! The sshd is started by the job's keeper, like a launch script's shell:
//! the window counts as attached while the connection lasts, and what the
//! user starts over it (a VS Code server, say) lives in the keeper's step
//! and outlives the connection, as with the RemoteCommand kind.
//!
//! Its configuration is generated into the job's private runtime dir: the
//! user's own authorized keys and nothing else (no passwords, no PAM), the
//! user's job host key (see `vscode_slurm_protocol::proxy`), sftp, X11, and
//! forwarding only to the node itself.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vscode_slurm_common::host_key;
use vscode_slurm_protocol::{self as protocol, env, proxy, ControlMessage, Nonce};

use crate::keeper;
use crate::keeper::client::Event;

/// Where Debian, Red Hat and SUSE put sftp-server; the first that exists
/// is used, else sshd's built-in one.
const SFTP_SERVERS: [&str; 3] =
    ["/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server"];
const XAUTH: [&str; 2] = ["/usr/bin/xauth", "/usr/X11R6/bin/xauth"];
/// The job's variables a shell in the job expects (sshd starts sessions
/// with a fresh environment): exact names, or prefixes ending in `_`.
const JOB_VARIABLES: [&str; 15] = [
    // An HTCondor job's: its ads, scratch dir and slot (and the ancestry
    // variables by which HTCondor's procd finds its processes).
    "_CONDOR_",
    "BATCH_SYSTEM",
    "SLURM_JOB_",
    "SLURM_JOBID",
    "SLURM_CLUSTER_NAME",
    "SLURM_CPUS_ON_NODE",
    "SLURM_GPUS",
    "SLURM_MEM_PER_",
    "SLURM_NNODES",
    "SLURM_NODELIST",
    "SLURM_SUBMIT_",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    // The job's private directory on this node, for the user's own sockets.
    env::RUNTIME_DIR,
];
/// How long sshd's last bytes may take to reach the client after it exits.
const DRAIN: Duration = Duration::from_millis(500);

pub struct Options {
    pub sshd: PathBuf,
}

/// What this window needs from the step's environment and the node.
struct Window {
    nonce: Nonce,
    runtime_dir: PathBuf,
    home: PathBuf,
    user: String,
}

fn window_from_env() -> Result<Window, String> {
    let nonce =
        std::env::var(env::NONCE).ok().and_then(|text| Nonce::parse(&text).ok()).ok_or_else(|| {
            format!("{} is not set or malformed: start proxy windows with vscode-shim proxy", env::NONCE)
        })?;
    let runtime_dir = std::env::var_os(env::RUNTIME_DIR).map(PathBuf::from).ok_or_else(|| {
        format!(
            "{} is not set: the job was not submitted with --vscode, or the plugin is not loaded",
            env::RUNTIME_DIR
        )
    })?;
    let uid = nix::unistd::getuid();
    let account = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or_else(|| format!("uid {uid} has no passwd entry on this node"))?;
    Ok(Window { nonce, runtime_dir, home: account.dir, user: account.name })
}

/// Serves one SSH connection; returns the exit code.
pub async fn run(options: Options) -> i32 {
    let window = match window_from_env() {
        Ok(window) => window,
        Err(e) => {
            tracing::error!("{e}");
            return 2;
        }
    };
    let config = match prepare(&window, &options) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let args: Vec<String> = vec![
        "-i".into(),
        "-f".into(),
        config.config.to_string_lossy().into_owned(),
        "-E".into(),
        config.log.to_string_lossy().into_owned(),
    ];
    let (mut kept, streams) = match keeper::client::spawn(&options.sshd, &args, &window.runtime_dir).await {
        Ok(spawned) => spawned,
        Err(e) => {
            tracing::error!("the job's keeper could not start {}: {e}", options.sshd.display());
            return 1;
        }
    };
    tracing::debug!("the keeper started {} as pid {}", options.sshd.display(), kept.pid);
    // Before any of sshd's bytes: from here on the shim passes stdout on untouched.
    let mut stdout = tokio::io::stdout();
    let ready = protocol::encode(&window.nonce, &ControlMessage::Ready);
    if stdout.write_all(&ready).await.and(stdout.flush().await).is_err() {
        return 0;
    }
    let mut to_sshd = tokio::spawn(copy(tokio::io::stdin(), streams.stdin));
    let mut from_sshd = tokio::spawn(copy(streams.stdout, stdout));
    let mut sshd_stderr = streams.stderr;
    tokio::spawn(async move { tokio::io::copy(&mut sshd_stderr, &mut tokio::io::stderr()).await });
    let mut stdin_open = true;
    let code = loop {
        tokio::select! {
            // The client is gone: closing sshd's stdin ends its connection,
            // and sshd exits by itself.
            _ = &mut to_sshd, if stdin_open => stdin_open = false,
            _ = &mut from_sshd => break 0,
            event = kept.next() => match event {
                Event::Exited(code) => {
                    let _ = tokio::time::timeout(DRAIN, &mut from_sshd).await;
                    break code;
                }
                // Warnings reach every client's log on stderr; stdout is the connection.
                Event::Notice(text) => tracing::warn!("{text}"),
                Event::KeeperGone => {
                    tracing::error!("the job's keeper is gone: the job is ending");
                    break 1;
                }
            },
        }
    };
    code
}

async fn copy(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.and(to.flush().await).is_err() {
            return;
        }
    }
}

struct Prepared {
    config: PathBuf,
    log: PathBuf,
}

/// The host key (made once per user), and this job's sshd configuration in
/// its runtime dir, rewritten whole by every window (all write the same).
fn prepare(window: &Window, options: &Options) -> Result<Prepared, String> {
    if !options.sshd.is_absolute() {
        return Err(format!(
            "--sshd must be an absolute path (sshd refuses to run otherwise), not {}",
            options.sshd.display()
        ));
    }
    let allow_users = allow_users_pattern(&window.user)?;
    let host_key = window.home.join(proxy::HOST_KEY);
    if host_key.to_str().is_none_or(|path| path.contains(['"', '\n', '\\'])) {
        return Err(format!("the home directory {} cannot be named in sshd_config", window.home.display()));
    }
    host_key::ensure(&host_key, proxy::HOST_KEY_COMMENT)?;
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hostname = hostname.trim();
    let text = config_text(&ConfigFacts {
        host_key: &host_key,
        allow_users: &allow_users,
        hostname,
        sftp: SFTP_SERVERS.iter().find(|p| Path::new(p).exists()).copied(),
        xauth: XAUTH.iter().find(|p| Path::new(p).exists()).copied(),
        job_env: &job_env(std::env::vars_os()),
    });
    let config = window.runtime_dir.join("sshd_config");
    let temp = window.runtime_dir.join(format!(".sshd_config.{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&temp, &config));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(format!("cannot write the job's sshd configuration {}: {e}", config.display()));
    }
    Ok(Prepared { config, log: window.runtime_dir.join("sshd.log") })
}

/// The job's variables from this step's environment, as sshd's `SetEnv`
/// takes them; values that would need quoting are left out rather than
/// risk a configuration sshd reads differently.
pub fn job_env(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Vec<String> {
    let mut entries: Vec<String> = vars
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| {
            JOB_VARIABLES.iter().any(|wanted| {
                if wanted.ends_with('_') {
                    name.starts_with(wanted)
                } else {
                    name == wanted
                }
            })
        })
        .filter(|(name, value)| {
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'#' | b'\''))
        })
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    entries.sort();
    entries
}

pub struct ConfigFacts<'a> {
    /// `NAME=VALUE` entries for sshd's `SetEnv`.
    pub job_env: &'a [String],
    pub host_key: &'a Path,
    /// The `AllowUsers` pattern (see [`allow_users_pattern`]).
    pub allow_users: &'a str,
    pub hostname: &'a str,
    pub sftp: Option<&'a str>,
    pub xauth: Option<&'a str>,
}

/// `AllowUsers`' pattern for the user: sshd reads `NAME@HOST` at the last
/// `@`, so a name with one of its own (`alice@corp.example`, from SSSD) gets
/// `@*` after it; a name sshd would split or read otherwise is refused.
pub fn allow_users_pattern(user: &str) -> Result<String, String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    let usable = !user.is_empty() && !user.starts_with(['-', '@']);
    if usable && user.bytes().all(plain) {
        Ok(user.to_owned())
    } else if usable && user.bytes().all(|b| plain(b) || b == b'@') {
        Ok(format!("{user}@*"))
    } else {
        Err(format!(
            "the user name {user:?} has characters sshd's AllowUsers cannot take; proxy windows need a plain \
             user name (letters, digits, '.', '_', '-', '@')"
        ))
    }
}

/// The whole sshd_config. Paths are quoted; the user pattern comes from
/// [`allow_users_pattern`].
pub fn config_text(facts: &ConfigFacts<'_>) -> String {
    let mut text = format!(
        "# Written by vscode-job-helper for one proxy window; see vscode-shim(1) proxy.\n\
         HostKey \"{host_key}\"\n\
         AuthorizedKeysFile .ssh/authorized_keys\n\
         AllowUsers {allow_users}\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         HostbasedAuthentication no\n\
         UsePAM no\n\
         PermitRootLogin no\n\
         PermitUserEnvironment no\n\
         StrictModes yes\n\
         PidFile none\n\
         PrintMotd no\n\
         # Forwarding only to this node's own addresses: no ports opened here\n\
         # for others, no tunnels. (sshd applies PermitOpen to unix sockets as\n\
         # well, and no HOST:PORT pattern names one: so none are forwarded.)\n\
         AllowTcpForwarding local\n\
         PermitOpen {permit}\n\
         GatewayPorts no\n\
         PermitTunnel no\n\
         AllowStreamLocalForwarding no\n\
         X11UseLocalhost yes\n",
        host_key = facts.host_key.display(),
        allow_users = facts.allow_users,
        permit = proxy::permit_open(facts.hostname),
    );
    match facts.xauth {
        Some(xauth) => text.push_str(&format!("X11Forwarding yes\nXAuthLocation {xauth}\n")),
        None => text.push_str("# No xauth on this node: no X11 forwarding.\nX11Forwarding no\n"),
    }
    text.push_str(&format!("Subsystem sftp {}\n", facts.sftp.unwrap_or("internal-sftp")));
    if !facts.job_env.is_empty() {
        // Sessions start in the job as a step's tasks do: knowing its id, nodes and GPUs.
        text.push_str(&format!("SetEnv {}\n", facts.job_env.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_allows_the_user_and_forwarding_to_this_node_only() {
        let text = config_text(&ConfigFacts {
            host_key: Path::new("/home/alice/.ssh/vscode-slurm-job-host-key"),
            allow_users: "alice",
            hostname: "c1",
            sftp: Some("/usr/lib/openssh/sftp-server"),
            xauth: None,
            job_env: &["SLURM_JOB_ID=7".to_owned()],
        });
        for line in [
            "AllowUsers alice\n",
            "PasswordAuthentication no\n",
            "UsePAM no\n",
            "PermitOpen localhost:* 127.0.0.1:* [::1]:* c1:*\n",
            "AllowTcpForwarding local\n",
            "X11Forwarding no\n",
            "Subsystem sftp /usr/lib/openssh/sftp-server\n",
            "SetEnv SLURM_JOB_ID=7\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn user_names_become_patterns_sshd_reads_as_that_user() {
        assert_eq!(allow_users_pattern("alice").unwrap(), "alice");
        assert_eq!(allow_users_pattern("alice@corp.example").unwrap(), "alice@corp.example@*");
        for bad in ["", "a b", "a*", "a?", "a,b", "-x", "a\"b"] {
            assert!(allow_users_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_jobs_plain_variables_reach_sessions() {
        let vars = [
            ("SLURM_JOB_ID", "42"),
            ("SLURM_JOB_NODELIST", "c[1-2]"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("SLURM_JOB_NAME", "vscode:a b"),
            ("SLURM_JOB_ACCOUNT", "x\"y"),
            ("SLURM_STEP_ID", "3"),
            ("VSCODE_SLURM_NONCE", "secret"),
            ("HOME", "/home/alice"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        assert_eq!(
            job_env(vars.into_iter()),
            ["CUDA_VISIBLE_DEVICES=0,1", "SLURM_JOB_ID=42", "SLURM_JOB_NODELIST=c[1-2]"]
        );
    }
}
