//! The `POST /v1/runs` body validator (`rungateway::validate::validate_run_start`).
//!
//! Input: the body bytes. Invariants checked, against an independent reading with serde_json:
//! - Ok: the bytes are one JSON object with only RunStartRequest's properties, a string
//!   `run_id` if any, an object `input`, and a `root_node_type_ref` object whose `node_type_id`
//!   and `version` are strings (and which has no other property than those and `extensions`).
//! - A body of exactly that minimal shape (only `root_node_type_ref` {node_type_id, version},
//!   `input` object, optional string `run_id`) must be Ok.
//! - Err: 1 to 20 messages, each bounded (the messages go back to an untrusted client) and
//!   naming a location (`body` or a JSON pointer) first.
//! - Deterministic: the same bytes give the same answer twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rungateway::validate::validate_run_start;
use serde_json::Value;

const TOP: [&str; 7] = [
    "run_id",
    "root_node_type_ref",
    "input",
    "run_context",
    "constraints",
    "metadata",
    "extensions",
];

/// Bound on one message: location (200 + "...") + ": " + message (200 + "..."), with room.
const MAX_MESSAGE: usize = 420;

fn is_str(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::String(_)))
}

/// Whether `v` is the minimal, obviously valid shape.
fn is_minimal_valid(v: &Value) -> bool {
    let Some(obj) = v.as_object() else {
        return false;
    };
    let keys_ok = obj
        .keys()
        .all(|k| matches!(k.as_str(), "run_id" | "root_node_type_ref" | "input"));
    let run_id_ok = obj.get("run_id").is_none_or(Value::is_string);
    let input_ok = obj.get("input").is_some_and(Value::is_object);
    let root_ok = obj
        .get("root_node_type_ref")
        .and_then(Value::as_object)
        .is_some_and(|r| r.len() == 2 && is_str(r.get("node_type_id")) && is_str(r.get("version")));
    keys_ok && run_id_ok && input_ok && root_ok
}

fuzz_target!(|data: &[u8]| {
    let result = validate_run_start(data);
    assert_eq!(result, validate_run_start(data), "not deterministic");
    let parsed: Option<Value> = std::str::from_utf8(data)
        .ok()
        .and_then(|s| serde_json::from_str(s).ok());
    match &result {
        Ok(()) => {
            let v = parsed.expect("accepted a body that is not one JSON value");
            let obj = v.as_object().expect("accepted a non-object body");
            for k in obj.keys() {
                assert!(TOP.contains(&k.as_str()), "accepted unknown property {k:?}");
            }
            assert!(
                obj.get("run_id").is_none_or(Value::is_string),
                "run_id not a string"
            );
            assert!(
                obj.get("input").is_some_and(Value::is_object),
                "input missing or not an object"
            );
            let root = obj
                .get("root_node_type_ref")
                .and_then(Value::as_object)
                .expect("root_node_type_ref missing or not an object");
            assert!(
                is_str(root.get("node_type_id")),
                "node_type_id not a string"
            );
            assert!(is_str(root.get("version")), "version not a string");
            for k in root.keys() {
                assert!(
                    matches!(k.as_str(), "node_type_id" | "version" | "extensions"),
                    "accepted unknown root_node_type_ref property {k:?}"
                );
            }
        }
        Err(messages) => {
            assert!(!messages.is_empty(), "rejected without a reason");
            assert!(messages.len() <= 20, "{} messages", messages.len());
            for m in messages {
                assert!(m.len() <= MAX_MESSAGE, "message of {} bytes", m.len());
                assert!(
                    m.starts_with("body") || m.starts_with('/'),
                    "message without a location: {m:?}"
                );
            }
            if let Some(v) = &parsed {
                assert!(
                    !is_minimal_valid(v),
                    "rejected a minimal valid body: {messages:?}"
                );
            }
        }
    }
});
