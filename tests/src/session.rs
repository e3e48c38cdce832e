//! A Remote-SSH session driven from the lab's laptop by `remote-ssh-client`,
//! and the checks every session test shares.

use crate::{wait_until, Lab, LineProcess};
use std::time::{Duration, Instant};

/// How long a session may take from ssh to the server's answer: job start,
/// step launch and the launch script, on a loaded two-core machine.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SessionOptions<'a> {
    pub user: &'a str,
    pub mode: &'a str,
    /// A launch script of the test's own, written to the user's laptop home.
    pub template: Option<&'a str>,
    /// Overrides the ssh entry's RemoteCommand (e.g. other salloc arguments).
    pub remote_command: Option<&'a str>,
    /// More `-o` options for ssh, e.g. `HostName=login2` for the other login node.
    pub ssh_options: &'a [&'a str],
}

impl Default for SessionOptions<'_> {
    fn default() -> Self {
        SessionOptions {
            user: "alice",
            mode: "legacy",
            template: None,
            remote_command: None,
            ssh_options: &[],
        }
    }
}

pub struct Session {
    pub client: LineProcess,
    /// The test server's first answer, as relayed through the whole path.
    pub answer: String,
    /// The login-side port VS Code was told (the shim's relay).
    pub relay_port: u16,
    pub user: String,
}

impl Session {
    pub fn open(lab: &Lab, options: SessionOptions<'_>) -> Session {
        let mut client = start_client(lab, &options);
        let listening = client.expect_line("`result listeningOn=`", OPEN_TIMEOUT, |l| {
            l.starts_with("result listeningOn=") || l.starts_with("error") || l.starts_with("ssh-exited")
        });
        assert!(
            listening.starts_with("result listeningOn="),
            "session failed: {listening}\n{}",
            dump(&client)
        );
        let relay_port = listening
            .trim_start_matches("result listeningOn=")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("listeningOn is not a TCP port: {listening}"));
        // remote-ssh-client connects at once and never retries, as VS Code:
        // an answer here proves the relay was ready before listeningOn arrived.
        let answer = client.expect_line("`answer`", Duration::from_secs(20), |l| {
            l.starts_with("answer ") || l.starts_with("error")
        });
        assert!(answer.starts_with("answer "), "first connection failed: {answer}\n{}", dump(&client));
        client.expect_line("`ready`", Duration::from_secs(20), |l| l == "ready");
        Session {
            client,
            answer: answer.trim_start_matches("answer ").to_owned(),
            relay_port,
            user: options.user.to_owned(),
        }
    }

    pub fn field(&self, key: &str) -> String {
        json_field(&self.answer, key).unwrap_or_else(|| panic!("no {key} in answer {}", self.answer))
    }

    pub fn job_id(&self) -> u32 {
        self.field("job_id").parse().unwrap_or_else(|_| panic!("answer has no job id: {}", self.answer))
    }

    pub fn node(&self) -> String {
        self.field("hostname")
    }

    /// Asks the server again through the relay.
    pub fn get(&mut self) -> String {
        self.client.send("get");
        let line = self.client.expect_line("`answer` to get", Duration::from_secs(20), |l| {
            l.starts_with("answer ") || l.starts_with("error")
        });
        assert!(line.starts_with("answer "), "get failed: {line}\n{}", dump(&self.client));
        line.trim_start_matches("answer ").to_owned()
    }

    /// Closes VS Code's side and returns how long the client took to see ssh end.
    pub fn close(mut self) -> (Duration, LineProcess) {
        let started = Instant::now();
        self.client.send("close");
        let closed =
            self.client.expect_line("`closed`", Duration::from_secs(40), |l| l.starts_with("closed"));
        assert!(!closed.is_empty());
        (started.elapsed(), self.client)
    }
}

/// Starts `remote-ssh-client` on the laptop as `options` say and leaves
/// the rest to the caller: for sessions that are not to open.
pub fn start_client(lab: &Lab, options: &SessionOptions<'_>) -> LineProcess {
    let mut argv = vec![
        "remote-ssh-client".to_owned(),
        "--host".to_owned(),
        "cluster-vscode".to_owned(),
        "--ssh-config".to_owned(),
        ".ssh/vscode-slurm.config".to_owned(),
        "--mode".to_owned(),
        options.mode.to_owned(),
    ];
    if let Some(template) = options.template {
        let name = format!("template-{}.sh", std::process::id());
        let path = lab.dir.join("laptop-home").join(options.user).join(&name);
        std::fs::write(&path, template).expect("write template");
        argv.extend(["--template".to_owned(), name]);
    }
    if let Some(remote_command) = options.remote_command {
        argv.extend(["--ssh-option".to_owned(), format!("RemoteCommand={remote_command}")]);
    }
    for option in options.ssh_options {
        argv.extend(["--ssh-option".to_owned(), (*option).to_owned()]);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    lab.spawn(Some(options.user), "laptop", &argv)
}

pub fn dump(process: &LineProcess) -> String {
    format!("stdout:\n{}\nstderr:\n{}", process.stdout_seen.join("\n"), process.stderr_seen.join("\n"))
}

/// A string or number field of the test server's flat JSON answer.
pub fn json_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        Some(quoted[..quoted.find('"')?].to_owned())
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().to_owned())
    }
}

/// What every session must leave when it is over: no job, no process of
/// the user on the login node or the compute nodes, no runtime directory.
pub fn assert_nothing_left(lab: &Lab, user: &str, job_id: u32, within: Duration) {
    wait_until(
        &format!("job {job_id} to leave the queue"),
        within,
        || lab.sh_ok(None, "login", &format!("squeue -h -u {user} -o '%i %T'")),
        |queue| queue.trim().is_empty(),
    );
    for host in ["login", "login2", "c1", "c2"] {
        wait_until(
            &format!("no process of {user} on {host} after job {job_id}"),
            within,
            || lab.sh_ok(None, host, &format!("ps -u {user} -o pid=,args= || true")),
            |ps| ps.trim().is_empty(),
        );
    }
    // The epilog removes it, a moment after the job's processes are gone.
    for host in ["c1", "c2"] {
        wait_until(
            &format!("the runtime dir of job {job_id} on {host} to be removed"),
            within,
            || lab.sh_ok(None, host, &format!("ls -d /run/vscode-slurm/{job_id} 2>/dev/null || true")),
            |dir| dir.trim().is_empty(),
        );
    }
}

/// Cancels `user`'s batch job `job` (one a test added beside its sessions)
/// and holds it to the same standard as a session: nothing left of it.
pub fn cancel_batch_job(lab: &Lab, user: &str, job: u32, within: Duration) {
    lab.sh_ok(None, "login", &format!("scancel {job}"));
    assert_nothing_left(lab, user, job, within);
}
