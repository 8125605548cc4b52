//! Kubernetes label selectors, as the HPA sends them in `labelSelector`:
//! `a=b`, `a==b`, `a!=b`, `a in (b,c)`, `a notin (b,c)`, `a` (exists) and
//! `!a` (does not exist), joined by commas; every requirement must hold.
//! The same grammar and matching rules as `k8s.io/apimachinery/pkg/labels`,
//! without the numeric `gt`/`lt`, which no label of ours could use, and
//! refusing an empty set `in ()`, which is surely a mistake.

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The label is present with one of these values (`=`, `==`, `in`).
    In(String, Vec<String>),
    /// The label is absent or has none of these values (`!=`, `notin`).
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector: all of its requirements must hold. Empty selects all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(pub Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid labelSelector {input:?}: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub reason: String,
}

impl Selector {
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let fail = |reason: String| SelectorError {
            input: input.to_string(),
            reason,
        };
        let mut p = Parser {
            chars: input.chars().collect(),
            at: 0,
        };
        let mut requirements = Vec::new();
        p.skip_spaces();
        if p.done() {
            return Ok(Selector(requirements));
        }
        loop {
            requirements.push(p.requirement().map_err(fail)?);
            p.skip_spaces();
            match p.next() {
                None => break,
                Some(',') => p.skip_spaces(),
                Some(c) => return Err(fail(format!("expected ',' but found {c:?}"))),
            }
        }
        Ok(Selector(requirements))
    }

    /// Whether a set of labels (name, value) satisfies every requirement.
    pub fn matches(&self, labels: &[(&str, &str)]) -> bool {
        let value = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        self.0.iter().all(|r| match r {
            Requirement::In(k, set) => value(k).is_some_and(|v| set.iter().any(|s| s == v)),
            Requirement::NotIn(k, set) => value(k).is_none_or(|v| set.iter().all(|s| s != v)),
            Requirement::Exists(k) => value(k).is_some(),
            Requirement::NotExists(k) => value(k).is_none(),
        })
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn done(&self) -> bool {
        self.at >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.at += c.is_some() as usize;
        c
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// A run of the characters a key or value may hold.
    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some('!') {
            self.at += 1;
            self.skip_spaces();
            return Ok(Requirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        self.skip_spaces();
        match self.peek() {
            None | Some(',') => Ok(Requirement::Exists(key)),
            Some('=') => {
                self.at += 1;
                if self.peek() == Some('=') {
                    self.at += 1;
                }
                Ok(Requirement::In(key, vec![self.value()?]))
            }
            Some('!') => {
                self.at += 1;
                if self.next() != Some('=') {
                    return Err(format!("expected '!=' after {key:?}"));
                }
                Ok(Requirement::NotIn(key, vec![self.value()?]))
            }
            Some(_) => match self.word().as_str() {
                "in" => Ok(Requirement::In(key, self.set()?)),
                "notin" => Ok(Requirement::NotIn(key, self.set()?)),
                "" => Err(format!(
                    "expected an operator after {key:?}, found {:?}",
                    self.peek().unwrap_or(' ')
                )),
                other => Err(format!(
                    "unknown operator {other:?} after {key:?}: expected =, ==, !=, in or notin"
                )),
            },
        }
    }

    fn key(&mut self) -> Result<String, String> {
        let key = self.word();
        let (prefix, name) = match key.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        let ok = valid_name(name)
            && !name.is_empty()
            && prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && !p.contains('/'));
        if ok {
            Ok(key)
        } else if key.is_empty() {
            match self.peek() {
                Some(c) => Err(format!("expected a label name, found {c:?}")),
                None => Err("expected a label name".into()),
            }
        } else {
            Err(format!("{key:?} is not a valid label name"))
        }
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_spaces();
        let value = self.word();
        if value.contains('/') || !valid_name(&value) {
            return Err(format!("{value:?} is not a valid label value"));
        }
        Ok(value)
    }

    /// `( value, value, … )`, not empty.
    fn set(&mut self) -> Result<Vec<String>, String> {
        self.skip_spaces();
        if self.next() != Some('(') {
            return Err("expected '(' after in or notin".into());
        }
        let mut values = Vec::new();
        loop {
            let value = self.value()?;
            self.skip_spaces();
            values.push(value);
            match self.next() {
                Some(',') => continue,
                Some(')') => break,
                Some(c) => return Err(format!("expected ',' or ')' in a value set, found {c:?}")),
                None => return Err("unclosed value set: expected ')'".into()),
            }
        }
        if values.iter().all(String::is_empty) {
            return Err("the value set of in or notin must not be empty".into());
        }
        Ok(values)
    }
}

/// A label name or value: at most 63 characters of `[A-Za-z0-9._-]`,
/// beginning and ending alphanumeric; a value may be empty.
fn valid_name(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.is_empty()
        || (s.len() <= 63
            && alnum(s.chars().next())
            && alnum(s.chars().last())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|v| v.to_string()).collect()
    }

    const QUEUED_ISSUE: &[(&str, &str)] = &[("kind", "issue-certificate"), ("state", "queued")];
    const DEAD_REVOKE: &[(&str, &str)] = &[("kind", "revoke-certificate"), ("state", "dead")];

    #[test]
    fn parses_every_operator() {
        assert_eq!(sel(""), Selector(vec![]));
        assert_eq!(sel("  "), Selector(vec![]));
        assert_eq!(
            sel("state=queued"),
            Selector(vec![Requirement::In("state".into(), s(&["queued"]))])
        );
        assert_eq!(sel("state==queued"), sel("state=queued"));
        assert_eq!(
            sel("state="),
            Selector(vec![Requirement::In("state".into(), s(&[""]))])
        );
        assert_eq!(sel(" state = queued "), sel("state=queued"));
        assert_eq!(
            sel("state!=dead,kind in (issue-certificate, revoke-certificate),!zone,app"),
            Selector(vec![
                Requirement::NotIn("state".into(), s(&["dead"])),
                Requirement::In(
                    "kind".into(),
                    s(&["issue-certificate", "revoke-certificate"])
                ),
                Requirement::NotExists("zone".into()),
                Requirement::Exists("app".into()),
            ])
        );
        assert_eq!(
            sel("state notin(queued,running)"),
            Selector(vec![Requirement::NotIn(
                "state".into(),
                s(&["queued", "running"])
            )])
        );
        assert_eq!(
            sel("example.com/tier=a"),
            Selector(vec![Requirement::In("example.com/tier".into(), s(&["a"]))])
        );
    }

    #[test]
    fn refuses_malformed_selectors() {
        for bad in [
            ",",
            "state=queued,",
            ",state=queued",
            "=queued",
            "state=queued=x",
            "state=que ued",
            "state in queued",
            "state in ()",
            "state in (queued",
            "state in (queued running)",
            "state gt 3",
            "state > 3",
            "state ! queued",
            "!",
            "state=-queued",
            "sta te=queued",
            "a/b/c=d",
            "/b=c",
            "state=a/b",
            "state=(queued)",
            &format!("state={}", "q".repeat(64)),
        ] {
            let e = Selector::parse(bad);
            assert!(e.is_err(), "{bad:?} was accepted as {e:?}");
        }
        let e = Selector::parse("state gt 3").unwrap_err();
        assert!(e.to_string().contains("unknown operator \"gt\""), "{e}");
    }

    #[test]
    fn matches_as_kubernetes_does() {
        assert!(sel("").matches(QUEUED_ISSUE));
        assert!(sel("state=queued").matches(QUEUED_ISSUE));
        assert!(!sel("state=queued").matches(DEAD_REVOKE));
        assert!(sel("state=queued,kind=issue-certificate").matches(QUEUED_ISSUE));
        assert!(!sel("state=queued,kind=revoke-certificate").matches(QUEUED_ISSUE));
        assert!(sel("state!=queued").matches(DEAD_REVOKE));
        assert!(!sel("state!=queued").matches(QUEUED_ISSUE));
        assert!(sel("kind in (revoke-certificate,x)").matches(DEAD_REVOKE));
        assert!(!sel("kind notin (revoke-certificate,x)").matches(DEAD_REVOKE));
        assert!(sel("kind notin (x)").matches(DEAD_REVOKE));
        // A label the items do not have: equality never holds, inequality
        // always does.
        assert!(!sel("zone=a").matches(QUEUED_ISSUE));
        assert!(sel("zone!=a").matches(QUEUED_ISSUE));
        assert!(sel("zone notin (a)").matches(QUEUED_ISSUE));
        assert!(sel("!zone,state").matches(QUEUED_ISSUE));
        assert!(!sel("!state").matches(QUEUED_ISSUE));
        assert!(!sel("zone").matches(QUEUED_ISSUE));
    }
}
