//! The core's modules form layers (docs/ARCHITECTURE.md): a module may use only
//! modules of a lower layer. This test reads every `crate::` path in src/ and
//! fails on an import that points up or sideways, and on a module the table
//! does not place.

use std::collections::BTreeMap;

/// The layers, bottom first, as docs/ARCHITECTURE.md lists them.
const LAYERS: &[&[&str]] = &[
    &["sys", "cell", "proto", "frags", "compare"],
    &["fsmutex", "shared"],
    &["registry"],
    &["config", "creds"],
    &["log", "trace"],
    &["process"],
    &["lifecycle"],
    &["client"],
    &["shm"],
    &["server"],
];

fn layer_of() -> BTreeMap<&'static str, usize> {
    LAYERS.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (*m, i))).collect()
}

/// The modules `src` names through `crate::name` or `use crate::{name, ...}`,
/// comments left out.
fn uses(src: &str) -> Vec<String> {
    let code: String = src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.push(name);
            }
        } else {
            out.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out
}

#[test]
fn core_modules_import_only_lower_layers() {
    let layers = layer_of();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") || name == "lib" {
            continue;
        }
        seen += 1;
        let Some(&mine) = layers.get(name.as_str()) else {
            bad.push(format!("src/{name}.rs is in no layer of tests/layers.rs"));
            continue;
        };
        let src = std::fs::read_to_string(&path).unwrap();
        for used in uses(&src) {
            if let Some(&theirs) = layers.get(used.as_str()) {
                if used != name && theirs >= mine {
                    bad.push(format!("src/{name}.rs (layer {mine}) uses crate::{used} (layer {theirs})"));
                }
            }
        }
    }
    assert_eq!(seen, layers.len(), "every layered module exists in src/");
    assert!(bad.is_empty(), "layer violations:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_imports() {
    let found = uses("use crate::registry::{self, Slot};\nuse crate::{client, shm::X};\nlet x = crate::sys::getpid(); // crate::server");
    assert_eq!(found, ["registry", "client", "shm", "sys"]);
}
