//! A small DNS client, just what DNS-01 needs: RFC 2136 dynamic updates
//! signed with TSIG (RFC 8945) to a zone's primary, and TXT, NS and A
//! queries to its authoritative servers. Everything goes over TCP (RFC 7766),
//! so there is no truncation to handle and no UDP spoofing to fear.
//!
//! Every connection passes the egress policy ([`EgressPolicy`]): primaries,
//! name servers and the addresses a primary hands out as glue alike.
//!
//! Responses are read for their rcode (and the TSIG error, to say why an
//! update was refused); their TSIG signatures are not verified.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::domain::issuer::TsigAlgorithm;
use crate::net::egress::EgressPolicy;

const TYPE_A: u16 = 1;
const TYPE_NS: u16 = 2;
const TYPE_SOA: u16 = 6;
const TYPE_TXT: u16 = 16;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
const OPCODE_UPDATE: u16 = 5 << 11;
const FLAG_AA: u16 = 1 << 10;
/// Seconds of clock difference a TSIG signature tolerates (RFC 8945 §10).
const TSIG_FUDGE: u16 = 300;
/// One exchange: connect, send, and read the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    #[error("DNS server {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("DNS server {server} refused the {what}: {rcode}{detail}")]
    Refused {
        server: String,
        what: &'static str,
        rcode: String,
        /// The TSIG error, or the name asked about.
        detail: String,
    },
    #[error("DNS server {server} sent a malformed answer: {reason}")]
    Malformed { server: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The TSIG MAC of `data` (RFC 8945) under `algorithm`.
fn tsig_mac(algorithm: TsigAlgorithm, secret: &[u8], data: &[u8]) -> Vec<u8> {
    match algorithm {
        TsigAlgorithm::HmacSha256 => {
            let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        TsigAlgorithm::HmacSha512 => {
            let mut m = Hmac::<Sha512>::new_from_slice(secret).expect("HMAC takes any key");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

/// A TSIG key shared with the zone's primary.
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Zeroizing<Vec<u8>>,
}

/// One change of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Adds a TXT record (adding one already there changes nothing).
    AddTxt {
        name: String,
        value: String,
        ttl: u32,
    },
    /// Deletes that one TXT record, leaving others of the same name.
    DeleteTxt { name: String, value: String },
}

/// Sends `changes` to `zone`'s primary as one signed update: all or none.
pub async fn update(
    egress: &EgressPolicy,
    primary: &str,
    zone: &str,
    key: &TsigKey,
    changes: &[Change],
) -> Result<(), DnsError> {
    let mut msg = header(rand::random(), OPCODE_UPDATE, 1, 0, changes.len() as u16, 0);
    put_name(&mut msg, zone);
    put_u16(&mut msg, TYPE_SOA);
    put_u16(&mut msg, CLASS_IN);
    for change in changes {
        match change {
            Change::AddTxt { name, value, ttl } => {
                put_rr(&mut msg, name, TYPE_TXT, CLASS_IN, *ttl, &txt_rdata(value))
            }
            Change::DeleteTxt { name, value } => {
                put_rr(&mut msg, name, TYPE_TXT, CLASS_NONE, 0, &txt_rdata(value))
            }
        }
    }
    sign(&mut msg, key, unix_now());
    let answer = exchange(egress, primary, &msg).await?;
    let response = Response::parse(&answer).map_err(|reason| DnsError::Malformed {
        server: primary.to_string(),
        reason,
    })?;
    if response.rcode != 0 {
        return Err(DnsError::Refused {
            server: primary.to_string(),
            what: "update",
            rcode: rcode_name(response.rcode),
            detail: response
                .tsig_error(&answer)
                .map(tsig_hint)
                .unwrap_or_default(),
        });
    }
    Ok(())
}

/// The TXT values `server` holds for `name`, answering authoritatively
/// (none when the name does not exist).
pub async fn txt(egress: &EgressPolicy, server: &str, name: &str) -> Result<Vec<String>, DnsError> {
    let (answer, response) = query(egress, server, name, TYPE_TXT).await?;
    Ok(response
        .answers
        .iter()
        .filter(|rr| rr.rtype == TYPE_TXT)
        .map(|rr| read_txt(&answer[rr.rdata.clone()]))
        .collect())
}

/// Everything the queries and updates read from a server's answer (for
/// the fuzz target, `fuzz/`).
#[cfg(feature = "fuzzing")]
#[derive(Debug)]
pub struct ReadAnswer {
    pub txt: Vec<String>,
    pub ns: Vec<String>,
    pub a: Vec<Ipv4Addr>,
    pub tsig_error: Option<u16>,
}

/// Reads `msg` as the queries and updates do: its TXT values, NS names, A
/// records' addresses and TSIG error.
#[cfg(feature = "fuzzing")]
pub fn read_answer(msg: &[u8]) -> Result<ReadAnswer, String> {
    let response = Response::parse(msg)?;
    let of = |t: u16| response.answers.iter().filter(move |rr| rr.rtype == t);
    let txt = of(TYPE_TXT)
        .map(|rr| read_txt(&msg[rr.rdata.clone()]))
        .collect();
    let ns = of(TYPE_NS)
        .map(|rr| Reader::at(msg, rr.rdata.start).name())
        .collect::<Result<_, _>>()?;
    let a = of(TYPE_A)
        .filter(|rr| rr.rdata.len() == 4)
        .map(|rr| {
            let b = &msg[rr.rdata.clone()];
            Ipv4Addr::new(b[0], b[1], b[2], b[3])
        })
        .collect();
    Ok(ReadAnswer {
        txt,
        ns,
        a,
        tsig_error: response.tsig_error(msg),
    })
}

/// The servers authoritative for `zone` (its NS records), as `host:53`
/// addresses, asked of `primary`; each name's address from the primary
/// (glue) or else from the system's resolver.
pub async fn authoritative_servers(
    egress: &EgressPolicy,
    primary: &str,
    zone: &str,
) -> Result<Vec<String>, DnsError> {
    let (answer, response) = query(egress, primary, zone, TYPE_NS).await?;
    let mut servers = Vec::new();
    for rr in response.answers.iter().filter(|rr| rr.rtype == TYPE_NS) {
        let ns = Reader::at(&answer, rr.rdata.start)
            .name()
            .map_err(|reason| DnsError::Malformed {
                server: primary.to_string(),
                reason,
            })?;
        let (a_answer, a) = query(egress, primary, &ns, TYPE_A).await?;
        let glue: Vec<String> = a
            .answers
            .iter()
            .filter(|rr| rr.rtype == TYPE_A && rr.rdata.len() == 4)
            .map(|rr| {
                let b = &a_answer[rr.rdata.clone()];
                format!("{}:53", Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            })
            .collect();
        if glue.is_empty() {
            let resolved = tokio::net::lookup_host((ns.as_str(), 53))
                .await
                .map_err(|e| DnsError::Config(format!("name server {ns} of {zone}: {e}")))?;
            servers.extend(resolved.map(|a| a.to_string()));
        } else {
            servers.extend(glue);
        }
    }
    if servers.is_empty() {
        return Err(DnsError::Config(format!(
            "{primary} lists no name servers for {zone}"
        )));
    }
    servers.sort();
    servers.dedup();
    Ok(servers)
}

async fn query(
    egress: &EgressPolicy,
    server: &str,
    name: &str,
    rtype: u16,
) -> Result<(Vec<u8>, Response), DnsError> {
    let mut msg = header(rand::random(), 0, 1, 0, 0, 0);
    put_name(&mut msg, name);
    put_u16(&mut msg, rtype);
    put_u16(&mut msg, CLASS_IN);
    let answer = exchange(egress, server, &msg).await?;
    let response = Response::parse(&answer).map_err(|reason| DnsError::Malformed {
        server: server.to_string(),
        reason,
    })?;
    match response.rcode {
        0 | 3 if response.flags & FLAG_AA != 0 => Ok((answer, response)),
        0 | 3 => Err(DnsError::Refused {
            server: server.to_string(),
            what: "query",
            rcode: "an answer that is not authoritative".into(),
            detail: format!(" for {name}: is it a name server of the zone?"),
        }),
        rcode => Err(DnsError::Refused {
            server: server.to_string(),
            what: "query",
            rcode: rcode_name(rcode),
            detail: format!(" for {name}"),
        }),
    }
}

async fn exchange(egress: &EgressPolicy, server: &str, msg: &[u8]) -> Result<Vec<u8>, DnsError> {
    let unreachable = |reason: String| DnsError::Unreachable {
        server: server.to_string(),
        reason,
    };
    let run = async {
        let mut tcp = egress
            .connect_to(server)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut framed = Vec::with_capacity(msg.len() + 2);
        put_u16(&mut framed, msg.len() as u16);
        framed.extend_from_slice(msg);
        tcp.write_all(&framed)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let len = tcp.read_u16().await.map_err(|e| format!("receive: {e}"))?;
        let mut answer = vec![0; len as usize];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if answer.get(..2) != msg.get(..2) {
            return Err("the answer is for another message".to_string());
        }
        Ok(answer)
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, run).await {
        Ok(result) => result.map_err(unreachable),
        Err(_) => Err(unreachable(format!(
            "no answer within {}s",
            EXCHANGE_TIMEOUT.as_secs()
        ))),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header(id: u16, flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    let mut msg = Vec::with_capacity(512);
    for v in [id, flags, qd, an, ns, ar] {
        put_u16(&mut msg, v);
    }
    msg
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// A name in canonical wire form: lower case, uncompressed.
fn put_name(buf: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let label = label.to_ascii_lowercase();
        buf.push(label.len().min(63) as u8);
        buf.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    buf.push(0);
}

fn put_rr(buf: &mut Vec<u8>, name: &str, rtype: u16, class: u16, ttl: u32, rdata: &[u8]) {
    put_name(buf, name);
    put_u16(buf, rtype);
    put_u16(buf, class);
    buf.extend_from_slice(&ttl.to_be_bytes());
    put_u16(buf, rdata.len() as u16);
    buf.extend_from_slice(rdata);
}

/// TXT rdata: the value as character-strings of at most 255 bytes.
fn txt_rdata(value: &str) -> Vec<u8> {
    let mut rdata = Vec::with_capacity(value.len() + 1);
    for chunk in value.as_bytes().chunks(255) {
        rdata.push(chunk.len() as u8);
        rdata.extend_from_slice(chunk);
    }
    if value.is_empty() {
        rdata.push(0);
    }
    rdata
}

fn read_txt(rdata: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < rdata.len() {
        let n = rdata[i] as usize;
        out.extend_from_slice(rdata.get(i + 1..i + 1 + n).unwrap_or_default());
        i += 1 + n;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends a TSIG record (RFC 8945 §4.3) signing `msg` as it stands.
fn sign(msg: &mut Vec<u8>, key: &TsigKey, now: u64) {
    let time = &now.to_be_bytes()[2..]; // 48 bits
    let mut signed = msg.clone();
    put_name(&mut signed, &key.name);
    put_u16(&mut signed, CLASS_ANY);
    signed.extend_from_slice(&0u32.to_be_bytes());
    put_name(&mut signed, key.algorithm.name());
    signed.extend_from_slice(time);
    put_u16(&mut signed, TSIG_FUDGE);
    put_u16(&mut signed, 0); // error
    put_u16(&mut signed, 0); // other len
    let mac = tsig_mac(key.algorithm, &key.secret, &signed);

    let mut rdata = Vec::with_capacity(64 + mac.len());
    put_name(&mut rdata, key.algorithm.name());
    rdata.extend_from_slice(time);
    put_u16(&mut rdata, TSIG_FUDGE);
    put_u16(&mut rdata, mac.len() as u16);
    rdata.extend_from_slice(&mac);
    rdata.extend_from_slice(&msg[..2]); // original id
    put_u16(&mut rdata, 0);
    put_u16(&mut rdata, 0);
    put_rr(msg, &key.name, TYPE_TSIG, CLASS_ANY, 0, &rdata);
    let arcount = u16::from_be_bytes([msg[10], msg[11]]) + 1;
    msg[10..12].copy_from_slice(&arcount.to_be_bytes());
}

fn rcode_name(rcode: u16) -> String {
    let name = match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED (is the key allowed to update this zone?)",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE (is the name inside the zone?)",
        _ => return format!("rcode {rcode}"),
    };
    name.to_string()
}

fn tsig_hint(error: u16) -> String {
    match error {
        0 => String::new(),
        16 => ", TSIG BADSIG: the signature does not verify (is the TSIG secret right?)".into(),
        17 => ", TSIG BADKEY: the server does not know this TSIG key name or algorithm".into(),
        18 => ", TSIG BADTIME: our clock and the server's differ by more than 5 minutes".into(),
        n => format!(", TSIG error {n}"),
    }
}

/// What a response says, with its records' places in the message.
struct Response {
    flags: u16,
    rcode: u16,
    answers: Vec<Record>,
    additional: Vec<Record>,
}

struct Record {
    rtype: u16,
    rdata: std::ops::Range<usize>,
}

impl Response {
    fn parse(msg: &[u8]) -> Result<Response, String> {
        let mut r = Reader::at(msg, 0);
        let _id = r.u16()?;
        let flags = r.u16()?;
        let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
        for _ in 0..counts[0] {
            r.name()?;
            r.skip(4)?;
        }
        let mut sections: [Vec<Record>; 3] = Default::default();
        for (section, &count) in sections.iter_mut().zip(&counts[1..]) {
            for _ in 0..count {
                r.name()?;
                let rtype = r.u16()?;
                r.skip(6)?; // class, ttl
                let len = r.u16()? as usize;
                let start = r.pos;
                r.skip(len)?;
                section.push(Record {
                    rtype,
                    rdata: start..start + len,
                });
            }
        }
        let [answers, _authority, additional] = sections;
        Ok(Response {
            flags,
            rcode: flags & 0x000f,
            answers,
            additional,
        })
    }

    /// The error field of the response's TSIG record, if it has one.
    fn tsig_error(&self, msg: &[u8]) -> Option<u16> {
        let rr = self.additional.iter().find(|rr| rr.rtype == TYPE_TSIG)?;
        let mut r = Reader::at(msg, rr.rdata.start);
        r.name().ok()?;
        r.skip(8).ok()?; // time signed, fudge
        let mac_len = r.u16().ok()? as usize;
        r.skip(mac_len + 2).ok()?; // MAC, original id
        r.u16().ok()
    }
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at(msg: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { msg, pos }
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        if self.pos + n > self.msg.len() {
            return Err("truncated".into());
        }
        self.pos += n;
        Ok(())
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.msg.get(self.pos..self.pos + 2).ok_or("truncated")?;
        self.pos += 2;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A name, following compression pointers (RFC 1035 §4.1.4).
    fn name(&mut self) -> Result<String, String> {
        let mut labels: Vec<String> = Vec::new();
        let mut at = self.pos;
        let mut jumped = false;
        for _ in 0..128 {
            let len = *self.msg.get(at).ok_or("truncated name")? as usize;
            match len {
                0 => {
                    if !jumped {
                        self.pos = at + 1;
                    }
                    return Ok(labels.join("."));
                }
                l if l & 0xc0 == 0xc0 => {
                    let low = *self.msg.get(at + 1).ok_or("truncated pointer")? as usize;
                    if !jumped {
                        self.pos = at + 2;
                    }
                    jumped = true;
                    at = ((l & 0x3f) << 8) | low;
                }
                l if l <= 63 => {
                    let label = self.msg.get(at + 1..at + 1 + l).ok_or("truncated label")?;
                    labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                    at += 1 + l;
                }
                _ => return Err("bad label length".into()),
            }
        }
        Err("a name with too many labels or a pointer loop".into())
    }
}

/// `host:port`, with a port; the form of `primary` and `nameservers`.
pub fn server_address_problem(value: &str) -> Option<String> {
    if value.parse::<SocketAddr>().is_ok() {
        return None;
    }
    match value.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(':')
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            None
        }
        _ => Some(format!(
            "{value:?} is not host:port (e.g. ns1.example.com:53)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_written_in_canonical_form() {
        let mut buf = Vec::new();
        put_name(&mut buf, "_acme-challenge.WWW.Example.com.");
        assert_eq!(buf, b"\x0f_acme-challenge\x03www\x07example\x03com\x00");
    }

    #[test]
    fn txt_values_round_trip_even_past_255_bytes() {
        let long = "x".repeat(300);
        for value in ["abc", long.as_str()] {
            assert_eq!(read_txt(&txt_rdata(value)), value);
        }
    }

    #[test]
    fn compressed_names_are_followed() {
        // "example.com" at 12, then "www" + pointer to 12.
        let mut msg = vec![0u8; 12];
        put_name(&mut msg, "example.com");
        let www = msg.len();
        msg.extend_from_slice(b"\x03www\xc0\x0c");
        let mut r = Reader::at(&msg, www);
        assert_eq!(r.name().unwrap(), "www.example.com");
        assert_eq!(r.pos, msg.len());
        // A pointer to itself ends with an error, not a hang.
        let looped = [0u8; 12]
            .iter()
            .copied()
            .chain([0xc0, 12])
            .collect::<Vec<_>>();
        assert!(Reader::at(&looped, 12).name().is_err());
    }

    #[test]
    fn a_signed_message_carries_one_more_additional_record_and_a_fresh_mac() {
        let key = |secret: &[u8]| TsigKey {
            name: "cap-key".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: Zeroizing::new(secret.to_vec()),
        };
        let mut base = header(7, OPCODE_UPDATE, 1, 0, 0, 0);
        put_name(&mut base, "example.com");
        put_u16(&mut base, TYPE_SOA);
        put_u16(&mut base, CLASS_IN);
        let (mut a, mut b) = (base.clone(), base.clone());
        sign(&mut a, &key(b"one"), 1_700_000_000);
        sign(&mut b, &key(b"two"), 1_700_000_000);
        assert_eq!(u16::from_be_bytes([a[10], a[11]]), 1);
        assert_ne!(a, b, "the MAC depends on the secret");
        let response = Response::parse(&a).unwrap();
        assert_eq!(response.additional.len(), 1);
        assert_eq!(response.tsig_error(&a), Some(0));
    }

    #[test]
    fn server_addresses_need_a_port() {
        assert_eq!(server_address_problem("127.0.0.1:5300"), None);
        assert_eq!(server_address_problem("[::1]:53"), None);
        assert_eq!(server_address_problem("ns1.example.com:53"), None);
        assert!(server_address_problem("ns1.example.com").is_some());
        assert!(server_address_problem("ns1.example.com:0").is_some());
    }
}
