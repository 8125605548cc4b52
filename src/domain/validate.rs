//! Input rules, each failure a field-level reason.

use std::net::IpAddr;

use serde::Serialize;

/// Why one field of a request (or a stored record) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

pub const MAX_NAME_LEN: usize = 100;
pub const MAX_DNS_NAMES: usize = 100;
/// RFC 1035: 253 characters in text form, 63 per label.
pub const MAX_DNS_NAME_LEN: usize = 253;
pub const MAX_LABEL_LEN: usize = 63;

// The rules as the OpenAPI document states them (JSON Schema patterns).
// Each is written in what Rust's `regex`, ECMA-262 and Python's `re` read
// alike: no lookaround, no `\s`, `\d` or `.`, only `\xNN` and `\uNNNN`
// escapes. The checks below accept exactly what they match (the tests
// hold them to it), so a request valid by the document is accepted.

/// One DNS label: a-z, 0-9 and '-', not at either end, at most 63.
const LABEL: &str = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
/// The last label of a DNS name begins with a letter (no TLD is numeric,
/// and an IPv4 address is then never a name).
const TOP_LABEL: &str = "[a-z]([a-z0-9-]{0,61}[a-z0-9])?";
/// Characters `char::is_control` or `char::is_whitespace` holds of.
const SPACE_OR_CONTROL: &str =
    r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// A display name: no control characters, something besides spaces.
pub fn name_pattern() -> String {
    format!(r"^[^\x00-\x1f\x7f-\x9f]*[^{SPACE_OR_CONTROL}][^\x00-\x1f\x7f-\x9f]*$")
}

/// A DNS name for a certificate (or a grant, without the wildcard).
pub fn dns_name_pattern(wildcard: bool) -> String {
    let star = if wildcard { r"(\*\.)?" } else { "" };
    format!("^{star}({LABEL}\\.)+{TOP_LABEL}$")
}

/// An e-mail address, loosely: no spaces, one '@', a DNS name after it.
pub fn email_pattern() -> String {
    format!("^[^@{SPACE_OR_CONTROL}]+@({LABEL}\\.)+{TOP_LABEL}$")
}

/// A host to connect to: one or more DNS labels (`localhost`, an IPv4
/// address's digits alike).
pub fn host_pattern() -> String {
    format!("^{LABEL}(\\.{LABEL})*$")
}

/// An ACME directory: https://, a host name (its last label beginning with
/// a letter) or an IPv4 address, an optional port, then any path.
pub fn https_url_pattern() -> String {
    url_pattern("https")
}

/// A webhook: as [`https_url_pattern`], or http://.
pub fn webhook_url_pattern() -> String {
    url_pattern("https?")
}

fn url_pattern(scheme: &str) -> String {
    let label = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    let top = "[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    let octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    let port =
        "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)";
    format!(
        "^{scheme}://(({label}\\.)*{top}|({octet}\\.){{3}}{octet})(:{port})?([/?#][\\x21-\\x7e]*)?$"
    )
}

/// A Kubernetes object name (DNS-1123 subdomain):
/// [`crate::domain::target_settings::kubernetes_name_problem`].
pub const KUBERNETES_NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$";

/// An id this API made ([`super::new_id`]): a prefix, `_`, 24 hex digits.
pub const ID_PATTERN: &str = "^[a-z]{3}_[0-9a-f]{24}$";

/// An External Account Binding key id: printable ASCII, no spaces.
pub const EAB_KID_PATTERN: &str = r"^[\x21-\x7e]{1,255}$";

/// Canonical unpadded-or-padded base64url of at least one byte.
pub const BASE64URL_KEY_PATTERN: &str =
    "^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{4}|[A-Za-z0-9_-][AQgw]|[A-Za-z0-9_-]{2}[AEIMQUYcgkosw048])=*$";

/// Canonical padded base64 of at least 16 bytes.
pub const TSIG_SECRET_PATTERN: &str =
    "^([A-Za-z0-9+/]{4}){5}([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{4}|[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)$";

/// Whether `value` matches `pattern` (one of the above).
pub fn matches(pattern: &str, value: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static COMPILED: OnceLock<Mutex<HashMap<String, regex::Regex>>> = OnceLock::new();
    let mut compiled = COMPILED.get_or_init(Default::default).lock().unwrap();
    compiled
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).expect("the rule's pattern compiles"))
        .is_match(value)
}

/// Collects reasons, field by field.
#[derive(Default)]
pub struct Reasons(pub Vec<FieldError>);

impl Reasons {
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A display name: 1 to 100 characters, no control characters.
pub fn name(reasons: &mut Reasons, field: &str, value: &str) {
    let n = value.chars().count();
    if value.trim().is_empty() {
        reasons.add(field, "must not be empty");
    } else if n > MAX_NAME_LEN {
        reasons.add(field, format!("is {n} characters; at most {MAX_NAME_LEN}"));
    } else if value.chars().any(char::is_control) {
        reasons.add(field, "must not contain control characters");
    }
}

/// Why `name` is not a DNS name we can put in a certificate, if it is not.
/// Wildcards (`*.example.com`, leftmost label only) only when allowed.
pub fn dns_name_problem(name: &str, wildcard_allowed: bool) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.parse::<IpAddr>().is_ok() || name.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Some("is an IP address; only DNS names are supported".into());
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Some(format!(
            "is {} characters; at most {MAX_DNS_NAME_LEN}",
            name.len()
        ));
    }
    if name != name.to_ascii_lowercase() {
        return Some("must be lower case".into());
    }
    let (wild, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if wild && !wildcard_allowed {
        return Some("is a wildcard; wildcards need an issuer with the dns-01 challenge".into());
    }
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.len() < 2 {
        return Some("must have at least two labels (e.g. example.com)".into());
    }
    for label in &labels {
        if label.is_empty() {
            return Some("has an empty label".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Some(format!(
                "has a label of {} characters; at most {MAX_LABEL_LEN}",
                label.len()
            ));
        }
        if label.contains('*') {
            return Some("may hold a wildcard only as its whole leftmost label".into());
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Some(format!(
                "label {label:?} may hold only a-z, 0-9 and '-' (use punycode for IDNs)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label {label:?} must not start or end with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| !tld.starts_with(|c: char| c.is_ascii_lowercase()))
    {
        return Some("must end in a label that begins with a letter".into());
    }
    None
}

pub fn dns_names(reasons: &mut Reasons, names: &[String], wildcard_allowed: bool) {
    if names.is_empty() {
        reasons.add("dns_names", "must list at least one name");
    }
    if names.len() > MAX_DNS_NAMES {
        reasons.add(
            "dns_names",
            format!("lists {} names; at most {MAX_DNS_NAMES}", names.len()),
        );
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, n) in names.iter().enumerate() {
        if let Some(problem) = dns_name_problem(n, wildcard_allowed) {
            reasons.add(format!("dns_names[{i}]"), format!("{n:?} {problem}"));
        } else if !seen.insert(n) {
            reasons.add(format!("dns_names[{i}]"), format!("{n:?} is listed twice"));
        }
    }
}

/// An e-mail address, loosely: something@domain ([`email_pattern`]).
pub fn email(reasons: &mut Reasons, field: &str, value: &str) {
    match value.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && dns_name_problem(domain, false).is_none()
                && !value.chars().any(|c| c.is_whitespace() || c.is_control()) => {}
        _ => reasons.add(field, format!("{value:?} is not an e-mail address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_checked_with_a_reason_each() {
        assert_eq!(dns_name_problem("www.example.com", false), None);
        assert_eq!(dns_name_problem("*.example.com", true), None);
        for (bad, why) in [
            ("*.example.com", "wildcard"),
            ("127.0.0.1", "IP address"),
            ("::1", "IP address"),
            ("example", "two labels"),
            ("Example.com", "lower case"),
            ("a..com", "empty label"),
            ("-a.com", "start or end"),
            ("a_b.com", "a-z"),
            ("www.*.example.com", "wildcard only"),
            ("a.123", "begins with a letter"),
            ("a.1x", "begins with a letter"),
        ] {
            let p = dns_name_problem(bad, false).unwrap_or_default();
            assert!(p.contains(why), "{bad}: {p}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(dns_name_problem(&long_label, false).unwrap().contains("63"));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(dns_name_problem(&long_name, false).unwrap().contains("253"));
    }

    /// The documented patterns accept exactly what the checks accept, on
    /// names at every edge the checks draw.
    #[test]
    fn the_documented_patterns_agree_with_the_checks() {
        let names = [
            "www.example.com",
            "*.example.com",
            "a.b",
            "a.1x",
            "a.123",
            "a-.com",
            "-a.com",
            "a..com",
            "Example.com",
            "a_b.com",
            "example",
            "127.0.0.1",
            "xn--bcher-kva.example",
            "www.*.example.com",
            "*.com",
            "a.b-",
            "0.a",
            "a.a0",
            "a.a-0",
        ];
        for wildcard in [false, true] {
            for n in names {
                assert_eq!(
                    matches(&dns_name_pattern(wildcard), n),
                    dns_name_problem(n, wildcard).is_none(),
                    "{n} (wildcard {wildcard})"
                );
            }
        }
        for (value, ok) in [
            ("ops@example.com", true),
            ("a@b.c", true),
            ("@example.com", false),
            ("a b@example.com", false),
            ("a@b@example.com", false),
            ("a@example", false),
            ("a\u{a0}@example.com", false),
            ("ünï@example.com", true),
            ("a@EXAMPLE.com", false),
        ] {
            let mut r = Reasons::default();
            email(&mut r, "contact", value);
            assert_eq!(r.is_empty(), ok, "{value}");
            assert_eq!(
                matches(&email_pattern(), value),
                ok,
                "{value} by the pattern"
            );
        }
        for (value, ok) in [
            ("a", true),
            (" a ", true),
            ("   ", false),
            ("", false),
            ("tab\there", false),
            ("\u{3000}", false),
            ("x\u{85}", false),
            ("ünïcode", true),
            ("\u{a0}b", true),
        ] {
            let mut r = Reasons::default();
            name(&mut r, "name", value);
            assert_eq!(r.is_empty(), ok, "{value:?}");
            assert_eq!(
                matches(&name_pattern(), value),
                ok,
                "{value:?} by the pattern"
            );
        }
        for (url, ok) in [
            ("https://acme-v02.api.letsencrypt.org/directory", true),
            ("https://127.0.0.1:14000/dir", true),
            ("https://localhost", true),
            ("https://LOCALHOST:443/x?y#z", true),
            ("http://example.com/", false),
            ("https://1.2.3.256/", false),
            ("https://example.123/", false),
            ("https://a_b.com/", false),
            ("https://[::1]/", false),
            ("https://x:65536/", false),
            ("https://x/ a", false),
            ("https://", false),
        ] {
            assert_eq!(matches(&https_url_pattern(), url), ok, "{url}");
            if ok {
                assert!(url::Url::parse(url).is_ok(), "{url} parses");
            }
        }
        use base64::Engine;
        for key in [
            "AAAA", "AA", "AB", "AAA", "AAE", "A", "", "AAAA==", "-_-_", "AAAAAA==",
        ] {
            let decodes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key.trim_end_matches('='))
                .is_ok_and(|k| !k.is_empty());
            assert_eq!(matches(BASE64URL_KEY_PATTERN, key), decodes, "{key}");
        }
        let sixteen = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let fifteen = base64::engine::general_purpose::STANDARD.encode([7u8; 15]);
        let seventeen = base64::engine::general_purpose::STANDARD.encode([7u8; 17]);
        for (secret, ok) in [
            (sixteen.as_str(), true),
            (seventeen.as_str(), true),
            (fifteen.as_str(), false),
            ("BwcHBwcHBwcHBwcHBwcHBx==", false),
        ] {
            let decodes = base64::engine::general_purpose::STANDARD
                .decode(secret)
                .is_ok_and(|k| k.len() >= 16);
            assert_eq!(decodes, ok, "{secret} decodes");
            assert_eq!(matches(TSIG_SECRET_PATTERN, secret), ok, "{secret}");
        }
    }
}
