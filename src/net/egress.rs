//! The egress policy. Every outbound connection a tenant can aim — ACME
//! directories, DNS-01 primaries and name servers, drift endpoints,
//! delivery targets, notification channels — goes through an
//! [`EgressPolicy`], which judges each address a name resolves to when the
//! connection is made: a URL checked when it was stored proves nothing,
//! since its name may resolve elsewhere by now.
//!
//! Refused always: unspecified addresses (`0.0.0.0` and `::` reach this
//! host), multicast, broadcast and reserved ones. Refused unless the
//! purpose's allow list opens them: loopback, link-local (where cloud
//! metadata services answer), private ranges (RFC 1918, CGNAT's
//! `100.64.0.0/10`, IPv6 unique local), and IPv6 addresses that embed any
//! of these (IPv4-mapped, IPv4-compatible, NAT64, 6to4). Everything else,
//! the public internet, is allowed.
//!
//! Each [`Purpose`] has its own list (`CAP_EGRESS_ALLOW_ACME`, `_DNS`,
//! `_DRIFT`, `_TARGETS`, `_NOTIFY`), so opening a private CA's range does
//! not let every editor's webhook read the services beside it. A list holds
//! CIDRs (`10.20.0.0/16`), single addresses and host names
//! (`ca.internal.example`: every address that name resolves to). The older
//! `CAP_EGRESS_ALLOW` still opens its entries to every purpose, and is
//! deprecated for that reason. `CAP_EGRESS_CLOSED` closes purposes
//! entirely, public addresses included (the DR drill's processes run so).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

/// The deprecated setting that opens restricted addresses to every purpose.
pub const ALLOW_VARIABLE: &str = "CAP_EGRESS_ALLOW";
/// The setting that closes purposes entirely.
pub const CLOSED_VARIABLE: &str = "CAP_EGRESS_CLOSED";

/// What an outbound connection is for. Each purpose has its own allow list,
/// since what one needs open (a private CA) is no reason to open it to the
/// others (every editor's webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// ACME directories: orders, revocations, ARI.
    Acme,
    /// DNS-01: primaries (RFC 2136), name servers, TXT look-ups.
    Dns,
    /// Drift scans of declared endpoints.
    Drift,
    /// Delivery targets (webhook, SSH, Kubernetes) and their validate probe.
    Targets,
    /// Notification channels (webhook, Slack, email) and their test message.
    Notify,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::Acme,
        Purpose::Dns,
        Purpose::Drift,
        Purpose::Targets,
        Purpose::Notify,
    ];

    /// Its name in `CAP_EGRESS_CLOSED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Acme => "acme",
            Purpose::Dns => "dns",
            Purpose::Drift => "drift",
            Purpose::Targets => "targets",
            Purpose::Notify => "notify",
        }
    }

    /// The setting holding its allow list.
    pub fn allow_variable(self) -> &'static str {
        match self {
            Purpose::Acme => "CAP_EGRESS_ALLOW_ACME",
            Purpose::Dns => "CAP_EGRESS_ALLOW_DNS",
            Purpose::Drift => "CAP_EGRESS_ALLOW_DRIFT",
            Purpose::Targets => "CAP_EGRESS_ALLOW_TARGETS",
            Purpose::Notify => "CAP_EGRESS_ALLOW_NOTIFY",
        }
    }

    /// What it reaches, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Purpose::Acme => "ACME CAs",
            Purpose::Dns => "DNS-01 servers",
            Purpose::Drift => "drift endpoints",
            Purpose::Targets => "delivery targets",
            Purpose::Notify => "notification channels",
        }
    }

    fn parse(name: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A kind of address the policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restricted {
    Loopback,
    LinkLocal,
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT (RFC 6598).
    SharedCgnat,
    Unspecified,
    Multicast,
    Broadcast,
    Reserved,
}

impl Restricted {
    pub fn as_str(self) -> &'static str {
        match self {
            Restricted::Loopback => "loopback",
            Restricted::LinkLocal => "link-local",
            Restricted::Private => "private",
            Restricted::SharedCgnat => "private (CGNAT)",
            Restricted::Unspecified => "unspecified",
            Restricted::Multicast => "multicast",
            Restricted::Broadcast => "broadcast",
            Restricted::Reserved => "reserved",
        }
    }

    /// Whether `CAP_EGRESS_ALLOW` can open it. No installation needs to
    /// reach an unspecified, multicast, broadcast or reserved address, and
    /// `0.0.0.0` would quietly mean this host.
    pub fn can_be_allowed(self) -> bool {
        matches!(
            self,
            Restricted::Loopback
                | Restricted::LinkLocal
                | Restricted::Private
                | Restricted::SharedCgnat
        )
    }
}

/// What kind of restricted address `ip` is; `None` for a public one.
pub fn restricted(ip: IpAddr) -> Option<Restricted> {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<Restricted> {
    let [a, b, _, _] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_broadcast() => Restricted::Broadcast,
        // 0.0.0.0/8, "this network": connecting there reaches this host.
        (0, _) => Restricted::Unspecified,
        (127, _) => Restricted::Loopback,
        (169, 254) => Restricted::LinkLocal,
        (10, _) | (192, 168) => Restricted::Private,
        (172, 16..=31) => Restricted::Private,
        (100, 64..=127) => Restricted::SharedCgnat,
        (224..=239, _) => Restricted::Multicast,
        (240..=255, _) => Restricted::Reserved,
        _ => return None,
    })
}

fn restricted_v6(ip: Ipv6Addr) -> Option<Restricted> {
    if ip.is_unspecified() {
        return Some(Restricted::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Restricted::Loopback);
    }
    if let Some(v4) = embedded_v4(ip) {
        return restricted_v4(v4);
    }
    let first = ip.segments()[0];
    Some(match first {
        _ if first & 0xffc0 == 0xfe80 => Restricted::LinkLocal,
        // Unique local (fc00::/7) and the deprecated site-local (fec0::/10).
        _ if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 => Restricted::Private,
        _ if first & 0xff00 == 0xff00 => Restricted::Multicast,
        _ => return None,
    })
}

/// The IPv4 address an IPv6 one stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4
/// (`2002:AABB:CCDD::`). Each reaches that IPv4 address on some network.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// An address range of `CAP_EGRESS_ALLOW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or one address.
    fn parse(entry: &str) -> Option<Cidr> {
        let (addr, prefix) = match entry.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (entry, None),
        };
        let net: IpAddr = addr.trim_matches(['[', ']']).parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { net, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of the `width` low bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, width: u32, prefix: u8) -> bool {
    let shift = width - u32::from(prefix);
    shift >= width || (a >> shift) == (b >> shift)
}

/// A host name as compared: lower case, without the root's dot.
fn normalized(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_host_name(entry: &str) -> bool {
    entry.len() <= 253
        && entry.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Where outbound connections may go. The default refuses every restricted
/// address; cheap to clone (one per connection site).
#[derive(Clone)]
pub struct EgressPolicy {
    nets: Arc<[Cidr]>,
    hosts: Arc<[String]>,
    /// The setting a refusal tells the operator to open it with.
    opened_by: &'static str,
    /// Set when the purpose is closed: every address is refused.
    closed: Option<Purpose>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            nets: Arc::new([]),
            hosts: Arc::new([]),
            opened_by: ALLOW_VARIABLE,
            closed: None,
        }
    }
}

impl fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressPolicy")
            .field("nets", &self.nets)
            .field("hosts", &self.hosts)
            .field("opened_by", &self.opened_by)
            .field("closed", &self.closed)
            .finish()
    }
}

/// Why a connection was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressError {
    /// Every address of `host` is restricted; `ip` is the first.
    Refused {
        host: String,
        ip: IpAddr,
        range: Restricted,
        /// The setting that would open it.
        opened_by: &'static str,
    },
    /// The purpose is closed (`CAP_EGRESS_CLOSED`): nothing is reached.
    Closed { host: String, purpose: Purpose },
    /// The name did not resolve.
    Unresolved { host: String, reason: String },
}

impl fmt::Display for EgressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressError::Refused {
                host,
                ip,
                range,
                opened_by,
            } => {
                write!(
                    f,
                    "egress to {ip} ({}) refused for host {host}: ",
                    range.as_str()
                )?;
                if range.can_be_allowed() {
                    write!(f, "allow it with {opened_by}")
                } else {
                    f.write_str("never allowed")
                }
            }
            EgressError::Closed { host, purpose } => write!(
                f,
                "egress to {host} refused: {} are closed on this process ({CLOSED_VARIABLE})",
                purpose.describe()
            ),
            EgressError::Unresolved { host, reason } => {
                write!(f, "cannot resolve {host}: {reason}")
            }
        }
    }
}

impl std::error::Error for EgressError {}

impl From<EgressError> for io::Error {
    fn from(e: EgressError) -> io::Error {
        let kind = match e {
            EgressError::Refused { .. } | EgressError::Closed { .. } => {
                io::ErrorKind::PermissionDenied
            }
            EgressError::Unresolved { .. } => io::ErrorKind::NotFound,
        };
        io::Error::new(kind, e)
    }
}

impl EgressPolicy {
    /// The policy of `CAP_EGRESS_ALLOW`: comma-separated CIDRs, addresses
    /// and host names; empty allows no restricted address. The error names
    /// the entry that is none of these.
    pub fn parse(list: &str) -> Result<EgressPolicy, String> {
        let mut nets = Vec::new();
        let mut hosts = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some(cidr) = Cidr::parse(entry) {
                nets.push(cidr);
            } else if is_host_name(&normalized(entry)) {
                hosts.push(normalized(entry));
            } else {
                return Err(format!(
                    "{entry:?} is not a CIDR (10.0.0.0/8), an IP address or a host name"
                ));
            }
        }
        Ok(EgressPolicy {
            nets: nets.into(),
            hosts: hosts.into(),
            ..EgressPolicy::default()
        })
    }

    /// The policy of `purpose`: its own list (`CAP_EGRESS_ALLOW_<PURPOSE>`)
    /// and the deprecated list every purpose shares (`CAP_EGRESS_ALLOW`).
    pub fn for_purpose(purpose: Purpose, own: &str, shared: &str) -> Result<EgressPolicy, String> {
        let variable = purpose.allow_variable();
        let own = EgressPolicy::parse(own).map_err(|e| format!("invalid {variable}: {e}"))?;
        let shared =
            EgressPolicy::parse(shared).map_err(|e| format!("invalid {ALLOW_VARIABLE}: {e}"))?;
        Ok(EgressPolicy {
            nets: own.nets.iter().chain(shared.nets.iter()).copied().collect(),
            hosts: own
                .hosts
                .iter()
                .chain(shared.hosts.iter())
                .cloned()
                .collect(),
            opened_by: variable,
            closed: None,
        })
    }

    /// A policy that refuses every address, public ones too.
    pub fn closed(purpose: Purpose) -> EgressPolicy {
        EgressPolicy {
            opened_by: purpose.allow_variable(),
            closed: Some(purpose),
            ..EgressPolicy::default()
        }
    }

    /// Whether `host` may be reached at `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), EgressError> {
        if let Some(purpose) = self.closed {
            return Err(EgressError::Closed {
                host: host.to_string(),
                purpose,
            });
        }
        let Some(range) = restricted(ip) else {
            return Ok(());
        };
        let refused = || EgressError::Refused {
            host: host.to_string(),
            ip,
            range,
            opened_by: self.opened_by,
        };
        if !range.can_be_allowed() {
            return Err(refused());
        }
        // An IPv4 range also opens that range's IPv6 forms.
        let as_v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let by_net = self
            .nets
            .iter()
            .any(|n| n.contains(ip) || as_v4.is_some_and(|v4| n.contains(v4)));
        let host = normalized(host.trim_matches(['[', ']']));
        if by_net || self.hosts.contains(&host) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// The addresses of `host` this policy permits, with `port`: an IP
    /// address is judged as it is; a name is resolved and each of its
    /// addresses judged. Errs when none is permitted, naming the first
    /// refused address.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        if let Some(purpose) = self.closed {
            // Not even a look-up: a resolver query leaves the host too.
            return Err(EgressError::Closed {
                host: host.to_string(),
                purpose,
            });
        }
        let bare = host.trim_matches(['[', ']']);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check(host, ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let unresolved = |reason: String| EgressError::Unresolved {
            host: host.to_string(),
            reason,
        };
        let resolved = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| unresolved(e.to_string()))?;
        let mut permitted = Vec::new();
        let mut first_refusal = None;
        for addr in resolved {
            match self.check(host, addr.ip()) {
                Ok(()) => permitted.push(addr),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        match (permitted.is_empty(), first_refusal) {
            (false, _) => Ok(permitted),
            (true, Some(refusal)) => Err(refusal),
            (true, None) => Err(unresolved("no address".into())),
        }
    }

    /// A TCP connection to `host`:`port`, to the first permitted address
    /// that accepts.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in self.resolve(host, port).await? {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
    }

    /// [`Self::connect`] to `host:port` (`[v6]:port` for an IPv6 address).
    pub async fn connect_to(&self, addr: &str) -> io::Result<TcpStream> {
        let (host, port) = split_host_port(addr).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr:?} is not host:port"),
            )
        })?;
        self.connect(host, port).await
    }
}

/// The policy of every purpose, as a workload's settings build them.
#[derive(Clone, Debug)]
pub struct EgressPolicies {
    pub acme: EgressPolicy,
    pub dns: EgressPolicy,
    pub drift: EgressPolicy,
    pub targets: EgressPolicy,
    pub notify: EgressPolicy,
}

impl Default for EgressPolicies {
    /// Every restricted address refused for every purpose.
    fn default() -> Self {
        EgressPolicies::build(|_| "", "", "").expect("empty lists parse")
    }
}

impl EgressPolicies {
    /// Each purpose's policy from its own list (`own`), the deprecated
    /// shared one (`CAP_EGRESS_ALLOW`) and `CAP_EGRESS_CLOSED` (purpose
    /// names, comma-separated). The error names the setting at fault.
    pub fn build<'a>(
        own: impl Fn(Purpose) -> &'a str,
        shared: &str,
        closed: &str,
    ) -> Result<EgressPolicies, String> {
        let mut closed_purposes = Vec::new();
        for name in closed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let purpose = Purpose::parse(&name.to_ascii_lowercase()).ok_or_else(|| {
                let names: Vec<&str> = Purpose::ALL.iter().map(|p| p.as_str()).collect();
                format!("invalid {CLOSED_VARIABLE}: {name:?} is not one of {names:?}")
            })?;
            closed_purposes.push(purpose);
        }
        let policy = |purpose: Purpose| {
            let built = EgressPolicy::for_purpose(purpose, own(purpose), shared)?;
            Ok::<_, String>(if closed_purposes.contains(&purpose) {
                EgressPolicy::closed(purpose)
            } else {
                built
            })
        };
        Ok(EgressPolicies {
            acme: policy(Purpose::Acme)?,
            dns: policy(Purpose::Dns)?,
            drift: policy(Purpose::Drift)?,
            targets: policy(Purpose::Targets)?,
            notify: policy(Purpose::Notify)?,
        })
    }

    pub fn get(&self, purpose: Purpose) -> &EgressPolicy {
        match purpose {
            Purpose::Acme => &self.acme,
            Purpose::Dns => &self.dns,
            Purpose::Drift => &self.drift,
            Purpose::Targets => &self.targets,
            Purpose::Notify => &self.notify,
        }
    }
}

/// `host:port`, `v4:port` or `[v6]:port` into its parts.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn refused(policy: &EgressPolicy, host: &str, addr: &str) -> Option<Restricted> {
        match policy.check(host, ip(addr)) {
            Ok(()) => None,
            Err(EgressError::Refused { range, .. }) => Some(range),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_restricted_range_is_refused_by_default() {
        let none = EgressPolicy::default();
        let cases = [
            ("127.0.0.1", Restricted::Loopback),
            ("127.255.255.254", Restricted::Loopback),
            ("::1", Restricted::Loopback),
            ("169.254.169.254", Restricted::LinkLocal),
            ("fe80::1", Restricted::LinkLocal),
            ("febf::1", Restricted::LinkLocal),
            ("10.1.2.3", Restricted::Private),
            ("172.16.0.1", Restricted::Private),
            ("172.31.255.255", Restricted::Private),
            ("192.168.1.1", Restricted::Private),
            ("fc00::1", Restricted::Private),
            ("fd12:3456::1", Restricted::Private),
            ("100.64.0.1", Restricted::SharedCgnat),
            ("100.127.255.255", Restricted::SharedCgnat),
            ("0.0.0.0", Restricted::Unspecified),
            ("0.1.2.3", Restricted::Unspecified),
            ("::", Restricted::Unspecified),
            ("224.0.0.1", Restricted::Multicast),
            ("239.255.255.250", Restricted::Multicast),
            ("ff02::1", Restricted::Multicast),
            ("255.255.255.255", Restricted::Broadcast),
            ("240.0.0.1", Restricted::Reserved),
        ];
        for (addr, range) in cases {
            assert_eq!(refused(&none, "h", addr), Some(range), "{addr}");
        }
    }

    #[test]
    fn public_addresses_and_the_edges_of_each_range_pass() {
        let none = EgressPolicy::default();
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.0.1",
            "192.169.0.1",
            "11.0.0.1",
            "126.255.255.255",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "fbff::1",
            "fe00::1",
        ] {
            assert_eq!(refused(&none, "h", addr), None, "{addr}");
        }
    }

    #[test]
    fn ipv6_forms_of_restricted_ipv4_addresses_are_refused_too() {
        let none = EgressPolicy::default();
        for (addr, range) in [
            ("::ffff:127.0.0.1", Restricted::Loopback),
            ("::ffff:169.254.169.254", Restricted::LinkLocal),
            ("::ffff:10.0.0.1", Restricted::Private),
            ("::ffff:100.64.0.1", Restricted::SharedCgnat),
            ("::ffff:0.0.0.0", Restricted::Unspecified),
            ("::127.0.0.1", Restricted::Loopback),
            ("64:ff9b::192.168.0.1", Restricted::Private),
            ("2002:7f00:1::", Restricted::Loopback),
            ("2002:a9fe:a9fe::1", Restricted::LinkLocal),
        ] {
            assert_eq!(refused(&none, "h", addr), Some(range), "{addr}");
        }
        assert_eq!(refused(&none, "h", "::ffff:8.8.8.8"), None);
        assert_eq!(refused(&none, "h", "64:ff9b::1.1.1.1"), None);
    }

    #[test]
    fn a_cidr_opens_its_range_and_nothing_else() {
        let policy = EgressPolicy::parse("10.20.0.0/16, 127.0.0.0/8,fd00::/8").unwrap();
        assert_eq!(refused(&policy, "h", "10.20.3.4"), None);
        assert_eq!(
            refused(&policy, "h", "10.21.0.1"),
            Some(Restricted::Private)
        );
        assert_eq!(refused(&policy, "h", "127.0.0.1"), None);
        assert_eq!(refused(&policy, "h", "fd00::53"), None);
        assert_eq!(refused(&policy, "h", "fc00::1"), Some(Restricted::Private));
        assert_eq!(refused(&policy, "h", "::1"), Some(Restricted::Loopback));
        assert_eq!(
            refused(&policy, "h", "169.254.169.254"),
            Some(Restricted::LinkLocal)
        );
        // The IPv4 range opens its IPv4-mapped form as well.
        assert_eq!(refused(&policy, "h", "::ffff:127.0.0.1"), None);
        assert_eq!(refused(&policy, "h", "::ffff:10.20.0.9"), None);
        assert_eq!(
            refused(&policy, "h", "::ffff:10.30.0.9"),
            Some(Restricted::Private)
        );
    }

    #[test]
    fn single_addresses_and_prefix_edges() {
        let policy = EgressPolicy::parse("192.168.1.7,::1,[fe80::2],172.16.0.0/12").unwrap();
        assert_eq!(refused(&policy, "h", "192.168.1.7"), None);
        assert_eq!(
            refused(&policy, "h", "192.168.1.8"),
            Some(Restricted::Private)
        );
        assert_eq!(refused(&policy, "h", "::1"), None);
        assert_eq!(refused(&policy, "h", "fe80::2"), None);
        assert_eq!(
            refused(&policy, "h", "fe80::3"),
            Some(Restricted::LinkLocal)
        );
        assert_eq!(refused(&policy, "h", "172.31.0.1"), None);
        let everything = EgressPolicy::parse("0.0.0.0/0,::/0").unwrap();
        assert_eq!(refused(&everything, "h", "10.0.0.1"), None);
        assert_eq!(refused(&everything, "h", "fe80::1"), None);
    }

    #[test]
    fn a_host_name_opens_every_address_of_that_name_only() {
        let policy = EgressPolicy::parse("CA.Internal.Example.").unwrap();
        assert_eq!(refused(&policy, "ca.internal.example", "10.0.0.5"), None);
        assert_eq!(refused(&policy, "ca.internal.example.", "::1"), None);
        assert_eq!(
            refused(&policy, "other.internal.example", "10.0.0.5"),
            Some(Restricted::Private)
        );
        assert_eq!(
            refused(&policy, "sub.ca.internal.example", "10.0.0.5"),
            Some(Restricted::Private)
        );
    }

    #[test]
    fn nothing_opens_unspecified_multicast_broadcast_or_reserved_addresses() {
        let policy = EgressPolicy::parse("0.0.0.0/0,::/0,weird.example").unwrap();
        for addr in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "240.0.0.1"] {
            assert!(
                refused(&policy, "weird.example", addr).is_some(),
                "{addr} passed"
            );
        }
        let e = policy.check("weird.example", ip("0.0.0.0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "egress to 0.0.0.0 (unspecified) refused for host weird.example: never allowed"
        );
    }

    #[test]
    fn the_refusal_says_what_was_refused_and_how_to_open_it() {
        let e = EgressPolicy::default()
            .check("ca.example", ip("127.0.0.1"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "egress to 127.0.0.1 (loopback) refused for host ca.example: allow it with CAP_EGRESS_ALLOW"
        );
    }

    #[test]
    fn entries_that_are_neither_a_range_nor_a_name_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "*.example.com",
            "ca example",
            "host/8",
            "a..b",
        ] {
            let e = EgressPolicy::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(EgressPolicy::parse("").is_ok());
        assert!(EgressPolicy::parse(" , ").is_ok());
    }

    #[tokio::test]
    async fn names_are_judged_by_the_addresses_they_resolve_to() {
        let none = EgressPolicy::default();
        let e = none.resolve("localhost", 443).await.unwrap_err();
        assert!(
            matches!(&e, EgressError::Refused { host, range: Restricted::Loopback, .. } if host == "localhost"),
            "{e}"
        );
        let e = none.resolve("[::1]", 443).await.unwrap_err();
        assert!(matches!(e, EgressError::Refused { .. }), "{e}");
        let loopback = EgressPolicy::parse("127.0.0.0/8,::1").unwrap();
        let addrs = loopback.resolve("localhost", 443).await.unwrap();
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 443));
        let by_name = EgressPolicy::parse("localhost").unwrap();
        assert!(!by_name.resolve("localhost", 1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refused_connection_never_reaches_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let e = EgressPolicy::default().connect_to(&addr).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("(loopback) refused"), "{e}");
        let accepted =
            tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the listener saw a connection");

        let allowed = EgressPolicy::parse("127.0.0.1").unwrap();
        let _tcp = allowed.connect_to(&addr).await.unwrap();
        listener.accept().await.unwrap();
    }

    /// The attack: an operator opens a private CA's range, and an editor
    /// aims a webhook, a target or a drift endpoint into it. Only ACME's
    /// policy opens it now.
    #[test]
    fn a_range_opened_for_acme_stays_closed_to_every_other_purpose() {
        let own = |p: Purpose| {
            if p == Purpose::Acme {
                "10.20.0.0/16"
            } else {
                ""
            }
        };
        let policies = EgressPolicies::build(own, "", "").unwrap();
        assert_eq!(refused(&policies.acme, "ca", "10.20.0.5"), None);
        for purpose in [
            Purpose::Dns,
            Purpose::Drift,
            Purpose::Targets,
            Purpose::Notify,
        ] {
            let e = policies
                .get(purpose)
                .check("intranet", ip("10.20.0.5"))
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "egress to 10.20.0.5 (private) refused for host intranet: allow it with {}",
                    purpose.allow_variable()
                )
            );
        }
    }

    #[test]
    fn the_shared_list_still_opens_every_purpose() {
        let policies = EgressPolicies::build(|_| "", "127.0.0.0/8", "").unwrap();
        for purpose in Purpose::ALL {
            assert_eq!(refused(policies.get(purpose), "h", "127.0.0.1"), None);
        }
        let policies = EgressPolicies::build(
            |p| if p == Purpose::Dns { "10.0.0.53" } else { "" },
            "::1",
            "",
        )
        .unwrap();
        assert_eq!(refused(&policies.dns, "h", "10.0.0.53"), None);
        assert_eq!(refused(&policies.dns, "h", "::1"), None);
        assert!(refused(&policies.acme, "h", "10.0.0.53").is_some());
    }

    #[tokio::test]
    async fn a_closed_purpose_reaches_nothing_not_even_the_public_internet() {
        let policies = EgressPolicies::build(|_| "127.0.0.0/8", "", " notify,TARGETS ").unwrap();
        assert_eq!(refused(&policies.acme, "h", "127.0.0.1"), None);
        for purpose in [Purpose::Notify, Purpose::Targets] {
            let policy = policies.get(purpose);
            for addr in ["8.8.8.8", "127.0.0.1"] {
                let e = policy.check("hooks.example.com", ip(addr)).unwrap_err();
                assert!(matches!(e, EgressError::Closed { .. }), "{e}");
            }
            let e = policy.resolve("localhost", 443).await.unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "egress to localhost refused: {} are closed on this process (CAP_EGRESS_CLOSED)",
                    purpose.describe()
                )
            );
        }
    }

    #[test]
    fn bad_lists_name_their_setting() {
        let e = EgressPolicies::build(
            |p| {
                if p == Purpose::Drift {
                    "10.0.0.0/33"
                } else {
                    ""
                }
            },
            "",
            "",
        )
        .unwrap_err();
        assert!(e.starts_with("invalid CAP_EGRESS_ALLOW_DRIFT:"), "{e}");
        let e = EgressPolicies::build(|_| "", "*.example", "").unwrap_err();
        assert!(e.starts_with("invalid CAP_EGRESS_ALLOW:"), "{e}");
        let e = EgressPolicies::build(|_| "", "", "acme,webhooks").unwrap_err();
        assert!(
            e.contains("CAP_EGRESS_CLOSED") && e.contains("webhooks"),
            "{e}"
        );
    }

    #[test]
    fn host_port_with_brackets_for_ipv6() {
        assert_eq!(split_host_port("ns1.example:53"), Some(("ns1.example", 53)));
        assert_eq!(split_host_port("10.0.0.1:53"), Some(("10.0.0.1", 53)));
        assert_eq!(split_host_port("[::1]:53"), Some(("::1", 53)));
        assert_eq!(split_host_port("::1:53"), None);
        assert_eq!(split_host_port("host"), None);
        assert_eq!(split_host_port(":53"), None);
    }
}
