//! The crate's shape, checked: layers import only from the layers below
//! them, no two modules import each other (directly or round a longer
//! loop), and only the modules that own collections touch them.
//!
//! The layers, lowest first, are the top-level modules of `src/`; `lib.rs`
//! opens with the same list. A failure names the file, the import and the
//! rule it breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may import from its own layer and
/// those before it.
const LAYERS: [&str; 17] = [
    "domain",
    "observe",
    "net",
    "store",
    "crypto",
    "queue",
    "audit",
    "backup",
    "acme",
    "distribute",
    "notify",
    "services",
    "work",
    "actors",
    "http",
    "cli",
    "fuzzing",
];

/// Where `.collection(` may be called: the store, and the layers that own
/// their own collections (the queue: jobs, leases, workers; the audit log).
const COLLECTION_OWNERS: [&str; 3] = ["store", "queue", "audit"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    from: String,
    to: String,
    line: usize,
    text: String,
}

struct Crate {
    /// Module path (`acme::order`) → file, relative to the crate root.
    modules: BTreeMap<String, PathBuf>,
    imports: Vec<Import>,
    collection_calls: Vec<(PathBuf, usize)>,
}

/// The module path of a file under `src/` (`src/acme/mod.rs` → `acme`).
fn module_of(relative: &Path) -> Option<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?;
    match stem {
        "lib" | "main" if parts.is_empty() => return None,
        "mod" => {}
        stem => parts.push(stem.to_string()),
    }
    Some(parts.join("::"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code without comments (doc links name modules without depending on them).
fn code_lines(source: &str) -> Vec<(usize, String)> {
    source
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let code = match l.find("//") {
                Some(at) => &l[..at],
                None => l,
            };
            (i + 1, code.to_string())
        })
        .collect()
}

/// Every `crate::…` or `super::…` path a line names, as written (`use`
/// groups `crate::{a, b::c}` expanded one level).
fn paths_in(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `$crate::`, `foo::crate::`
            }
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':').to_string();
            if tail[path.len()..].starts_with("::{") {
                let group = &tail[path.len() + 3..];
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let item = item.trim().trim_start_matches("self");
                    if !item.is_empty() {
                        found.push(format!("{path}::{item}"));
                    } else {
                        found.push(path.clone());
                    }
                }
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// The module a path leads into: its longest prefix that is a module.
fn resolve(path: &str, from: &str, modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split("::").peekable();
    match parts.next()? {
        "crate" => {}
        "super" => {
            segments.extend(from.split("::"));
            segments.pop();
            while parts.peek() == Some(&"super") {
                parts.next();
                segments.pop();
            }
        }
        _ => return None,
    }
    segments.extend(parts);
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

fn read_crate(src: &Path) -> Crate {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    // Files are named from the crate's root (`src/acme/order.rs`).
    let root = src.parent().unwrap_or(src);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter_map(|f| {
            let module = module_of(f.strip_prefix(src).ok()?)?;
            Some((module, f.strip_prefix(root).ok()?.to_path_buf()))
        })
        .collect();
    let mut imports = Vec::new();
    let mut collection_calls = Vec::new();
    for (module, file) in &modules {
        let source = std::fs::read_to_string(root.join(file)).unwrap();
        for (line, code) in code_lines(&source) {
            if code.contains(".collection(") {
                collection_calls.push((file.clone(), line));
            }
            for path in paths_in(&code) {
                if let Some(to) = resolve(&path, module, &modules) {
                    if &to != module && !to.starts_with(&format!("{module}::")) {
                        imports.push(Import {
                            from: module.clone(),
                            to,
                            line,
                            text: code.trim().to_string(),
                        });
                    }
                }
            }
        }
    }
    Crate {
        modules,
        imports,
        collection_calls,
    }
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| *l == top)
}

/// Imports that go up the layer order.
fn upward_imports(c: &Crate) -> Vec<String> {
    c.imports
        .iter()
        .filter_map(|i| {
            let (from, to) = (layer_of(&i.from)?, layer_of(&i.to)?);
            (to > from).then(|| {
                format!(
                    "{}:{}: `{}` imports {} ({}, above {}): {}",
                    c.modules[&i.from].display(),
                    i.line,
                    i.from,
                    i.to,
                    LAYERS[to],
                    LAYERS[from],
                    i.text
                )
            })
        })
        .collect()
}

/// Modules that are not part of any layer (a new top-level module must be
/// given its place in [`LAYERS`]).
fn unplaced(c: &Crate) -> Vec<String> {
    c.modules
        .keys()
        .filter(|m| layer_of(m).is_none())
        .map(|m| format!("{}: `{m}` is in no layer", c.modules[m].display()))
        .collect()
}

/// Loops of imports between modules, each shown once as `a -> b -> a`, with
/// the line of each import.
fn cycles(c: &Crate) -> Vec<String> {
    let mut edges: BTreeMap<&str, BTreeMap<&str, &Import>> = BTreeMap::new();
    for i in &c.imports {
        edges
            .entry(i.from.as_str())
            .or_default()
            .entry(i.to.as_str())
            .or_insert(i);
    }
    let mut reported: BTreeSet<BTreeSet<&str>> = BTreeSet::new();
    let mut found = Vec::new();
    for start in c.modules.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack: Vec<(&str, Vec<&Import>)> = vec![(start.as_str(), Vec::new())];
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for (to, import) in edges.get(at).into_iter().flatten() {
                let mut path = path.clone();
                path.push(import);
                if *to == start.as_str() {
                    let members: BTreeSet<&str> = path.iter().map(|i| i.from.as_str()).collect();
                    if reported.insert(members) {
                        let shown: Vec<String> = path
                            .iter()
                            .map(|i| {
                                format!(
                                    "{} ({}:{}: {})",
                                    i.from,
                                    c.modules[&i.from].display(),
                                    i.line,
                                    i.text
                                )
                            })
                            .collect();
                        found.push(format!("{} -> {start}", shown.join(" -> ")));
                    }
                } else if seen.insert(to) {
                    stack.push((to, path));
                }
            }
        }
    }
    found
}

fn collection_outside_owners(c: &Crate) -> Vec<String> {
    c.collection_calls
        .iter()
        .filter(|(file, _)| {
            // `src/<layer>/…`
            let top = file.iter().nth(1);
            !top.is_some_and(|t| {
                COLLECTION_OWNERS
                    .iter()
                    .any(|o| t.to_string_lossy() == *o)
            })
        })
        .map(|(file, line)| {
            format!(
                "{}:{line}: touches a collection directly; go through the store module that owns it",
                file.display()
            )
        })
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn layers_import_only_from_the_layers_below_them() {
    let c = read_crate(&src());
    assert!(c.modules.len() > 50, "read {} modules", c.modules.len());
    assert!(c.imports.len() > 200, "read {} imports", c.imports.len());
    let mut problems = unplaced(&c);
    problems.extend(upward_imports(&c));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn no_two_modules_import_each_other() {
    let c = read_crate(&src());
    let found = cycles(&c);
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn only_the_owners_of_collections_touch_them() {
    let c = read_crate(&src());
    assert!(!c.collection_calls.is_empty());
    let found = collection_outside_owners(&c);
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

/// The checks on a crate made to break them: they must catch it.
/// Where a certificate's private key may be opened: where it is sealed
/// (`crypto::secrets`), re-sealed (`crypto::reseal`, migration 12), used in
/// process for the CSR (`actors::order`), and the key-release door
/// (`services::key_release`), which every path that sends a key out goes
/// through (DESIGN.md invariant 13). A new way out that opens the key
/// itself fails here.
#[test]
fn a_certificate_key_is_opened_for_sending_only_by_the_key_release_door() {
    let allowed = [
        "crypto/secrets.rs",
        "crypto/reseal.rs",
        "actors/order.rs",
        "services/key_release.rs",
    ];
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in code_lines(&text) {
            if line.contains("certificate_key(") && !allowed.contains(&relative.as_str()) {
                found.push(format!("{relative}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "a private key opened outside the door: {found:#?}"
    );
}

#[test]
fn the_checks_catch_an_upward_import_and_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod domain;\npub mod store;\n");
    write(
        "domain/mod.rs",
        "pub mod a;\npub mod b;\n/// [`crate::store::x`] in a comment is fine\n",
    );
    write("domain/a.rs", "use super::b::B;\npub struct A;\n");
    write(
        "domain/b.rs",
        "use crate::domain::{a::A, self};\npub struct B;\n",
    );
    write("store/mod.rs", "pub mod x;\n");
    write("store/x.rs", "fn f(s: &S) { s.collection(\"c\"); }\n");
    write("store/y.rs", "use crate::domain::a;\n");
    write("domain/c.rs", "use crate::store::x::f;\n");
    let c = read_crate(src);
    let up = upward_imports(&c);
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].contains("domain/c.rs:1") && up[0].contains("store::x"),
        "{up:?}"
    );
    let loops = cycles(&c);
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert!(
        loops[0].contains("domain::a") && loops[0].contains("domain::b"),
        "{loops:?}"
    );
    assert!(collection_outside_owners(&c).is_empty());
    write("domain/d.rs", "fn g(s: &S) { s.collection(\"c\"); }\n");
    let c = read_crate(src);
    assert_eq!(collection_outside_owners(&c).len(), 1);
}
