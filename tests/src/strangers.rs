//! The stranger's side of the attack tests: bob's probe tools and what he
//! may see, shared by the Slurm and HTCondor stranger scans.

use crate::session::json_field;
use crate::Lab;

/// The stranger's tools, in Python as a user would write them.
/// `probe TARGET...`: connects to each target (`HOST:PORT` or a socket path)
/// as whoever runs it, sends an HTTP request and a VS Code-like hello, and
/// prints what came back: `<target> <bytes> <first bytes in hex>` or
/// `<target> ERR <why>`. `replay DOOR HEX`: connects to the door, reads its
/// fresh hello, sends the recorded relay proof HEX and prints how many bytes
/// came back before the door closed.
pub const TOOLS: &str = r#"
import socket, sys

def read_all(s):
    got = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    return got

def probe(targets):
    for target in targets:
        try:
            if target.startswith("/"):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(3)
                s.connect(target)
            else:
                host, port = target.rsplit(":", 1)
                s = socket.create_connection((host, int(port)), timeout=3)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\x00" * 100)
            got = read_all(s)
            print(target, len(got), got[:8].hex(), flush=True)
        except OSError as e:
            print(target, "ERR", type(e).__name__, flush=True)

def replay(door, proof):
    host, port = door.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    hello = b""
    while len(hello) < 36:
        chunk = s.recv(36 - len(hello))
        if not chunk:
            break
        hello += chunk
    print("hello", hello[:4].decode(errors="replace"), hello[4:].hex(), flush=True)
    s.sendall(bytes.fromhex(proof) + b"GET / HTTP/1.0\r\n\r\n")
    print("answer", len(read_all(s)), flush=True)

if sys.argv[1] == "probe":
    probe(sys.argv[2:])
else:
    replay(sys.argv[2], sys.argv[3])
"#;

/// Puts the tools where every host sees them (the lab's shared /home).
pub fn tools(lab: &Lab) -> &'static str {
    let path = "/home/bob/.stranger-tools.py";
    if !lab.dir.join("home/bob/.stranger-tools.py").exists() {
        lab.sh_ok(
            None,
            "login",
            &format!("cat > {path} <<'EOF'\n{TOOLS}\nEOF\nchown bob {path}; chmod 644 {path}"),
        );
    }
    path
}

/// What bob may see: nothing, a refusal, or exactly the door's hello.
pub fn assert_nothing_from_the_server(where_from: &str, report: &str, targets: &[String]) {
    let door_hello_len = 4 + 32;
    let magic_hex = "56534431"; // "VSD1"
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), targets.len(), "bob {where_from}: one line per target:\n{report}");
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ok = match fields[..] {
            [_, "ERR", _] => true,
            [_, "0", _] | [_, "0"] => true,
            [_, n, hex] => n == door_hello_len.to_string() && hex.starts_with(magic_hex),
            _ => false,
        };
        assert!(ok, "bob {where_from} got something other than the door's hello: {line}\n{report}");
    }
}

/// Every TCP port alice's processes listen on at `node`, plus the server's
/// socket if it has one.
pub fn alices_doors(lab: &Lab, node: &str, server_local: &str) -> Vec<String> {
    let uid = lab.sh_ok(None, "login", "id -u alice").trim().to_owned();
    let listeners = lab.sh_ok(None, node, "ss -Hltne");
    let mut targets: Vec<String> = listeners
        .lines()
        .filter(|l| l.contains(&format!("uid:{uid} ")))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .map(|addr| addr.replace("0.0.0.0:", "127.0.0.1:").replace("*:", "127.0.0.1:"))
        .collect();
    assert!(!targets.is_empty(), "alice listens on nothing on {node}:\n{listeners}");
    if server_local.starts_with('/') {
        targets.push(server_local.to_owned());
    }
    targets
}

/// How many connections alice's test server has accepted, from its answer.
pub fn connections(answer: &str) -> u64 {
    json_field(answer, "connections")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count: {answer}"))
}
