//! The local installation's network: one bridge in this namespace and one
//! network namespace per host, each on a veth into the bridge. The database
//! is a host of its own (a managed replica set stands outside every zone);
//! each zone is an `api` host and one host per worker, so that a zone's loss
//! cuts all of them and a partition can single out one worker.
//!
//! Faults are `nft` rules inside a host's namespace (drop everything, drop
//! traffic to one peer, or drop at random) and `tbf` on its interface for a
//! slow link. Every name made here starts with [`PREFIX`], so [`clean`] can
//! remove whatever an earlier, interrupted run left behind.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Namespaces and links made by the harness start with this.
pub const PREFIX: &str = "capc-";
const BRIDGE: &str = "capc-br0";
/// The harness's own address on the bridge: Pebble, haproxy and the load
/// client listen and send from here.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
pub const DB_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
const NFT_TABLE: &str = "capchaos";

/// One host: a network namespace with one address.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace's name (also the host's name in reports).
    pub ns: String,
    pub ip: Ipv4Addr,
    /// 1, 2 or 3; 0 for the database's host.
    pub zone: usize,
}

impl Host {
    pub fn db() -> Host {
        Host {
            ns: format!("{PREFIX}db"),
            ip: DB_IP,
            zone: 0,
        }
    }

    /// The api (and scheduler) host of `zone`.
    pub fn api(zone: usize) -> Host {
        Host {
            ns: format!("{PREFIX}z{zone}-a"),
            ip: Ipv4Addr::new(10, 231, 0, (zone * 10) as u8),
            zone,
        }
    }

    /// The host of worker `k` of `zone`.
    pub fn worker(zone: usize, k: usize) -> Host {
        Host {
            ns: format!("{PREFIX}z{zone}-w{k}"),
            ip: Ipv4Addr::new(10, 231, 0, (zone * 10 + 1 + k) as u8),
            zone,
        }
    }

    /// The veth end left in this namespace (at most 15 bytes).
    fn veth(&self) -> String {
        format!("capc{}", &self.ns[PREFIX.len()..]).replace('-', "")
    }
}

/// Runs `ip`, `nft` or `tc`; an error names the command and what it said.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{program}: {e} (scripts/setup.sh installs iproute2 and nftables)"))?;
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args, None)
}

/// Makes the bridge and every host's namespace.
pub fn build(hosts: &[Host]) -> Result<(), String> {
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE])?;
    // Bridged traffic must not meet the host's iptables (a Docker host's
    // FORWARD policy is DROP, and br_netfilter would apply it).
    ip(&[
        "link",
        "set",
        BRIDGE,
        "type",
        "bridge",
        "nf_call_iptables",
        "0",
        "nf_call_ip6tables",
        "0",
    ])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    for host in hosts {
        let ns = host.ns.as_str();
        let outside = host.veth();
        let inside = format!("{outside}i");
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ])?;
        ip(&["link", "set", &inside, "netns", ns])?;
        ip(&["-n", ns, "link", "set", &inside, "name", "eth0"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["link", "set", &outside, "master", BRIDGE, "up"])?;
    }
    Ok(())
}

/// Removes every namespace and link the harness made, killing what still
/// runs inside them; also what an interrupted earlier run left. Never fails:
/// what it cannot remove it reports.
pub fn clean() {
    let listed = Command::new("ip").args(["netns", "list"]).output();
    let names: Vec<String> = listed
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_string)
        .collect();
    for ns in &names {
        kill_everything_in(ns);
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("chaos: cleaning up: {e}");
        }
    }
    // A namespace goes away only once nothing holds it, and its veth pairs
    // with it: delete our ends now, so that a new run can make them again.
    let links = Command::new("ip").args(["-o", "link", "show"]).output();
    let links = links
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for link in links.lines().filter_map(|l| l.split(": ").nth(1)) {
        let name = link.split('@').next().unwrap_or(link);
        if name.starts_with("capc") {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// SIGKILLs every process in `ns` (SIGCONT first, for stopped ones).
fn kill_everything_in(ns: &str) {
    let pids = Command::new("ip").args(["netns", "pids", ns]).output();
    let pids = pids
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// What a host's links do while a fault is on.
#[derive(Clone, Copy, Debug)]
pub enum LinkFault {
    /// Nothing in or out (the host is gone from the network).
    Cut,
    /// Nothing to or from this peer.
    CutFrom(Ipv4Addr),
    /// Each packet dropped with this probability, in percent.
    Lossy(u8),
}

/// Puts `fault` on `host`'s links, replacing any earlier one.
pub fn impair(host: &Host, fault: LinkFault) -> Result<(), String> {
    heal(host);
    let rule = match fault {
        LinkFault::Cut => "drop".to_string(),
        LinkFault::CutFrom(peer) => return impair_peer(host, peer),
        LinkFault::Lossy(percent) => format!("numgen random mod 100 < {percent} drop"),
    };
    let script = format!(
        "table inet {NFT_TABLE} {{\n\
         chain in {{ type filter hook input priority 0; policy accept; iif lo accept; {rule}; }}\n\
         chain out {{ type filter hook output priority 0; policy accept; oif lo accept; {rule}; }}\n}}\n"
    );
    run(
        "ip",
        &["netns", "exec", &host.ns, "nft", "-f", "-"],
        Some(&script),
    )
}

fn impair_peer(host: &Host, peer: Ipv4Addr) -> Result<(), String> {
    let script = format!(
        "table inet {NFT_TABLE} {{\n\
         chain in {{ type filter hook input priority 0; policy accept; ip saddr {peer} drop; }}\n\
         chain out {{ type filter hook output priority 0; policy accept; ip daddr {peer} drop; }}\n}}\n"
    );
    run(
        "ip",
        &["netns", "exec", &host.ns, "nft", "-f", "-"],
        Some(&script),
    )
}

/// A slow link: `host`'s outgoing traffic shaped to `kbit` by a token
/// bucket (there is no netem on these kernels for latency).
pub fn slow(host: &Host, kbit: u32) -> Result<(), String> {
    let rate = format!("{kbit}kbit");
    ip_exec(
        host,
        "tc",
        &[
            "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "16kbit",
            "latency", "500ms",
        ],
    )
}

/// Takes every fault off `host`'s links.
pub fn heal(host: &Host) {
    let _ = ip_exec(host, "nft", &["delete", "table", "inet", NFT_TABLE]);
    let _ = ip_exec(host, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
}

fn ip_exec(host: &Host, program: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["netns", "exec", host.ns.as_str(), program];
    all.extend_from_slice(args);
    run("ip", &all, None)
}
