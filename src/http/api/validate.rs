//! Input rules, each failure a field-level reason.

use std::net::IpAddr;

use super::problem::FieldError;

pub const MAX_NAME_LEN: usize = 100;
pub const MAX_DNS_NAMES: usize = 100;
/// RFC 1035: 253 characters in text form, 63 per label.
pub const MAX_DNS_NAME_LEN: usize = 253;
pub const MAX_LABEL_LEN: usize = 63;

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
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Some("must not end in an all-numeric label".into());
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

/// An e-mail address, loosely: something@domain.
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
            ("a.123", "all-numeric"),
        ] {
            let p = dns_name_problem(bad, false).unwrap_or_default();
            assert!(p.contains(why), "{bad}: {p}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(dns_name_problem(&long_label, false).unwrap().contains("63"));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(dns_name_problem(&long_name, false).unwrap().contains("253"));
    }
}
