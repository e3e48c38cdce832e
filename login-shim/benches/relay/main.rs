//! Relay benchmark: a direct connection, the session's whole path (the
//! `vscode-shim` relay, then the door in `vscode-job-helper`), the door
//! alone (the client speaks the door's handshake itself) and socat,
//! measured in one run, interleaved, on loopback and (with `--lab`) in the
//! lab cluster. Prints a table with ratios against direct, the door's cost
//! and the issue's targets, and writes it as JSON and PNG to
//! `<target>/bench/relay.{json,png}`.
//!
//! ```text
//! cargo bench -p vscode-shim --bench relay              # loopback only
//! sudo tests/bench-relay                                 # loopback and the lab
//! cargo bench -p vscode-shim --bench relay -- --quick    # a smoke run, small sizes
//! ```
//!
//! The same binary plays the lab's far ends: `serve` (the server on the
//! compute node) and `client` (one measurement, run on a lab host).

mod lab;
mod procs;
mod proxy;
mod report;
mod work;

use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use procs::{LocalSession, Relay, Socat};
use report::{Footprint, Measured, PathReport, Report, VARIANTS};
use vscode_slurm_protocol::door::DoorKey;
use work::Route;

const GIB: u64 = 1 << 30;
/// Ping-pong series per variant and repetition.
const PING_SERIES_PER_REP: usize = 4;

#[derive(Debug, Clone)]
pub struct Config {
    pub bulk_bytes: u64,
    pub reps: usize,
    /// Ping-pong samples per variant, split evenly over the repetitions.
    pub pings: usize,
    pub burst_conns: usize,
    pub burst_rounds: usize,
    /// Fresh connections timed per variant (connection set-up), split
    /// evenly over the repetitions.
    pub connects: usize,
    pub hold_conns: usize,
    pub idle: Duration,
    pub setup_runs: usize,
    pub quick: bool,
}

impl Config {
    fn full() -> Config {
        Config {
            bulk_bytes: GIB,
            reps: 5,
            pings: 20_000,
            burst_conns: 200,
            burst_rounds: 100,
            connects: 1000,
            hold_conns: 8,
            idle: Duration::from_secs(10),
            setup_runs: 3,
            quick: false,
        }
    }

    fn quick() -> Config {
        Config {
            bulk_bytes: 64 << 20,
            reps: 2,
            pings: 2_000,
            connects: 100,
            idle: Duration::from_secs(2),
            setup_runs: 1,
            quick: true,
            ..Config::full()
        }
    }
}

/// Runs one measurement somewhere: in this process, or on a lab host.
pub trait Runner {
    fn bulk(&self, route: Route, bytes: u64) -> io::Result<f64>;
    fn ping_pong(&self, route: Route, count: usize) -> io::Result<Vec<u64>>;
    fn burst(&self, route: Route, conns: usize, rounds: usize) -> io::Result<(f64, usize)>;
    fn setup(&self, route: Route, count: usize) -> io::Result<Vec<u64>>;
}

struct Local;

impl Runner for Local {
    fn bulk(&self, route: Route, bytes: u64) -> io::Result<f64> {
        work::bulk(route, bytes).map(|d| d.as_secs_f64())
    }
    fn ping_pong(&self, route: Route, count: usize) -> io::Result<Vec<u64>> {
        work::ping_pong(route, count)
    }
    fn burst(&self, route: Route, conns: usize, rounds: usize) -> io::Result<(f64, usize)> {
        let (took, errors) = work::burst(route, conns, rounds);
        Ok((took.as_secs_f64(), errors))
    }
    fn setup(&self, route: Route, count: usize) -> io::Result<Vec<u64>> {
        work::setup(route, count)
    }
}

/// One variant's way to the server, and the processes on it whose CPU the
/// benchmark charges to it: a relay (the shim, socat) and the door.
#[derive(Clone, Copy)]
pub struct Way {
    pub route: Route,
    pub relay: Option<Relay>,
    pub door: Option<Relay>,
}

impl Way {
    fn ticks(&self) -> (u64, u64) {
        (self.relay.map_or(0, |r| r.ticks()), self.door.map_or(0, |d| d.ticks()))
    }

    /// Relay and door CPU seconds since `before`.
    fn cpu_since(&self, before: (u64, u64)) -> (f64, f64) {
        if let Some(relay) = self.relay {
            relay.settle();
        }
        let (relay, door) = self.ticks();
        let secs = |ticks: u64| ticks as f64 / procs::clock_ticks_per_second();
        (secs(relay.saturating_sub(before.0)), secs(door.saturating_sub(before.1)))
    }

    fn settle(&self) {
        if let Some(relay) = self.relay {
            relay.settle();
        }
    }
}

/// Every test, every repetition, the variants back to back (in an order
/// that rotates each repetition), so that whatever else the machine is
/// doing falls on all of them alike.
pub fn measure(cfg: &Config, runner: &dyn Runner, ways: [Way; N], label: &str) -> [Measured; N] {
    let mut out: [Measured; N] = Default::default();
    let pings_per_series = cfg.pings.div_ceil(cfg.reps * PING_SERIES_PER_REP);
    let connects_per_rep = cfg.connects.div_ceil(cfg.reps);
    for rep in 0..cfg.reps {
        let order: Vec<usize> = (0..N).map(|k| (rep + k) % N).collect();
        eprint!("{label}: repetition {}/{}: bulk", rep + 1, cfg.reps);
        for &v in &order {
            let way = ways[v];
            let before = way.ticks();
            let machine_before = procs::machine_busy_secs();
            match runner.bulk(way.route, cfg.bulk_bytes) {
                Ok(secs) => {
                    out[v].bulk_secs.push(secs);
                    out[v].bulk_machine_secs.push(procs::machine_busy_secs() - machine_before);
                }
                Err(e) => out[v].errors.push(format!("bulk: {e}")),
            }
            let (relay, door) = way.cpu_since(before);
            if way.relay.is_some() {
                out[v].cpu_secs.push(relay);
            }
            if way.door.is_some() {
                out[v].door_cpu_secs.push(door);
            }
        }
        eprint!(", ping-pong");
        // Shorter series, more often interleaved: a round trip is short
        // enough that the machine's load changes between longer series.
        for _ in 0..PING_SERIES_PER_REP {
            for &v in &order {
                let way = ways[v];
                let before = way.ticks();
                match runner.ping_pong(way.route, pings_per_series) {
                    Ok(samples) => {
                        let (relay, door) = way.cpu_since(before);
                        out[v].ping.relay_secs += relay;
                        out[v].ping.door_secs += door;
                        out[v].ping.round_trips += samples.len() + work::WARM_UP;
                        out[v].rtt_ns.extend(samples);
                    }
                    Err(e) => out[v].errors.push(format!("ping-pong: {e}")),
                }
            }
        }
        eprint!(", set-up");
        for &v in &order {
            match runner.setup(ways[v].route, connects_per_rep) {
                Ok(samples) => out[v].setup_ns.extend(samples),
                Err(e) => out[v].errors.push(format!("set-up: {e}")),
            }
            ways[v].settle();
        }
        eprint!(", burst");
        for &v in &order {
            let machine_before = procs::machine_busy_secs();
            match runner.burst(ways[v].route, cfg.burst_conns, cfg.burst_rounds) {
                Ok((secs, errors)) => {
                    out[v].burst_secs.push(secs);
                    out[v].burst_machine_secs.push(procs::machine_busy_secs() - machine_before);
                    out[v].burst_errors += errors;
                }
                Err(e) => out[v].errors.push(format!("burst: {e}")),
            }
            // Lets the burst's sockets and socat's children wind down.
            ways[v].settle();
        }
        eprintln!();
    }
    out
}

/// How many variants each path measures (see [`report::VARIANTS`]).
pub const N: usize = VARIANTS.len();

/// The shim's, its door's and socat's memory with `count` idle connections
/// open, and the CPU ticks they use over `cfg.idle` with nothing happening.
/// `hold` opens the connections (through the given relay's port) and keeps
/// them open until the returned guard is dropped.
pub fn footprint<G>(
    cfg: &Config,
    shim: Relay,
    door: Relay,
    socat: Relay,
    mut hold: impl FnMut(u16) -> io::Result<G>,
) -> io::Result<Footprint> {
    let (shim_rss_empty, door_rss_empty) = (shim.rss_kib(), door.rss_kib());
    let held_shim = hold(shim.port)?;
    let held_socat = hold(socat.port)?;
    // The measurement is of processes at rest: what the set-up woke (in
    // the kernel, the allocators, socat's forks) is given a moment to quiet.
    // allow-sleep: a pause that is part of the measurement; nothing announces quiet
    thread::sleep(Duration::from_millis(500));
    let (shim_rss, door_rss) = (shim.rss_kib(), door.rss_kib());
    let (socat_rss, socat_processes) = (socat.rss_kib(), socat.processes());
    let (shim_before, door_before, socat_before) = (shim.ticks(), door.ticks(), socat.ticks());
    // allow-sleep: the idle period is the workload; its CPU is what is measured.
    thread::sleep(cfg.idle);
    let (shim_after, door_after, socat_after) = (shim.ticks(), door.ticks(), socat.ticks());
    drop((held_shim, held_socat));
    Ok(Footprint {
        fresh: true,
        conns: cfg.hold_conns,
        idle_secs: cfg.idle.as_secs(),
        shim_rss_empty_kib: shim_rss_empty,
        shim_rss_kib: shim_rss,
        shim_idle_ticks: shim_after.saturating_sub(shim_before),
        door_rss_empty_kib: door_rss_empty,
        door_rss_kib: door_rss,
        door_idle_ticks: door_after.saturating_sub(door_before),
        socat_rss_kib: socat_rss,
        socat_processes,
        socat_idle_ticks: socat_after.saturating_sub(socat_before),
        shim_rss_after_load_kib: None,
    })
}

/// The four ways to the loopback server of `session`.
fn loopback_ways(server: SocketAddr, session: &LocalSession, socat: &Socat) -> [Way; N] {
    let local = |port| Route::tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    let (shim, door) = (session.shim.relay, session.door.relay);
    [
        Way { route: Route::tcp(server), relay: None, door: None },
        Way { route: local(shim.port), relay: Some(shim), door: Some(door) },
        Way {
            route: Route::tcp(session.door.endpoint).through_door(session.key),
            relay: None,
            door: Some(door),
        },
        Way { route: local(socat.relay.port), relay: Some(socat.relay), door: None },
    ]
}

fn loopback(cfg: &Config) -> io::Result<PathReport> {
    let server = work::spawn_server(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    eprintln!("loopback: the door is {}", procs::helper_binary()?.display());
    let session = LocalSession::start(server)?;
    let socat = Socat::local(server)?;
    let ways = loopback_ways(server, &session, &socat);
    let measured = measure(cfg, &Local, ways, "loopback");
    let shim_rss_after_load = {
        let _held = work::hold(ways[1].route, cfg.hold_conns)?;
        // The memory is read once the connections' set-up has gone quiet.
        // allow-sleep: a pause that is part of the measurement, as in `footprint`
        thread::sleep(Duration::from_millis(200));
        session.shim.relay.rss_kib()
    };
    drop((session, socat));

    // The footprint of a fresh shim and door, as a login node and a
    // compute node have them: one session, a few open connections,
    // nothing to do.
    eprintln!("loopback: footprint with {} idle connections over {:?}", cfg.hold_conns, cfg.idle);
    let (session, socat) = (LocalSession::start(server)?, Socat::local(server)?);
    let local = |port| Route::tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    let mut footprint = footprint(cfg, session.shim.relay, session.door.relay, socat.relay, |port| {
        work::hold(local(port), cfg.hold_conns)
    })?;
    footprint.shim_rss_after_load_kib = Some(shim_rss_after_load);
    Ok(PathReport {
        name: "loopback".into(),
        description: "client, server, relay and door on 127.0.0.1 of one machine: their own cost".into(),
        measured,
        footprint: Some(footprint),
    })
}

/// `<target>/bench`, found from this binary's own place (`<target>/release/deps/`).
fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe.ancestors().nth(3).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    target.join("bench")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.first().map(String::as_str) {
        Some("serve") => role_serve(&args[1..]),
        Some("client") => role_client(&args[1..]),
        _ => orchestrate(&args),
    }
}

fn orchestrate(args: &[String]) {
    let mut cfg = Config::full();
    let mut with_lab = false;
    let mut bulk_mib = None;
    let mut pings = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => cfg = Config::quick(),
            "--lab" => with_lab = true,
            "--bulk-mib" => bulk_mib = args.next().and_then(|v| v.parse::<u64>().ok()),
            "--pings" => pings = args.next().and_then(|v| v.parse::<usize>().ok()),
            other => {
                eprintln!("relay bench: unknown argument {other:?}; usage: relay [--quick] [--lab] [--bulk-mib N] [--pings N]");
                std::process::exit(2);
            }
        }
    }
    if let Some(mib) = bulk_mib {
        cfg.bulk_bytes = mib << 20;
    }
    if let Some(pings) = pings {
        cfg.pings = pings;
    }
    let mut report = Report::new(cfg.clone());
    match loopback(&cfg) {
        Ok(path) => report.paths.push(path),
        Err(e) => {
            eprintln!("relay bench: loopback part failed: {e}");
            std::process::exit(1);
        }
    }
    if with_lab {
        match lab::run(&cfg) {
            Ok((paths, setup, proxy)) => {
                report.paths.extend(paths);
                report.setup = setup;
                report.proxy = Some(proxy);
            }
            Err(e) => report.lab_error = Some(e),
        }
    } else {
        report.lab_error = Some("not run (pass --lab with the lab up, or use tests/bench-relay)".into());
    }
    report.load_after = procs::load_average();
    print!("{}", report.table());
    let dir = out_dir();
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("relay.json"), report.json()))
        .map_err(|e| e.to_string())
        .and_then(|()| report.chart(&dir.join("relay.png")));
    match written {
        Ok(()) => println!(
            "\nwritten: {} and {}",
            dir.join("relay.json").display(),
            dir.join("relay.png").display()
        ),
        Err(e) => {
            eprintln!("relay bench: cannot write the results to {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
    if report.lab_error.is_some() && with_lab {
        std::process::exit(1);
    }
}

/// `serve --host=H --port=P`: the server on a lab host, until its stdin
/// closes (whoever started it ends it so, through `labctl exec`).
fn role_serve(args: &[String]) {
    let value = |flag: &str| args.iter().find_map(|a| a.strip_prefix(flag)).map(str::to_owned);
    let host = value("--host=").unwrap_or_else(|| "127.0.0.1".into());
    let port = value("--port=").unwrap_or_else(|| "0".into());
    let addr: SocketAddr = match format!("{host}:{port}").parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("serve: bad address {host}:{port}: {e}");
            std::process::exit(2);
        }
    };
    let listener = match work::listen(addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("serve: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    println!("bench server at {local}");
    let _ = io::stdout().flush();
    thread::spawn(move || work::serve(listener));
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        line.clear();
    }
}

/// `client --route R --test bulk|ping|setup|burst|hold ...`: one
/// measurement, its result on stdout as one line. A route through a door
/// (`door ADDR…`) reads the session's door key from the first line of stdin.
fn role_client(args: &[String]) {
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let number = |flag: &str| value(flag).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let fail = |e: String| -> ! {
        println!("error {e}");
        std::process::exit(1);
    };
    let (route, door) = Route::parse(&value("--route").unwrap_or_default()).unwrap_or_else(|e| fail(e));
    let route = if door {
        let mut line = String::new();
        let _ = io::stdin().lock().read_line(&mut line);
        let key = DoorKey::parse(line.trim()).unwrap_or_else(|e| fail(format!("door key on stdin: {e}")));
        route.through_door(Box::leak(Box::new(key)))
    } else {
        route
    };
    match value("--test").as_deref() {
        Some("bulk") => match work::bulk(route, number("--bytes")) {
            Ok(took) => println!("bulk {}", took.as_secs_f64()),
            Err(e) => fail(e.to_string()),
        },
        Some("ping") => match work::ping_pong(route, number("--count") as usize) {
            Ok(samples) => {
                let text: Vec<String> = samples.iter().map(u64::to_string).collect();
                println!("ping {}", text.join(" "));
            }
            Err(e) => fail(e.to_string()),
        },
        Some("setup") => match work::setup(route, number("--count") as usize) {
            Ok(samples) => {
                let text: Vec<String> = samples.iter().map(u64::to_string).collect();
                println!("setup {}", text.join(" "));
            }
            Err(e) => fail(e.to_string()),
        },
        Some("burst") => {
            let (took, errors) = work::burst(route, number("--conns") as usize, number("--rounds") as usize);
            println!("burst {} {errors}", took.as_secs_f64());
        }
        Some("hold") => match work::hold(route, number("--count") as usize) {
            Ok(held) => {
                println!("held {}", held.len());
                let _ = io::stdout().flush();
                // Until whoever started us closes our stdin.
                let mut line = String::new();
                while io::stdin().lock().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    line.clear();
                }
            }
            Err(e) => fail(e.to_string()),
        },
        other => fail(format!("unknown --test {other:?}")),
    }
}
