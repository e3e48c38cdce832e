//! Relay benchmark: a direct connection, the `vscode-shim` relay and socat,
//! measured in one run, interleaved, on loopback and (with `--lab`) in the
//! lab cluster. Prints a table with ratios against direct and the issue's
//! targets, and writes it as JSON and PNG to `<target>/bench/relay.{json,png}`.
//!
//! ```text
//! cargo bench -p vscode-shim --bench relay              # loopback only
//! sudo tests/bench-relay                                 # loopback and the lab
//! cargo bench -p vscode-shim --bench relay -- --quick    # a smoke run, small sizes
//! ```
//!
//! The same binary plays the lab's far ends: `serve` (the server a session
//! starts in the job) and `client` (one measurement, run on a lab host).

mod lab;
mod procs;
mod report;
mod work;

use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use procs::{Relay, Shim, Socat};
use report::{Footprint, Measured, PathReport, Report};
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
}

/// Every test, every repetition, the three variants back to back (in an
/// order that rotates each repetition), so that whatever else the machine
/// is doing falls on all three alike.
pub fn measure(
    cfg: &Config,
    runner: &dyn Runner,
    routes: [Route; 3],
    relays: [Option<&dyn Relay>; 3],
    label: &str,
) -> [Measured; 3] {
    let mut out: [Measured; 3] = Default::default();
    let pings_per_series = cfg.pings.div_ceil(cfg.reps * PING_SERIES_PER_REP);
    for rep in 0..cfg.reps {
        let order: Vec<usize> = (0..3).map(|k| (rep + k) % 3).collect();
        eprint!("{label}: repetition {}/{}: bulk", rep + 1, cfg.reps);
        for &v in &order {
            let relay = relays[v];
            let before = relay.map(|r| r.ticks());
            let machine_before = procs::machine_busy_secs();
            match runner.bulk(routes[v], cfg.bulk_bytes) {
                Ok(secs) => {
                    out[v].bulk_secs.push(secs);
                    out[v].bulk_machine_secs.push(procs::machine_busy_secs() - machine_before);
                }
                Err(e) => out[v].errors.push(format!("bulk: {e}")),
            }
            if let (Some(relay), Some(before)) = (relay, before) {
                relay.settle();
                let ticks = relay.ticks().saturating_sub(before);
                out[v].cpu_secs.push(ticks as f64 / procs::clock_ticks_per_second());
            }
        }
        eprint!(", ping-pong");
        // Shorter series, more often interleaved: a round trip is short
        // enough that the machine's load changes between longer series.
        for _ in 0..PING_SERIES_PER_REP {
            for &v in &order {
                let relay = relays[v];
                let before = relay.map(|r| r.ticks());
                match runner.ping_pong(routes[v], pings_per_series) {
                    Ok(samples) => {
                        if let (Some(relay), Some(before)) = (relay, before) {
                            relay.settle();
                            let ticks = relay.ticks().saturating_sub(before);
                            out[v].ping_cpu_secs += ticks as f64 / procs::clock_ticks_per_second();
                            out[v].ping_cpu_count += samples.len() + work::WARM_UP;
                        }
                        out[v].rtt_ns.extend(samples);
                    }
                    Err(e) => out[v].errors.push(format!("ping-pong: {e}")),
                }
            }
        }
        eprint!(", burst");
        for &v in &order {
            let machine_before = procs::machine_busy_secs();
            match runner.burst(routes[v], cfg.burst_conns, cfg.burst_rounds) {
                Ok((secs, errors)) => {
                    out[v].burst_secs.push(secs);
                    out[v].burst_machine_secs.push(procs::machine_busy_secs() - machine_before);
                    out[v].burst_errors += errors;
                }
                Err(e) => out[v].errors.push(format!("burst: {e}")),
            }
            // Lets the burst's sockets and socat's children wind down.
            if let Some(relay) = relays[v] {
                relay.settle();
            }
        }
        eprintln!();
    }
    out
}

/// The shim's and socat's memory with `count` idle connections open, and
/// the CPU ticks they use over `cfg.idle` with nothing happening.
/// `hold` opens the connections (through the given relay's port) and keeps
/// them open until the returned guard is dropped.
pub fn footprint<G>(
    cfg: &Config,
    shim: &dyn Relay,
    socat: &dyn Relay,
    mut hold: impl FnMut(u16) -> io::Result<G>,
) -> io::Result<Footprint> {
    let shim_rss_empty = shim.rss_kib();
    let held_shim = hold(shim.port())?;
    let held_socat = hold(socat.port())?;
    // Let everything the set-up woke settle before counting.
    thread::sleep(Duration::from_millis(500));
    let (shim_rss, socat_rss, socat_processes) = (shim.rss_kib(), socat.rss_kib(), socat.processes());
    let (shim_before, socat_before) = (shim.ticks(), socat.ticks());
    thread::sleep(cfg.idle);
    let (shim_after, socat_after) = (shim.ticks(), socat.ticks());
    drop((held_shim, held_socat));
    Ok(Footprint {
        fresh: true,
        conns: cfg.hold_conns,
        idle_secs: cfg.idle.as_secs(),
        shim_rss_empty_kib: shim_rss_empty,
        shim_rss_kib: shim_rss,
        shim_idle_ticks: shim_after.saturating_sub(shim_before),
        socat_rss_kib: socat_rss,
        socat_processes,
        socat_idle_ticks: socat_after.saturating_sub(socat_before),
        shim_rss_after_load_kib: None,
    })
}

fn loopback(cfg: &Config) -> io::Result<PathReport> {
    let server = work::spawn_server(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let shim = Shim::start(server)?;
    let socat = Socat::local(server)?;
    let local = |port| Route::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    let routes = [Route::Tcp(server), local(shim.port()), local(socat.port())];
    let relays: [Option<&dyn Relay>; 3] = [None, Some(&shim), Some(&socat)];
    let measured = measure(cfg, &Local, routes, relays, "loopback");
    let shim_rss_after_load = {
        let _held = work::hold(routes[1], cfg.hold_conns)?;
        thread::sleep(Duration::from_millis(200));
        shim.rss_kib()
    };
    drop((shim, socat));

    // The footprint of a fresh shim, as a login node has it: one session,
    // a few open connections, nothing to do.
    eprintln!("loopback: footprint with {} idle connections over {:?}", cfg.hold_conns, cfg.idle);
    let (shim, socat) = (Shim::start(server)?, Socat::local(server)?);
    let mut footprint = footprint(cfg, &shim, &socat, |port| work::hold(local(port), cfg.hold_conns))?;
    footprint.shim_rss_after_load_kib = Some(shim_rss_after_load);
    Ok(PathReport {
        name: "loopback".into(),
        description: "client, server and relay on 127.0.0.1 of one machine: the relay's own cost".into(),
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
            Ok((paths, setup)) => {
                report.paths.extend(paths);
                report.setup = setup;
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

/// `serve --host=H --port=P`: the server a lab session starts in its job,
/// spelled like VS Code's so the helper rewrites its bind address, and
/// logging the line the launch script waits for.
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
    println!("Extension host agent listening on {}", local.port());
    let _ = io::stdout().flush();
    work::serve(listener);
}

/// `client --route R --test bulk|ping|burst|hold ...`: one measurement, its
/// result on stdout as one line.
fn role_client(args: &[String]) {
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let number = |flag: &str| value(flag).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let fail = |e: String| -> ! {
        println!("error {e}");
        std::process::exit(1);
    };
    let route = Route::parse(&value("--route").unwrap_or_default()).unwrap_or_else(|e| fail(e));
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
