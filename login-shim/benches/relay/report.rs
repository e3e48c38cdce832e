//! What the benchmark found: the table (absolute numbers, ratios against
//! direct, the door's cost, the targets), the same as JSON, and a
//! PNG bar chart.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use vscode_slurm_tests::json_string;

use crate::{Config, N};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The client straight to the server.
    Direct,
    /// The session's whole path: the shim's relay, then the door.
    Shim,
    /// The door alone: the client speaks the handshake itself.
    Door,
    /// socat on the relay's host, straight to the server (no door).
    Socat,
}

pub const VARIANTS: [Variant; 4] = [Variant::Direct, Variant::Shim, Variant::Door, Variant::Socat];

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Shim => "vscode-shim + door",
            Variant::Door => "door alone",
            Variant::Socat => "socat",
        }
    }

    /// Whether a relay (the shim, socat) is on the way, whose CPU is counted.
    pub fn has_relay(self) -> bool {
        matches!(self, Variant::Shim | Variant::Socat)
    }

    /// Whether the door is on the way, whose CPU is counted.
    pub fn has_door(self) -> bool {
        matches!(self, Variant::Shim | Variant::Door)
    }

    /// The name in JSON (stable, no spaces).
    pub fn key(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Shim => "vscode-shim",
            Variant::Door => "door",
            Variant::Socat => "socat",
        }
    }
}

/// Relay and door CPU over a ping-pong series, and how many round trips
/// they served: per-trip CPU is the ratio.
#[derive(Debug, Clone, Default)]
pub struct PingCpu {
    pub relay_secs: f64,
    pub door_secs: f64,
    pub round_trips: usize,
}

/// One variant's raw results over all repetitions.
#[derive(Debug, Default)]
pub struct Measured {
    pub bulk_secs: Vec<f64>,
    /// Relay CPU seconds per bulk run (the shim or socat; none for direct
    /// and the door alone).
    pub cpu_secs: Vec<f64>,
    /// The door's CPU seconds per bulk run, on paths through it.
    pub door_cpu_secs: Vec<f64>,
    /// Ping-pong round trips, each.
    pub rtt_ns: Vec<u64>,
    /// Wall time of each burst of parallel connections.
    pub burst_secs: Vec<f64>,
    /// Connections of the bursts that failed.
    pub burst_errors: usize,
    /// CPU over the ping-pong series.
    pub ping: PingCpu,
    /// CPU seconds the whole machine was busy per bulk run and per burst:
    /// with the client and the server sharing the machine's few cores with
    /// the relay, this over the core count is the least time a run can take.
    pub bulk_machine_secs: Vec<f64>,
    /// The same per burst.
    pub burst_machine_secs: Vec<f64>,
    /// Fresh connections: connect (handshake included) to the first echo, ns.
    pub setup_ns: Vec<u64>,
    pub errors: Vec<String>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

pub fn percentile(samples: &[u64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1] as f64)
}

impl Measured {
    /// Median throughput in GB/s (10^9 bytes).
    pub fn bulk_gbps(&self, bytes: u64) -> Option<f64> {
        median(&self.bulk_secs).map(|s| bytes as f64 / s / 1e9)
    }
    pub fn cpu_per_gib(&self, bytes: u64) -> Option<f64> {
        median(&self.cpu_secs).map(|s| s * (1u64 << 30) as f64 / bytes as f64)
    }
    pub fn p50_us(&self) -> Option<f64> {
        percentile(&self.rtt_ns, 50.0).map(|ns| ns / 1000.0)
    }
    pub fn p99_us(&self) -> Option<f64> {
        percentile(&self.rtt_ns, 99.0).map(|ns| ns / 1000.0)
    }
    pub fn burst_median(&self) -> Option<f64> {
        median(&self.burst_secs)
    }
    pub fn bulk_machine_median(&self) -> Option<f64> {
        median(&self.bulk_machine_secs)
    }
    pub fn burst_machine_median(&self) -> Option<f64> {
        median(&self.burst_machine_secs)
    }
    /// Relay CPU per round trip in µs (10 ms tick resolution over the series).
    pub fn cpu_per_rtt_us(&self) -> Option<f64> {
        (self.ping.round_trips > 0).then(|| self.ping.relay_secs / self.ping.round_trips as f64 * 1e6)
    }
    pub fn door_cpu_per_gib(&self, bytes: u64) -> Option<f64> {
        median(&self.door_cpu_secs).map(|s| s * (1u64 << 30) as f64 / bytes as f64)
    }
    pub fn door_cpu_per_rtt_us(&self) -> Option<f64> {
        (self.ping.round_trips > 0).then(|| self.ping.door_secs / self.ping.round_trips as f64 * 1e6)
    }
    pub fn setup_p50_us(&self) -> Option<f64> {
        percentile(&self.setup_ns, 50.0).map(|ns| ns / 1000.0)
    }
    pub fn setup_p99_us(&self) -> Option<f64> {
        percentile(&self.setup_ns, 99.0).map(|ns| ns / 1000.0)
    }
}

#[derive(Debug, Default)]
pub struct Footprint {
    /// Measured on a shim started for it (loopback), or on the one that
    /// served all the load before (lab).
    pub fresh: bool,
    pub conns: usize,
    pub idle_secs: u64,
    pub shim_rss_empty_kib: u64,
    pub shim_rss_kib: u64,
    pub shim_idle_ticks: u64,
    /// The benchmarked shim's RSS with the same connections after all the
    /// load above (allocator high-water marks included).
    pub shim_rss_after_load_kib: Option<u64>,
    /// The session's door (in front of the server) with the same connections.
    pub door_rss_empty_kib: u64,
    pub door_rss_kib: u64,
    pub door_idle_ticks: u64,
    pub socat_rss_kib: u64,
    pub socat_processes: usize,
    pub socat_idle_ticks: u64,
}

pub struct PathReport {
    pub name: String,
    pub description: String,
    pub measured: [Measured; N],
    pub footprint: Option<Footprint>,
}

/// One lab session's set-up, all in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct SetupRun {
    /// ssh start (as the emulator starts it) to the helper's start: ssh,
    /// the shim, salloc, Slurm's scheduling and srun's step launch.
    pub ssh_to_helper_ms: f64,
    /// The helper's start to `listeningOn` arriving at the client.
    pub helper_to_listening_ms: f64,
    /// The test server's own start: launch to its "listening" log line
    /// as the launch script sees it.
    pub server_start_ms: f64,
    /// `helper_to_listening_ms - server_start_ms`.
    pub overhead_ms: f64,
}

pub struct Report {
    pub cfg: Config,
    pub paths: Vec<PathReport>,
    pub setup: Vec<SetupRun>,
    pub lab_error: Option<String>,
    /// The proxy host kind against ssh straight to the login node (lab only).
    pub proxy: Option<crate::proxy::ProxyReport>,
    pub started: SystemTime,
    pub cores: usize,
    /// Load averages (1, 5, 15 minutes) when the run started and ended: the
    /// machine may be shared, and the ratios are only as good as its quiet.
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
}

/// The targets, checked on the loopback path.
pub struct Verdict {
    pub target: &'static str,
    pub measured: String,
    pub outcome: Result<(), String>,
}

const RSS_TARGET_KIB: f64 = 3.0 * 1024.0;

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".to_owned(), f)
}

impl Report {
    pub fn new(cfg: Config) -> Report {
        Report {
            cfg,
            paths: vec![],
            setup: vec![],
            lab_error: None,
            proxy: None,
            started: SystemTime::now(),
            cores: crate::procs::cores(),
            load_before: crate::procs::load_average(),
            load_after: None,
        }
    }

    pub fn verdicts(&self) -> Vec<Verdict> {
        let Some(lo) = self.paths.iter().find(|p| p.name == "loopback") else { return vec![] };
        let [direct, shim, ..] = &lo.measured;
        let bytes = self.cfg.bulk_bytes;
        let mut out = Vec::new();
        let ratio = shim.bulk_gbps(bytes).zip(direct.bulk_gbps(bytes)).map(|(s, d)| s / d);
        let cores = self.cores as f64;
        // The best the CPU the relayed runs used allows: all of it spread
        // evenly over every core, nothing waiting.
        let bulk_bound = median(&direct.bulk_secs)
            .zip(shim.bulk_machine_median())
            .map(|(direct_secs, busy)| direct_secs / (busy / cores));
        let burst_bound = direct
            .burst_median()
            .zip(shim.burst_machine_median())
            .map(|(direct_secs, busy)| (busy / cores) / direct_secs);
        let bound = |b: Option<f64>| {
            b.map_or_else(String::new, |b| {
                format!("; the CPU these runs kept the machine busy allows at best {b:.2}× on {cores} cores")
            })
        };
        out.push(Verdict {
            target: "bulk ≥ 0.90× direct",
            measured: fmt_opt(ratio, |r| format!("{r:.2}×")),
            outcome: match ratio {
                Some(r) if r >= 0.9 => Ok(()),
                Some(r) => Err(format!(
                    "missed by {:.2}× ({:.0}% below the target){}",
                    0.9 - r,
                    (0.9 - r) / 0.9 * 100.0,
                    bound(bulk_bound)
                )),
                None => Err("not measured".into()),
            },
        });
        let added = shim.p50_us().zip(direct.p50_us()).map(|(s, d)| s - d);
        out.push(Verdict {
            target: "added round trip p50 ≤ 5 µs",
            measured: fmt_opt(added, |a| format!("{a:+.1} µs")),
            outcome: match added {
                Some(a) if a <= 5.0 => Ok(()),
                Some(a) => Err(format!("missed by {:.1} µs", a - 5.0)),
                None => Err("not measured".into()),
            },
        });
        let burst = shim.burst_median().zip(direct.burst_median()).map(|(s, d)| s / d);
        out.push(Verdict {
            target: "200-connection burst ≤ 2× direct, 0 errors",
            measured: format!("{}, {} errors", fmt_opt(burst, |r| format!("{r:.2}×")), shim.burst_errors),
            outcome: match burst {
                Some(r) if r <= 2.0 && shim.burst_errors == 0 => Ok(()),
                Some(r) if r <= 2.0 => Err(format!("{} errors", shim.burst_errors)),
                Some(r) => Err(format!(
                    "missed by {:.2}×{}{}",
                    r - 2.0,
                    if shim.burst_errors > 0 { " and errors" } else { "" },
                    bound(burst_bound)
                )),
                None => Err("not measured".into()),
            },
        });
        if let Some(fp) = &lo.footprint {
            let rss = fp.shim_rss_kib as f64;
            out.push(Verdict {
                target: "shim RSS ≤ 3 MiB with 8 connections",
                measured: format!("{:.2} MiB", rss / 1024.0),
                outcome: if rss <= RSS_TARGET_KIB {
                    Ok(())
                } else {
                    Err(format!("missed by {:.2} MiB", (rss - RSS_TARGET_KIB) / 1024.0))
                },
            });
            out.push(Verdict {
                target: "0 CPU ticks while idle",
                measured: format!("{} ticks in {} s", fp.shim_idle_ticks, fp.idle_secs),
                outcome: if fp.shim_idle_ticks == 0 {
                    Ok(())
                } else {
                    Err(format!("missed by {} ticks", fp.shim_idle_ticks))
                },
            });
        }
        out
    }

    pub fn table(&self) -> String {
        let cfg = &self.cfg;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\nrelay benchmark{}: bulk {} MiB one way (median of {}), {} × 64-byte ping-pong, \
             {} connections × {} ping-pongs (median of {}), interleaved",
            if cfg.quick { " (QUICK: not the issue's sizes)" } else { "" },
            cfg.bulk_bytes >> 20,
            cfg.reps,
            cfg.pings,
            cfg.burst_conns,
            cfg.burst_rounds,
            cfg.reps
        );
        let load = |l: Option<[f64; 3]>| {
            l.map_or_else(|| "n/a".to_owned(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
        };
        let _ = writeln!(
            t,
            "machine: {} cores; load average (1/5/15 min) {} at the start, {} at the end",
            self.cores,
            load(self.load_before),
            load(self.load_after)
        );
        for path in &self.paths {
            let _ = writeln!(t, "\n## {} — {}\n", path.name, path.description);
            self.path_table(&mut t, path);
        }
        self.door_cost_table(&mut t);
        let verdicts = self.verdicts();
        if !verdicts.is_empty() {
            let _ = writeln!(
                t,
                "\n## targets (loopback, the whole path: relay and door, ratios from this run)\n"
            );
            let _ = writeln!(t, "| target | measured | verdict |");
            let _ = writeln!(t, "|---|---|---|");
            for v in &verdicts {
                let verdict = match &v.outcome {
                    Ok(()) => "met".to_owned(),
                    Err(why) => format!("**MISSED**: {why}"),
                };
                let _ = writeln!(t, "| {} | {} | {verdict} |", v.target, v.measured);
            }
        }
        if !self.setup.is_empty() {
            let n = self.setup.len();
            let med = |f: fn(&SetupRun) -> f64| {
                median(&self.setup.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
            };
            let _ = writeln!(t, "\n## session set-up in the lab (median of {n})\n");
            let _ = writeln!(t, "| step | ms |");
            let _ = writeln!(t, "|---|---|");
            let _ = writeln!(
                t,
                "| ssh start → helper start (ssh, shim, salloc, scheduling, srun) | {:.0} |",
                med(|r| r.ssh_to_helper_ms)
            );
            let _ = writeln!(
                t,
                "| helper start → `listeningOn` at the client | {:.0} |",
                med(|r| r.helper_to_listening_ms)
            );
            let _ =
                writeln!(t, "| of which the test server's own start | {:.0} |", med(|r| r.server_start_ms));
            let _ =
                writeln!(t, "| **set-up overhead** (the difference) | **{:.0}** |", med(|r| r.overhead_ms));
        }
        if let Some(proxy) = &self.proxy {
            t.push_str(&proxy.table());
        }
        if let Some(e) = &self.lab_error {
            let _ = writeln!(t, "\nlab: {e}");
        }
        t
    }

    /// One path's table: a column per variant, ratios against direct.
    fn path_table(&self, t: &mut String, path: &PathReport) {
        let (cfg, cores) = (&self.cfg, self.cores);
        let bytes = cfg.bulk_bytes;
        let m = &path.measured;
        let d = &m[0];
        let row = |t: &mut String, name: &str, cell: &dyn Fn(usize, &Measured) -> String| {
            let cells: Vec<String> = m.iter().enumerate().map(|(k, x)| cell(k, x)).collect();
            let _ = writeln!(t, "| {name} | {} |", cells.join(" | "));
        };
        let names: Vec<&str> = VARIANTS.iter().map(|v| v.name()).collect();
        let _ = writeln!(t, "| | {} |", names.join(" | "));
        let _ = writeln!(t, "|---|{}", "---|".repeat(N));
        row(t, "bulk throughput", &|k, x| match (x.bulk_gbps(bytes), d.bulk_gbps(bytes)) {
            (Some(g), Some(base)) if k > 0 => format!("{g:.2} GB/s ({:.2}×)", g / base),
            (Some(g), _) => format!("{g:.2} GB/s"),
            _ => "n/a".into(),
        });
        // The relay's and the door's CPU, each where it is on the path.
        let cpu = |relay: Option<f64>, door: Option<f64>, unit: &str, digits: usize| {
            let relay = relay.map(|v| format!("{v:.digits$} {unit}"));
            let door = door.map(|v| format!("door {v:.digits$} {unit}"));
            match (relay, door) {
                (Some(r), Some(d)) => format!("{r} + {d}"),
                (Some(one), None) | (None, Some(one)) => one,
                (None, None) => "–".into(),
            }
        };
        row(t, "relay (+ door) CPU per GiB", &|k, x| {
            let relay = VARIANTS[k].has_relay().then(|| x.cpu_per_gib(bytes)).flatten();
            let door = VARIANTS[k].has_door().then(|| x.door_cpu_per_gib(bytes)).flatten();
            cpu(relay, door, "s", 2)
        });
        row(t, "relay (+ door) CPU per round trip", &|k, x| {
            let relay = VARIANTS[k].has_relay().then(|| x.cpu_per_rtt_us()).flatten();
            let door = VARIANTS[k].has_door().then(|| x.door_cpu_per_rtt_us()).flatten();
            cpu(relay, door, "µs", 1)
        });
        let added = |k: usize, v: Option<f64>, base: Option<f64>| match (v, base) {
            (Some(v), Some(base)) if k > 0 => format!("{v:.1} µs ({:+.1} µs, {:.2}×)", v - base, v / base),
            (Some(v), _) => format!("{v:.1} µs"),
            _ => "n/a".into(),
        };
        row(t, "round trip p50", &|k, x| added(k, x.p50_us(), d.p50_us()));
        row(t, "round trip p99", &|k, x| added(k, x.p99_us(), d.p99_us()));
        row(t, "connection set-up p50", &|k, x| added(k, x.setup_p50_us(), d.setup_p50_us()));
        row(t, "connection set-up p99", &|k, x| added(k, x.setup_p99_us(), d.setup_p99_us()));
        row(t, &format!("{}-connection burst", cfg.burst_conns), &|k, x| match (
            x.burst_median(),
            d.burst_median(),
        ) {
            (Some(v), Some(base)) if k > 0 => {
                format!("{v:.3} s ({:.2}×), {} errors", v / base, x.burst_errors)
            }
            (Some(v), _) => format!("{v:.3} s, {} errors", x.burst_errors),
            _ => format!("n/a, {} errors", x.burst_errors),
        });
        let busy = |v: Option<f64>, time: Option<f64>| match (v, time) {
            (Some(v), Some(time)) => {
                format!("{v:.2} s ({:.0}% of {cores} cores)", v / time / cores as f64 * 100.0)
            }
            _ => "n/a".into(),
        };
        row(t, "machine CPU busy per bulk run", &|_, x| busy(x.bulk_machine_median(), median(&x.bulk_secs)));
        row(t, "machine CPU busy per burst", &|_, x| busy(x.burst_machine_median(), x.burst_median()));
        if let Some(fp) = &path.footprint {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let _ = writeln!(
                t,
                "| RSS, {} idle connections{} | – | {:.2} MiB (no connections: {:.2} MiB) | door {:.2} MiB (no connections: {:.2} MiB) | {:.2} MiB in {} processes |",
                fp.conns,
                if fp.fresh { "" } else { ", after the load above" },
                mib(fp.shim_rss_kib),
                mib(fp.shim_rss_empty_kib),
                mib(fp.door_rss_kib),
                mib(fp.door_rss_empty_kib),
                mib(fp.socat_rss_kib),
                fp.socat_processes
            );
            if let Some(after) = fp.shim_rss_after_load_kib {
                let _ = writeln!(
                    t,
                    "| RSS, {} connections, after the load above | – | {:.2} MiB | – | – |",
                    fp.conns,
                    mib(after)
                );
            }
            let _ = writeln!(
                t,
                "| CPU ticks over {} s idle | – | {} | door {} | {} |",
                fp.idle_secs, fp.shim_idle_ticks, fp.door_idle_ticks, fp.socat_idle_ticks
            );
        }
        for (v, x) in VARIANTS.iter().zip(m) {
            for e in &x.errors {
                let _ = writeln!(t, "\n{} error: {e}", v.name());
            }
        }
    }

    /// The door's cost on every path, as ratios against direct measured in
    /// the same run: the door alone, and the whole path it is part of.
    fn door_cost_table(&self, t: &mut String) {
        if self.paths.is_empty() {
            return;
        }
        let bytes = self.cfg.bulk_bytes;
        let _ = writeln!(t, "\n## the door's cost (against direct, same run)\n");
        let _ = writeln!(
            t,
            "| path | through | connection set-up p50 | bulk throughput | round trip p50 | round trip p99 |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|");
        for path in &self.paths {
            let d = &path.measured[0];
            for (k, label) in [(2, "door alone"), (1, "relay + door")] {
                let x = &path.measured[k];
                let time = |v: Option<f64>, base: Option<f64>| match (v, base) {
                    (Some(v), Some(base)) => format!("{:.2}× ({v:.0} vs {base:.0} µs)", v / base),
                    _ => "n/a".into(),
                };
                let bulk = match (x.bulk_gbps(bytes), d.bulk_gbps(bytes)) {
                    (Some(v), Some(base)) => format!("{:.2}× ({v:.2} vs {base:.2} GB/s)", v / base),
                    _ => "n/a".into(),
                };
                let rtt = |v: Option<f64>, base: Option<f64>| match (v, base) {
                    (Some(v), Some(base)) => format!("{:.2}× ({:+.1} µs)", v / base, v - base),
                    _ => "n/a".into(),
                };
                let _ = writeln!(
                    t,
                    "| {} | {label} | {} | {bulk} | {} | {} |",
                    path.name,
                    time(x.setup_p50_us(), d.setup_p50_us()),
                    rtt(x.p50_us(), d.p50_us()),
                    rtt(x.p99_us(), d.p99_us())
                );
            }
        }
    }

    pub fn json(&self) -> String {
        let cfg = &self.cfg;
        let num = |v: Option<f64>| {
            v.filter(|x| x.is_finite()).map_or_else(|| "null".to_owned(), |x| format!("{x:.6}"))
        };
        let mut j = String::new();
        let started = self.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let _ = write!(
            j,
            "{{\n  \"started_unix\": {started},\n  \"cores\": {},\n  \"load_average_start\": {},\n  \"load_average_end\": {},\n  \"quick\": {},\n  \"config\": {{\"bulk_bytes\": {}, \"repetitions\": {}, \
             \"ping_pongs\": {}, \"ping_bytes\": 64, \"burst_connections\": {}, \"burst_ping_pongs\": {}, \
             \"set_up_connections\": {}, \"idle_connections\": {}, \"idle_seconds\": {}}},\n  \"paths\": [",
            self.cores,
            self.load_before.map_or_else(|| "null".to_owned(), |l| format!("{l:?}")),
            self.load_after.map_or_else(|| "null".to_owned(), |l| format!("{l:?}")),
            cfg.quick,
            cfg.bulk_bytes,
            cfg.reps,
            cfg.pings,
            cfg.burst_conns,
            cfg.burst_rounds,
            cfg.connects,
            cfg.hold_conns,
            cfg.idle.as_secs()
        );
        for (i, path) in self.paths.iter().enumerate() {
            let _ = write!(
                j,
                "{}\n    {{\"name\": {}, \"description\": {}, \"variants\": {{",
                if i > 0 { "," } else { "" },
                json_string(&path.name),
                json_string(&path.description)
            );
            let d = &path.measured[0];
            for (k, (v, m)) in VARIANTS.iter().zip(&path.measured).enumerate() {
                let bytes = cfg.bulk_bytes;
                let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
                let (relay, door) = (v.has_relay(), v.has_door());
                let _ = write!(
                    j,
                    "{}\n      {}: {{\"label\": {}, \"bulk_gb_per_s\": {}, \"bulk_ratio\": {}, \"bulk_seconds\": {:?}, \
                     \"relay_cpu_s_per_gib\": {}, \"relay_cpu_us_per_round_trip\": {}, \
                     \"door_cpu_s_per_gib\": {}, \"door_cpu_us_per_round_trip\": {}, \
                     \"set_up_p50_us\": {}, \"set_up_p99_us\": {}, \"set_up_p50_ratio\": {}, \"set_up_samples\": {}, \
                     \"rtt_p50_us\": {}, \"rtt_p99_us\": {}, \"rtt_p50_added_us\": {}, \
                     \"rtt_samples\": {}, \"burst_seconds_median\": {}, \"burst_ratio\": {}, \"burst_seconds\": {:?}, \
                     \"burst_errors\": {}, \"bulk_machine_busy_cpu_s\": {}, \"burst_machine_busy_cpu_s\": {}, \"errors\": [{}]}}",
                    if k > 0 { "," } else { "" },
                    json_string(v.key()),
                    json_string(v.name()),
                    num(m.bulk_gbps(bytes)),
                    num(ratio(m.bulk_gbps(bytes), d.bulk_gbps(bytes))),
                    m.bulk_secs,
                    num(m.cpu_per_gib(bytes).filter(|_| relay)),
                    num(m.cpu_per_rtt_us().filter(|_| relay)),
                    num(m.door_cpu_per_gib(bytes).filter(|_| door)),
                    num(m.door_cpu_per_rtt_us().filter(|_| door)),
                    num(m.setup_p50_us()),
                    num(m.setup_p99_us()),
                    num(ratio(m.setup_p50_us(), d.setup_p50_us())),
                    m.setup_ns.len(),
                    num(m.p50_us()),
                    num(m.p99_us()),
                    num(m.p50_us().zip(d.p50_us()).map(|(a, b)| a - b)),
                    m.rtt_ns.len(),
                    num(m.burst_median()),
                    num(ratio(m.burst_median(), d.burst_median())),
                    m.burst_secs,
                    m.burst_errors,
                    num(m.bulk_machine_median()),
                    num(m.burst_machine_median()),
                    m.errors.iter().map(|e| json_string(e)).collect::<Vec<_>>().join(", ")
                );
            }
            let _ = write!(j, "\n    }}");
            if let Some(fp) = &path.footprint {
                let _ = write!(
                    j,
                    ", \"footprint\": {{\"fresh_shim\": {}, \"connections\": {}, \"idle_seconds\": {}, \"shim_rss_kib\": {}, \
                     \"shim_rss_no_connections_kib\": {}, \"shim_rss_after_load_kib\": {}, \"shim_idle_ticks\": {}, \
                     \"door_rss_kib\": {}, \"door_rss_no_connections_kib\": {}, \"door_idle_ticks\": {}, \
                     \"socat_rss_kib\": {}, \"socat_processes\": {}, \"socat_idle_ticks\": {}}}",
                    fp.fresh,
                    fp.conns,
                    fp.idle_secs,
                    fp.shim_rss_kib,
                    fp.shim_rss_empty_kib,
                    fp.shim_rss_after_load_kib.map_or_else(|| "null".to_owned(), |v| v.to_string()),
                    fp.shim_idle_ticks,
                    fp.door_rss_kib,
                    fp.door_rss_empty_kib,
                    fp.door_idle_ticks,
                    fp.socat_rss_kib,
                    fp.socat_processes,
                    fp.socat_idle_ticks
                );
            }
            let _ = write!(j, "}}");
        }
        let _ = write!(j, "\n  ],\n  \"targets\": [");
        for (i, v) in self.verdicts().iter().enumerate() {
            let _ = write!(
                j,
                "{}\n    {{\"target\": {}, \"measured\": {}, \"met\": {}, \"note\": {}}}",
                if i > 0 { "," } else { "" },
                json_string(v.target),
                json_string(&v.measured),
                v.outcome.is_ok(),
                json_string(v.outcome.as_ref().err().map_or("", String::as_str))
            );
        }
        let _ = write!(j, "\n  ],\n  \"setup_ms\": [");
        for (i, r) in self.setup.iter().enumerate() {
            let _ = write!(
                j,
                "{}\n    {{\"ssh_to_helper\": {:.1}, \"helper_to_listening_on\": {:.1}, \"server_own_start\": {:.1}, \
                 \"overhead\": {:.1}}}",
                if i > 0 { "," } else { "" },
                r.ssh_to_helper_ms,
                r.helper_to_listening_ms,
                r.server_start_ms,
                r.overhead_ms
            );
        }
        let _ = write!(
            j,
            "\n  ],\n  \"proxy\": {},\n  \"lab_error\": {}\n}}\n",
            self.proxy.as_ref().map_or_else(|| "null".to_owned(), |p| p.json()),
            self.lab_error.as_ref().map_or_else(|| "null".to_owned(), |e| json_string(e))
        );
        j
    }

    pub fn chart(&self, path: &Path) -> Result<(), String> {
        crate::report::chart::draw(self, path)
    }
}

mod chart {
    //! One panel per path: each test's bars (one per variant) relative to
    //! direct (so "1.0" is direct), the absolute value written on each bar;
    //! and a panel for the shim's footprint.

    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    use plotters::style::FontStyle;

    use super::{Measured, Report};
    use crate::N;

    const FONT: &str = "sans-serif";
    const W: u32 = 1600;
    const PANEL_H: u32 = 330;
    const FOOT_H: u32 = 380;
    const COLORS: [RGBColor; N] =
        [RGBColor(150, 150, 150), RGBColor(33, 110, 200), RGBColor(60, 160, 90), RGBColor(230, 130, 40)];

    fn load_font() -> Result<(), String> {
        const CANDIDATES: [&str; 2] =
            ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];
        let bytes = CANDIDATES
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or("no DejaVuSans.ttf for the chart's text (apt-get install fonts-dejavu-core)")?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| "cannot load DejaVuSans.ttf".to_owned())
    }

    struct Metric {
        name: &'static str,
        better: &'static str,
        values: [Option<f64>; N],
        show: fn(f64) -> String,
        /// Failed connections, written in red above a bar.
        errors: [usize; N],
    }

    const HIGHER: &str = "higher is better";
    const LOWER: &str = "lower is better";

    /// A metric without failed connections to show.
    fn metric(
        name: &'static str,
        better: &'static str,
        values: [Option<f64>; N],
        show: fn(f64) -> String,
    ) -> Metric {
        Metric { name, better, values, show, errors: [0; N] }
    }

    fn metrics(report: &Report, m: &[Measured; N]) -> Vec<Metric> {
        let bytes = report.cfg.bulk_bytes;
        let each = |f: &dyn Fn(&Measured) -> Option<f64>| std::array::from_fn(|k| f(&m[k]));
        vec![
            metric("bulk throughput", HIGHER, each(&|x| x.bulk_gbps(bytes)), |v| format!("{v:.2} GB/s")),
            metric("round trip p50", LOWER, each(&|x| x.p50_us()), |v| format!("{v:.1} µs")),
            metric("round trip p99", LOWER, each(&|x| x.p99_us()), |v| format!("{v:.1} µs")),
            metric("connection set-up p50", LOWER, each(&|x| x.setup_p50_us()), |v| format!("{v:.0} µs")),
            Metric {
                errors: std::array::from_fn(|k| m[k].burst_errors),
                ..metric("200-connection burst", LOWER, each(&|x| x.burst_median()), |v| format!("{v:.3} s"))
            },
        ]
    }

    type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

    fn e<E: std::fmt::Debug>(err: E) -> String {
        format!("{err:?}")
    }

    fn text(
        area: &Area<'_>,
        s: &str,
        x: i32,
        y: i32,
        size: u32,
        color: &RGBColor,
        center: bool,
    ) -> Result<(), String> {
        let style = TextStyle::from((FONT, size).into_font()).color(color);
        let style = if center { style.pos(Pos::new(HPos::Center, VPos::Top)) } else { style };
        area.draw(&Text::new(s.to_owned(), (x, y), style)).map_err(e)
    }

    fn panel(area: &Area<'_>, report: &Report, index: usize) -> Result<(), String> {
        let path = &report.paths[index];
        let (w, h) = area.dim_in_pixel();
        let black = RGBColor(20, 20, 20);
        text(area, &format!("{}: relative to direct (1.0 = direct)", path.name), 20, 8, 20, &black, false)?;
        text(area, &path.description, 20, 32, 15, &RGBColor(60, 60, 60), false)?;
        let metrics = metrics(report, &path.measured);
        let ratios: Vec<[Option<f64>; N]> = metrics
            .iter()
            .map(|m| std::array::from_fn(|k| m.values[k].zip(m.values[0]).map(|(v, d)| v / d)))
            .collect();
        let top = ratios.iter().flatten().flatten().fold(1.0f64, |a, &b| a.max(b)) * 1.35;
        let (plot_top, plot_bottom) = (62i32, h as i32 - 48);
        let y_of = |r: f64| plot_bottom - ((r / top) * (plot_bottom - plot_top) as f64) as i32;
        let left = 60i32;
        let group_w = (w as i32 - left - 20) / metrics.len() as i32;
        // The direct line and the axis.
        area.draw(&PathElement::new(
            vec![(left, y_of(1.0)), (w as i32 - 20, y_of(1.0))],
            RGBColor(120, 120, 120),
        ))
        .map_err(e)?;
        text(area, "1.0", 28, y_of(1.0) - 7, 13, &black, false)?;
        area.draw(&PathElement::new(vec![(left, plot_bottom), (w as i32 - 20, plot_bottom)], black))
            .map_err(e)?;
        for (g, (metric, ratio)) in metrics.iter().zip(&ratios).enumerate() {
            let x0 = left + g as i32 * group_w;
            let bar_w = group_w / (N as i32 + 1);
            for k in 0..N {
                let x = x0 + bar_w / 2 + k as i32 * bar_w;
                let Some(r) = ratio[k] else { continue };
                area.draw(&Rectangle::new(
                    [(x + 3, y_of(r)), (x + bar_w - 3, plot_bottom)],
                    COLORS[k].filled(),
                ))
                .map_err(e)?;
                let abs = metric.values[k].map(metric.show).unwrap_or_default();
                text(area, &abs, x + bar_w / 2, y_of(r) - 34, 12, &black, true)?;
                text(area, &format!("{r:.2}×"), x + bar_w / 2, y_of(r) - 18, 12, &black, true)?;
                if metric.errors[k] > 0 {
                    let red = RGBColor(200, 0, 0);
                    text(
                        area,
                        &format!("{} errors", metric.errors[k]),
                        x + bar_w / 2,
                        y_of(r) - 50,
                        12,
                        &red,
                        true,
                    )?;
                }
            }
            text(area, metric.name, x0 + group_w / 2, plot_bottom + 6, 15, &black, true)?;
            text(area, metric.better, x0 + group_w / 2, plot_bottom + 25, 12, &RGBColor(90, 90, 90), true)?;
        }
        // Legend.
        for (k, v) in super::VARIANTS.iter().enumerate() {
            let x = w as i32 - 720 + k as i32 * 175;
            area.draw(&Rectangle::new([(x, 12), (x + 16, 28)], COLORS[k].filled())).map_err(e)?;
            text(area, v.name(), x + 22, 12, 15, &black, false)?;
        }
        Ok(())
    }

    fn footprint(area: &Area<'_>, report: &Report) -> Result<(), String> {
        let black = RGBColor(20, 20, 20);
        let Some(lo) = report.paths.iter().find(|p| p.name == "loopback") else { return Ok(()) };
        let Some(fp) = &lo.footprint else { return Ok(()) };
        let (w, h) = area.dim_in_pixel();
        text(
            area,
            &format!(
                "footprint (loopback): RSS with {} idle connections, CPU while idle, relay and door CPU per GiB",
                fp.conns
            ),
            20,
            8,
            20,
            &black,
            false,
        )?;
        let bytes = report.cfg.bulk_bytes;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let cpu = |v: Option<f64>| (v.unwrap_or(0.0), format!("{:.2} s", v.unwrap_or(f64::NAN)));
        let (shim_cpu, door_cpu, socat_cpu) = (
            cpu(lo.measured[1].cpu_per_gib(bytes)),
            cpu(lo.measured[1].door_cpu_per_gib(bytes)),
            cpu(lo.measured[3].cpu_per_gib(bytes)),
        );
        // RSS rows first, then CPU rows; the colour is the variant's.
        let bars: [(&str, f64, String, usize); 6] = [
            ("vscode-shim RSS", mib(fp.shim_rss_kib), format!("{:.2} MiB", mib(fp.shim_rss_kib)), 1),
            ("door RSS", mib(fp.door_rss_kib), format!("{:.2} MiB", mib(fp.door_rss_kib)), 2),
            (
                "socat RSS",
                mib(fp.socat_rss_kib),
                format!("{:.2} MiB ({} processes)", mib(fp.socat_rss_kib), fp.socat_processes),
                3,
            ),
            ("vscode-shim CPU/GiB", shim_cpu.0, shim_cpu.1, 1),
            ("door CPU/GiB (shim's path)", door_cpu.0, door_cpu.1, 2),
            ("socat CPU/GiB", socat_cpu.0, socat_cpu.1, 3),
        ];
        let (label_w, row_h, top) = (230i32, 32i32, 46i32);
        let max_rss = bars[..3].iter().fold(3.0f64, |a, b| a.max(b.1)) * 1.1;
        let max_cpu = bars[3..].iter().fold(0.01f64, |a, b| a.max(b.1)) * 1.1;
        let span = (w as i32 - label_w - 300) as f64;
        for (i, (name, value, shown, color)) in bars.iter().enumerate() {
            let y = top + i as i32 * row_h;
            let scale = if i < 3 { max_rss } else { max_cpu };
            let len = (value / scale * span) as i32;
            text(area, name, 20, y + 6, 15, &black, false)?;
            area.draw(&Rectangle::new(
                [(label_w, y), (label_w + len.max(1), y + row_h - 8)],
                COLORS[*color].filled(),
            ))
            .map_err(e)?;
            text(area, shown, label_w + len + 8, y + 6, 14, &black, false)?;
        }
        // The shim's RSS target, on the RSS rows' scale.
        let x = label_w + (3.0 / max_rss * span) as i32;
        area.draw(&PathElement::new(vec![(x, top - 4), (x, top + row_h - 4)], RED.stroke_width(2)))
            .map_err(e)?;
        text(area, "3 MiB target", x + 4, top - 18, 12, &RGBColor(200, 0, 0), false)?;
        let y0 = top + bars.len() as i32 * row_h + 4;
        let idle = format!(
            "CPU ticks over {} s idle: vscode-shim {}, door {}, socat {}",
            fp.idle_secs, fp.shim_idle_ticks, fp.door_idle_ticks, fp.socat_idle_ticks
        );
        text(area, &idle, 20, y0, 14, &black, false)?;
        // The targets, two to a line.
        let verdicts = report.verdicts();
        for (i, pair) in verdicts.chunks(2).enumerate() {
            let line: Vec<String> = pair
                .iter()
                .map(|v| {
                    format!(
                        "{}: {} ({})",
                        v.target,
                        v.measured,
                        if v.outcome.is_ok() { "met" } else { "MISSED" }
                    )
                })
                .collect();
            text(area, &line.join("      "), 20, y0 + 22 + i as i32 * 20, 14, &black, false)?;
        }
        let _ = h;
        Ok(())
    }

    pub fn draw(report: &Report, path: &std::path::Path) -> Result<(), String> {
        load_font()?;
        let panels = report.paths.len() as u32;
        let height = 50 + panels * PANEL_H + FOOT_H;
        let root = BitMapBackend::new(path, (W, height)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let title = format!(
            "vscode-shim relay and door vs direct and socat{}",
            if report.cfg.quick { " — QUICK run, not the issue's sizes" } else { "" }
        );
        text(&root, &title, 20, 12, 24, &RGBColor(0, 0, 0), false)?;
        let (_, rest) = root.split_vertically(50);
        let mut rest = rest;
        for i in 0..report.paths.len() {
            let (area, below) = rest.split_vertically(PANEL_H);
            panel(&area, report, i)?;
            rest = below;
        }
        footprint(&rest, report)?;
        root.present().map_err(e)
    }
}
