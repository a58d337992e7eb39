//! Checks `validate_run_start` against the ARP spec's own conformance vectors, and checks that the
//! schema copies vendored under `spec/` have not drifted from the spec in `../shared/arp-spec`.
//!
//! `../shared` sits beside the repository in CI. Every test here fails (rather than skips) when it
//! is missing or holds no vectors, so a broken checkout cannot pass vacuously.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use rungateway::validate::validate_run_start;
use serde_json::{json, Value};

const SHARED_SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/arp-spec");
const VENDORED_SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/spec");
/// The schema `validate_run_start` implements, relative to `v1/schemas/`.
const RUN_START_SCHEMA: &str = "run_gateway/runs/run_start_request.schema.json";

fn shared_spec() -> PathBuf {
    let dir = PathBuf::from(SHARED_SPEC);
    assert!(
        dir.join("v1").is_dir(),
        "the ARP spec is expected at {} (it sits beside the repository in CI); \
         these tests need it and deliberately do not skip without it",
        dir.display()
    );
    dir
}

/// All `*.json` files below `dir`, recursively, sorted for stable output.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", current.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", current.display()))
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "json") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or_else(|_| panic!("{} is not under {}", path.display(), base.display()))
        .to_string_lossy()
        .replace('\\', "/")
}

/// Each vector file is one payload, and its path mirrors the schema it exercises
/// (`conformance/README.md`, `json_vectors/README.md`): `x/y.json` -> `schemas/x/y.schema.json`.
/// Returns the vectors below `conformance/<set>/run_gateway`, asserting that they all target
/// the one schema this validator implements, so a vector for some other schema added there
/// later fails loudly instead of being checked against the wrong schema.
fn run_gateway_vectors(set: &str) -> Vec<(String, Vec<u8>)> {
    let conformance = shared_spec().join("v1/conformance").join(set);
    let files = json_files(&conformance.join("run_gateway"));
    assert!(
        !files.is_empty(),
        "no vectors found under {}",
        conformance.join("run_gateway").display()
    );
    files
        .iter()
        .map(|file| {
            let name = relative(file, &conformance);
            let schema = format!("{}.schema.json", name.trim_end_matches(".json"));
            assert_eq!(
                schema, RUN_START_SCHEMA,
                "vector {set}/{name} targets a schema validate_run_start does not implement"
            );
            (format!("{set}/{name}"), read(file))
        })
        .collect()
}

#[test]
fn valid_run_gateway_vectors_are_accepted() {
    for (name, bytes) in run_gateway_vectors("json_vectors") {
        assert_eq!(
            validate_run_start(&bytes),
            Ok(()),
            "valid vector {name} was rejected"
        );
    }
}

#[test]
fn invalid_run_gateway_vectors_are_rejected() {
    for (name, bytes) in run_gateway_vectors("json_vectors_invalid") {
        let errors = validate_run_start(&bytes)
            .err()
            .unwrap_or_else(|| panic!("invalid vector {name} was accepted"));
        assert!(!errors.is_empty(), "{name}: rejected without a message");
    }
}

/// The spec's vectors for the components a `RunStartRequest` embeds, placed where the request
/// embeds them. This exercises every cross-file `$ref` with the spec's own data, not just ours.
#[test]
fn component_vectors_hold_inside_a_run_start_request() {
    // (vector path below json_vectors*/, JSON pointer in the request where it goes)
    const PLACES: [(&str, &str); 5] = [
        ("core/run_context.json", "/run_context"),
        ("core/constraint_envelope.json", "/constraints"),
        ("common/metadata.json", "/metadata"),
        ("common/extensions.json", "/extensions"),
        ("common/resource_ref.json", "/run_context/actor"),
    ];
    let conformance = shared_spec().join("v1/conformance");
    for (set, should_pass) in [("json_vectors", true), ("json_vectors_invalid", false)] {
        for (vector, pointer) in PLACES {
            let path = conformance.join(set).join(vector);
            let component: Value = serde_json::from_slice(&read(&path))
                .unwrap_or_else(|e| panic!("{set}/{vector} is not JSON: {e}"));
            let mut body = json!({
                "root_node_type_ref": {"node_type_id": "example", "version": "1"},
                "input": {}
            });
            place(&mut body, pointer, component);
            let result = validate_run_start(body.to_string().as_bytes());
            if should_pass {
                assert_eq!(result, Ok(()), "{set}/{vector} at {pointer}");
            } else {
                let errors = result
                    .err()
                    .unwrap_or_else(|| panic!("{set}/{vector} at {pointer} was accepted"));
                assert!(
                    errors.iter().any(|m| m.starts_with(pointer)),
                    "{set}/{vector}: no error located at {pointer}: {errors:?}"
                );
            }
        }
    }
}

/// Sets `pointer` (plain property names only) in `body`, creating intermediate objects.
fn place(body: &mut Value, pointer: &str, value: Value) {
    let mut segments: Vec<&str> = pointer.split('/').skip(1).collect();
    let last = segments.pop().expect("pointer names a property");
    let mut target = body;
    for segment in segments {
        target = target
            .as_object_mut()
            .expect("intermediate value is an object")
            .entry(segment)
            .or_insert_with(|| json!({}));
    }
    target
        .as_object_mut()
        .expect("parent is an object")
        .insert(last.to_owned(), value);
}

#[test]
fn vendored_schemas_match_shared_spec() {
    let shared = shared_spec();
    let vendored_root = PathBuf::from(VENDORED_SPEC);
    let vendored = json_files(&vendored_root.join("v1"));
    assert!(
        !vendored.is_empty(),
        "no vendored schemas under {}",
        vendored_root.display()
    );
    for file in vendored {
        let name = relative(&file, &vendored_root);
        let original = shared.join(&name);
        assert!(
            original.is_file(),
            "spec/{name} has no counterpart at {}",
            original.display()
        );
        assert!(
            read(&file) == read(&original),
            "spec/{name} differs from {}; re-copy it (and re-check the validator tests)",
            original.display()
        );
    }
}

/// The vendored set must be exactly what `run_start_request.schema.json` reaches through
/// `$ref`, computed from the shared spec: a new `$ref` upstream means a file to vendor and embed,
/// and a stale extra file means dead weight that would still be "checked" for drift.
#[test]
fn vendored_set_is_the_ref_closure_of_run_start_request() {
    let schemas = shared_spec().join("v1/schemas");
    let mut closure = BTreeSet::new();
    let mut pending = vec![RUN_START_SCHEMA.to_owned()];
    while let Some(name) = pending.pop() {
        if !closure.insert(name.clone()) {
            continue;
        }
        let doc: Value = serde_json::from_slice(&read(&schemas.join(&name)))
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for reference in refs {
            let target = reference.split('#').next().unwrap_or_default();
            if target.is_empty() {
                continue; // same-document reference
            }
            assert!(
                !target.contains(':'),
                "{name} references {reference}, which is not a relative path"
            );
            let base = Path::new(&name).parent().unwrap_or(Path::new(""));
            pending.push(normalize(&base.join(target)));
        }
    }

    let vendored_root = PathBuf::from(VENDORED_SPEC).join("v1/schemas");
    let vendored: BTreeSet<String> = json_files(&vendored_root)
        .iter()
        .map(|file| relative(file, &vendored_root))
        .collect();
    assert_eq!(vendored, closure);
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", Value::String(reference)) => out.push(reference.clone()),
                    _ => collect_refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

/// Resolves `.` and `..` lexically; the schemas refer to each other by relative paths.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                assert!(
                    parts.pop().is_some(),
                    "{} escapes the schema folder",
                    path.display()
                );
            }
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}
