//! Domain grants: the names a project may certify. A grant covers its name
//! and every name under it; a wildcard certificate needs the grant of its
//! base. A name belongs to one project only, unless its grant was made
//! `shared` (DESIGN.md invariant 10).

/// One name a project may certify, with everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainGrant {
    pub name: String,
    /// Granted knowing that another project holds an overlapping name.
    pub shared: bool,
}

/// The name a certificate name is validated at: a wildcard's base.
pub fn base_name(name: &str) -> String {
    name.trim_start_matches("*.")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Whether `grant` covers the certificate name `name`.
pub fn covers(grant: &str, name: &str) -> bool {
    let name = base_name(name);
    let grant = base_name(grant);
    name == grant || name.ends_with(&format!(".{grant}"))
}

/// Whether two grants overlap: one is the other, or lies under it.
pub fn overlap(a: &str, b: &str) -> bool {
    covers(a, b) || covers(b, a)
}

/// The names of `names` that none of `grants` covers.
pub fn uncovered<'a>(grants: &[DomainGrant], names: &'a [String]) -> Vec<&'a str> {
    names
        .iter()
        .filter(|n| !grants.iter().any(|g| covers(&g.name, n)))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str) -> DomainGrant {
        DomainGrant {
            name: name.into(),
            shared: false,
        }
    }

    #[test]
    fn a_grant_covers_its_name_and_every_name_under_it() {
        assert!(covers("example.com", "example.com"));
        assert!(covers("example.com", "www.example.com"));
        assert!(covers("example.com", "*.example.com"));
        assert!(covers("example.com", "a.b.EXAMPLE.com."));
        assert!(!covers("example.com", "badexample.com"));
        assert!(!covers("www.example.com", "example.com"));
        assert!(!covers("www.example.com", "*.example.com"));
    }

    #[test]
    fn grants_overlap_when_one_lies_under_the_other() {
        assert!(overlap("example.com", "shop.example.com"));
        assert!(overlap("shop.example.com", "example.com"));
        assert!(overlap("example.com", "example.com"));
        assert!(!overlap("a.example.com", "b.example.com"));
        assert!(!overlap("example.com", "example.org"));
    }

    #[test]
    fn the_names_no_grant_covers_are_named() {
        let grants = [grant("a.example"), grant("www.other.example")];
        let names: Vec<String> = [
            "shop.a.example",
            "*.a.example",
            "other.example",
            "www.other.example",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(uncovered(&grants, &names), ["other.example"]);
    }
}
