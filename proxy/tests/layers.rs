//! The modules of `proxy/src` depend one way: each may use only modules on a lower layer
//! (ARCHITECTURE.md draws them). This reads every source file's `crate::…` paths (and
//! `loka_proxy::…` in the binary) and fails naming the file and the path that points up
//! or sideways, so an import circle cannot come back unnoticed.

use std::path::{Path, PathBuf};

/// Top-level modules of `proxy/src`, from the top layer down; a module may use only those
/// on a lower layer.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["demo"],
    &["runtime"],
    &["api"],
    &["listener"],
    &["session"],
    &["context"],
    &["fanout"],
    &["upstream", "stats"],
    &[
        "registry",
        "reload",
        "settings",
        "telemetry",
        "clock",
        "lines",
        "events",
        "tls",
    ],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proxy/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names after `prefix` (`crate::` or `loka_proxy::`).
fn used_modules<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .filter(|(i, _)| {
            // Not part of a longer name (`my_crate::`).
            text[..*i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
        })
        .filter_map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (end > 0).then(|| &rest[..end])
        })
        .collect()
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_str()
            .expect("utf-8")
            .trim_end_matches(".rs");
        if module == "lib" {
            continue;
        }
        let from = layer(module)
            .unwrap_or_else(|| panic!("{}: module {module} has no layer in LAYERS", rel.display()));
        // Code only: a doc link to a higher module is not a dependency.
        let text: String = std::fs::read_to_string(file)
            .expect("read source")
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let prefix = if module == "main" {
            "loka_proxy::"
        } else {
            "crate::"
        };
        for used in used_modules(&text, prefix) {
            checked += 1;
            if used == module {
                continue;
            }
            let to = layer(used).unwrap_or_else(|| {
                panic!(
                    "{}: uses {prefix}{used}, which has no layer in LAYERS",
                    rel.display()
                )
            });
            if to <= from {
                wrong.push(format!("{}: {prefix}{used}", rel.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the scan reading the sources?"
    );
    assert!(
        wrong.is_empty(),
        "these uses point up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scan_finds_paths_and_ignores_longer_names() {
    let text = "use crate::context::Shared;\nlet x = my_crate::y; crate::clock::now();";
    assert_eq!(used_modules(text, "crate::"), ["context", "clock"]);
}
