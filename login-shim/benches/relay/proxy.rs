//! The proxy host kind's path against ssh straight to the login node, in one
//! run, interleaved: the same client on the laptop, the same server on the
//! job's compute node, reached through an `ssh -D` SOCKS port either way.
//!
//! - `ssh login`: laptop → sshd on login → TCP across the lab network to the
//!   server on the node's lab address (what any ssh user can do today).
//! - `proxy host`: laptop → sshd on login → `vscode-shim proxy` → the window
//!   step's I/O (srun, slurmstepd) → `vscode-job-helper sshd` → the job's own
//!   sshd → the server on the node's loopback.

use std::net::SocketAddr;
use std::time::Duration;

use vscode_slurm_tests::proxy::ProxyHost;
use vscode_slurm_tests::{wait_until, Lab, LineProcess};

use crate::lab::{LabRunner, USER};
use crate::report::{median, percentile};
use crate::work::Route;
use crate::{Config, Runner};

const BASELINE_SOCKS: u16 = 47031;
const PROXY_SOCKS: u16 = 47032;
const OPEN_TIMEOUT: Duration = Duration::from_secs(90);

/// Throughput (MiB/s per bulk run) and round trips (ns) of both paths.
#[derive(Debug, Default, Clone)]
pub struct ProxyReport {
    pub baseline_mib_s: Vec<f64>,
    pub proxy_mib_s: Vec<f64>,
    pub baseline_rtt_ns: Vec<u64>,
    pub proxy_rtt_ns: Vec<u64>,
}

impl ProxyReport {
    fn figures(&self) -> Option<(f64, f64, f64, f64)> {
        let rtt_ms = |samples: &[u64]| percentile(samples, 50.0).map(|ns| ns / 1e6);
        Some((
            median(&self.baseline_mib_s)?,
            median(&self.proxy_mib_s)?,
            rtt_ms(&self.baseline_rtt_ns)?,
            rtt_ms(&self.proxy_rtt_ns)?,
        ))
    }

    pub fn table(&self) -> String {
        let Some((base_mib, proxy_mib, base_rtt, proxy_rtt)) = self.figures() else {
            return "\nproxy host kind: no measurements\n".to_owned();
        };
        format!(
            "\nproxy host kind (laptop → ssh -D → server on the job's node), medians of the same run:\n\
             {:<28} {:>12} {:>14}\n\
             {:<28} {:>12.1} {:>14.3}\n\
             {:<28} {:>12.1} {:>14.3}\n\
             {:<28} {:>12.2} {:>14.2}\n",
            "path",
            "MiB/s",
            "round trip ms",
            "ssh straight to login",
            base_mib,
            base_rtt,
            "proxy host (job's sshd)",
            proxy_mib,
            proxy_rtt,
            "proxy / ssh to login",
            proxy_mib / base_mib,
            proxy_rtt / base_rtt,
        )
    }

    pub fn json(&self) -> String {
        match self.figures() {
            None => "null".to_owned(),
            Some((base_mib, proxy_mib, base_rtt, proxy_rtt)) => format!(
                "{{\"baseline_mib_s\": {base_mib:.2}, \"proxy_mib_s\": {proxy_mib:.2}, \
                 \"baseline_rtt_ms\": {base_rtt:.4}, \"proxy_rtt_ms\": {proxy_rtt:.4}, \
                 \"throughput_ratio\": {:.4}, \"rtt_ratio\": {:.4}}}",
                proxy_mib / base_mib,
                proxy_rtt / base_rtt
            ),
        }
    }
}

/// An ssh on the laptop with `-D`, holding its connection (`exec cat`) until
/// its stdin closes; the first line its command prints is returned.
fn socks_ssh(lab: &Lab, host: &str, port: u16, first: &str) -> Result<(LineProcess, String), String> {
    let forward = format!("127.0.0.1:{port}");
    let command = format!("{first}; exec cat");
    let argv =
        ["ssh", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-D", &forward, host, &command];
    let mut ssh = lab.spawn(Some(USER), "laptop", &argv);
    let line = ssh.expect_line(&format!("ssh -D to {host}"), OPEN_TIMEOUT, |_| true);
    Ok((ssh, line))
}

pub fn run(cfg: &Config, lab: &Lab, exe: &str) -> Result<ProxyReport, String> {
    let host = ProxyHost::install(lab, USER, "bench-job", "bench-proxy");
    let (proxy_ssh, line) = socks_ssh(lab, &host.name, PROXY_SOCKS, "echo node $(hostname)")?;
    let node = line.strip_prefix("node ").ok_or_else(|| format!("not a node line: {line:?}"))?.to_owned();
    let job = lab.sh_ok(None, "login", &format!("squeue -h -u {USER} -n vscode:bench-proxy -o %i"));
    // On every address of the job's node: its lab address for the baseline,
    // its loopback for the proxy host (whose sshd forwards to the node only).
    let mut server = lab.spawn(Some(USER), &node, &[exe, "serve", "--host=0.0.0.0", "--port=0"]);
    let line = server.expect_line("`bench server at`", OPEN_TIMEOUT, |l| l.starts_with("bench server at "));
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("bad server line {line:?}"))?;
    let node_ip = crate::lab::host_ip(lab, &node)?;
    let (login_ssh, _) = socks_ssh(lab, "login", BASELINE_SOCKS, "echo up")?;
    eprintln!("proxy: job {} on {node}, server port {port}", job.trim());

    let socks = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let baseline = Route::socks(socks(BASELINE_SOCKS), SocketAddr::new(node_ip, port));
    let proxied = Route::socks(socks(PROXY_SOCKS), SocketAddr::from(([127, 0, 0, 1], port)));
    let runner = LabRunner { lab, host: "laptop", exe: exe.to_owned() };
    let mut report = ProxyReport::default();
    let mib = cfg.bulk_bytes as f64 / (1 << 20) as f64;
    let pings = cfg.pings.div_ceil(cfg.reps).max(1);
    for rep in 0..cfg.reps {
        eprintln!("proxy: repetition {}/{}", rep + 1, cfg.reps);
        // Alternating which path goes first, so that neither always meets a warmer machine.
        let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
        for through_proxy in order {
            let route = if through_proxy { proxied } else { baseline };
            let secs = runner.bulk(route, cfg.bulk_bytes).map_err(|e| format!("proxy bulk: {e}"))?;
            let rtts = runner.ping_pong(route, pings).map_err(|e| format!("proxy ping: {e}"))?;
            let (throughput, rtt) = if through_proxy {
                (&mut report.proxy_mib_s, &mut report.proxy_rtt_ns)
            } else {
                (&mut report.baseline_mib_s, &mut report.baseline_rtt_ns)
            };
            throughput.push(mib / secs);
            rtt.extend(rtts);
        }
    }
    for (mut ssh, what) in [(login_ssh, "ssh to login"), (proxy_ssh, "proxy ssh")] {
        ssh.close_stdin();
        if ssh.wait(Duration::from_secs(30)).is_none() {
            eprintln!("proxy: the {what} did not end when its stdin closed; killed");
        }
    }
    server.close_stdin();
    let _ = server.wait(Duration::from_secs(10));
    wait_until(
        "the proxy host's job to end with its last connection",
        Duration::from_secs(60),
        || lab.sh_ok(None, "login", &format!("squeue -h -u {USER} -n vscode:bench-proxy -o %i")),
        |queue| queue.trim().is_empty(),
    );
    drop(host);
    Ok(report)
}
