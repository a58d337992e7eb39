//! Validation of the `POST /v1/runs` body (`RunStartRequest`) against the ARP v1 JSON Schemas.
//!
//! The schemas are vendored unchanged under `spec/v1/schemas/` and embedded at compile time, so
//! the binary neither reads files nor fetches anything to validate. The gateway forwards a valid
//! body byte for byte; this module only decides whether it may be forwarded and, if not, explains
//! why in a bounded number of bounded messages (the messages go back to an untrusted client).

use std::fmt::{self, Write as _};

use jsonschema::{Draft, Registry, Validator};
use once_cell::sync::Lazy;
use serde_json::Value;

/// Base under which the embedded schemas are registered. The schemas carry no `$id` and refer to
/// each other by relative paths (`../../core/node_type_ref.schema.json`), so they need a
/// hierarchical base that mirrors the spec layout. `.invalid` guarantees it can never resolve to a
/// real host, and retrieval is switched off anyway.
const BASE_URI: &str = "https://arp-spec.invalid/v1/schemas/";

const ROOT_SCHEMA: (&str, &str) = (
    "run_gateway/runs/run_start_request.schema.json",
    include_str!("../spec/v1/schemas/run_gateway/runs/run_start_request.schema.json"),
);

/// Everything `run_start_request.schema.json` references, directly or transitively.
const REFERENCED_SCHEMAS: [(&str, &str); 6] = [
    (
        "core/node_type_ref.schema.json",
        include_str!("../spec/v1/schemas/core/node_type_ref.schema.json"),
    ),
    (
        "core/run_context.schema.json",
        include_str!("../spec/v1/schemas/core/run_context.schema.json"),
    ),
    (
        "core/constraint_envelope.schema.json",
        include_str!("../spec/v1/schemas/core/constraint_envelope.schema.json"),
    ),
    (
        "common/metadata.schema.json",
        include_str!("../spec/v1/schemas/common/metadata.schema.json"),
    ),
    (
        "common/extensions.schema.json",
        include_str!("../spec/v1/schemas/common/extensions.schema.json"),
    ),
    (
        "common/resource_ref.schema.json",
        include_str!("../spec/v1/schemas/common/resource_ref.schema.json"),
    ),
];

/// A hostile body can contain thousands of independent violations; the error response must not
/// grow with it. The last slot is kept for a note saying that more were omitted.
const MAX_ERRORS: usize = 20;
/// Paths can embed client-chosen object keys (e.g. `/metadata/labels/<key>`).
const MAX_PATH_BYTES: usize = 200;
/// Messages can embed client-chosen values (`"<huge string>" is not of type "object"`).
const MAX_MESSAGE_BYTES: usize = 200;
const TRUNCATION_MARK: &str = "...";

/// Compiled once; the schemas are constants, so whether this succeeds does not depend on any
/// request. The unit test `embedded_schemas_compile` makes a broken schema fail CI instead of
/// the first request.
static VALIDATOR: Lazy<Validator> = Lazy::new(|| {
    compile().unwrap_or_else(|err| panic!("embedded RunStartRequest schemas must compile: {err}"))
});

fn compile() -> Result<Validator, String> {
    let mut documents = Vec::with_capacity(REFERENCED_SCHEMAS.len());
    for (path, text) in REFERENCED_SCHEMAS {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("{path}: {e}"))?;
        documents.push((format!("{BASE_URI}{path}"), doc));
    }
    let (root_path, root_text) = ROOT_SCHEMA;
    let root: Value = serde_json::from_str(root_text).map_err(|e| format!("{root_path}: {e}"))?;

    // The schemas declare no `$schema`; pin the draft so a future change of the crate's default
    // cannot silently change what is accepted. 2020-12 makes `format` an annotation unless a
    // validator opts in, and we pin that too: the only format here is `resource_ref.uri`
    // (`"format": "uri"`), and a gateway in front of the coordinator should not be stricter
    // than the spec requires.
    let registry = Registry::new()
        .draft(Draft::Draft202012)
        .extend(documents.iter().map(|(uri, doc)| (uri.as_str(), doc)))
        .and_then(|builder| builder.prepare())
        .map_err(|e| format!("schema registry: {e}"))?;
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(false)
        .with_base_uri(format!("{BASE_URI}{root_path}"))
        .with_registry(&registry)
        .offline()
        .build(&root)
        .map_err(|e| format!("{root_path}: {e}"))
}

/// Validates a start-run body. Ok(()) when the bytes are a JSON object that satisfies RunStartRequest.
/// Err(errors): human-readable messages, one per problem, each naming the JSON location
/// (e.g. "/root_node_type_ref: \"version\" is a required property", or "body: invalid JSON at line 1 column 5: ...").
pub fn validate_run_start(body: &[u8]) -> Result<(), Vec<String>> {
    let value = parse(body).map_err(|message| vec![message])?;
    if !value.is_object() {
        return Err(vec![format!(
            "body: expected a JSON object, got {}",
            json_type_name(&value)
        )]);
    }

    let validator = &*VALIDATOR;
    // Valid bodies are the common case; `is_valid` short-circuits and builds no error values.
    if validator.is_valid(&value) {
        return Ok(());
    }
    let mut messages = Vec::new();
    let mut total = 0usize;
    for error in validator.iter_errors(&value) {
        total += 1;
        if messages.len() < MAX_ERRORS {
            messages.push(describe(&error));
        }
    }
    if total > MAX_ERRORS {
        messages.truncate(MAX_ERRORS - 1);
        messages.push(format!(
            "body: {} further errors omitted",
            total - (MAX_ERRORS - 1)
        ));
    }
    if messages.is_empty() {
        // `is_valid` and `iter_errors` disagreeing would be a jsonschema bug; still refuse rather
        // than forward a body the fast path rejected.
        messages.push("body: does not match the RunStartRequest schema".to_owned());
    }
    Err(messages)
}

/// Parses the body as one JSON value. serde_json's default recursion limit (128) turns deeply
/// nested input into an error instead of a stack overflow, and `from_str` rejects trailing
/// non-whitespace, so "one value, nothing else" is enforced here.
fn parse(body: &[u8]) -> Result<Value, String> {
    if body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err("body: empty; expected a JSON object".to_owned());
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "body: invalid JSON: not valid UTF-8 at byte {}",
            e.valid_up_to()
        )
    })?;
    serde_json::from_str(text).map_err(|e| {
        // serde_json's Display appends " at line L column C"; put the location first instead,
        // matching the other messages' "location: problem" shape.
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let problem = full.strip_suffix(&suffix).unwrap_or(&full);
        format!(
            "body: invalid JSON at line {} column {}: {}",
            e.line(),
            e.column(),
            bounded(problem, MAX_MESSAGE_BYTES)
        )
    })
}

fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    let path = error.instance_path().as_str();
    let path = if path.is_empty() { "body" } else { path };
    // Messages quote the offending value first ("<value> is not of type ..."), so cutting a long
    // one would cut away the actual problem; say "value" instead and keep the explanation.
    let (mut message, truncated) = render(error, MAX_MESSAGE_BYTES);
    if truncated {
        message = bounded(error.masked(), MAX_MESSAGE_BYTES);
    }
    format!("{}: {message}", bounded(path, MAX_PATH_BYTES))
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Renders `item` but stops after `limit` bytes. Stopping inside the formatter (rather than
/// truncating a fully rendered string) keeps the cost bounded too: a 900 KiB string value is
/// never rendered in full just to be cut.
fn bounded(item: impl fmt::Display, limit: usize) -> String {
    render(item, limit).0
}

/// Like [`bounded`], also telling whether anything was cut.
fn render(item: impl fmt::Display, limit: usize) -> (String, bool) {
    let mut out = BoundedWriter {
        buf: String::new(),
        limit,
        truncated: false,
    };
    // An Err here only means the limit was reached (or a Display impl failed); either way keep
    // what was written.
    let _ = write!(out, "{item}");
    if out.truncated {
        out.buf.push_str(TRUNCATION_MARK);
    }
    (out.buf, out.truncated)
}

struct BoundedWriter {
    buf: String,
    limit: usize,
    truncated: bool,
}

impl fmt::Write for BoundedWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.limit.saturating_sub(self.buf.len());
        if s.len() <= room {
            self.buf.push_str(s);
            return Ok(());
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.buf.push_str(&s[..cut]);
        self.truncated = true;
        Err(fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: &Value) -> Result<(), Vec<String>> {
        validate_run_start(value.to_string().as_bytes())
    }

    fn minimal() -> Value {
        json!({
            "input": {},
            "root_node_type_ref": {"node_type_id": "example", "version": "1.0.0"}
        })
    }

    fn with(key: &str, value: Value) -> Value {
        let mut body = minimal();
        body[key] = value;
        body
    }

    /// Asserts rejection and that some message names `location` and contains `needle`.
    fn assert_rejected(body: &Value, location: &str, needle: &str) {
        let errors = check(body).expect_err("body should be rejected");
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with(&format!("{location}: ")) && m.contains(needle)),
            "no message at {location:?} containing {needle:?} in {errors:?}"
        );
    }

    #[test]
    fn embedded_schemas_compile() {
        if let Err(err) = compile() {
            panic!("{err}");
        }
    }

    #[test]
    fn minimal_body_is_valid() {
        assert_eq!(check(&minimal()), Ok(()));
    }

    #[test]
    fn fully_populated_body_is_valid() {
        let body = json!({
            "run_id": "run-1",
            "root_node_type_ref": {
                "node_type_id": "jarvis.root",
                "version": "1.0.0",
                "extensions": {"com.example.x": true}
            },
            "input": {"goal": "x", "nested": [1, {"a": null}]},
            "run_context": {
                "tenant_id": "t",
                "actor": {"type": "user", "id": "u1", "uri": "https://example.com/u1"},
                "identity": {"anything": 1},
                "trace": {"trace_id": "a", "span_id": "b", "request_id": "c"},
                "policy": {},
                "budgets": {},
                "extensions": {"org.acme.k": 1}
            },
            "constraints": {
                "structural": {"max_depth": 3, "max_children_per_composite": 0},
                "candidates": {"max_candidates_per_subtask": 1, "allowed_node_type_ids": ["a"]},
                "budgets": {"max_wall_time_ms": 1000, "max_cost": 0.5},
                "gates": {"side_effect_class": "irreversible", "require_approval": true}
            },
            "metadata": {"labels": {"a": "b"}, "annotations": {"c": "d"}},
            "extensions": {"com.example.foo": {"any": "thing"}}
        });
        assert_eq!(check(&body), Ok(()));
    }

    #[test]
    fn missing_input_is_rejected() {
        let mut body = minimal();
        if let Some(o) = body.as_object_mut() {
            o.remove("input");
        }
        assert_rejected(&body, "body", "\"input\" is a required property");
    }

    #[test]
    fn missing_root_node_type_ref_is_rejected() {
        let mut body = minimal();
        if let Some(o) = body.as_object_mut() {
            o.remove("root_node_type_ref");
        }
        assert_rejected(
            &body,
            "body",
            "\"root_node_type_ref\" is a required property",
        );
    }

    #[test]
    fn empty_object_reports_both_required_fields() {
        let errors = check(&json!({})).expect_err("{} must be rejected");
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        assert_rejected(&with("input", json!("text")), "/input", "object");
        assert_rejected(&with("run_id", json!(42)), "/run_id", "string");
    }

    #[test]
    fn unknown_top_level_field_is_rejected() {
        assert_rejected(&with("surprise", json!(1)), "body", "surprise");
    }

    #[test]
    fn nested_node_type_ref_without_version_is_rejected() {
        let body = with("root_node_type_ref", json!({"node_type_id": "x"}));
        assert_rejected(
            &body,
            "/root_node_type_ref",
            "\"version\" is a required property",
        );
    }

    #[test]
    fn extension_keys_must_be_namespaced() {
        assert_rejected(&with("extensions", json!({"foo": 1})), "/extensions", "foo");
        assert_eq!(
            check(&with("extensions", json!({"com.example.foo": 1}))),
            Ok(())
        );
        // The same rule applies where extensions are nested via another $ref hop.
        let body = with(
            "run_context",
            json!({"actor": {"type": "u", "id": "1", "extensions": {"bad": 1}}}),
        );
        assert_rejected(&body, "/run_context/actor/extensions", "bad");
    }

    #[test]
    fn side_effect_class_outside_enum_is_rejected() {
        let body = with(
            "constraints",
            json!({"gates": {"side_effect_class": "destroy"}}),
        );
        assert_rejected(&body, "/constraints/gates/side_effect_class", "destroy");
    }

    #[test]
    fn negative_budget_and_non_integer_depth_are_rejected() {
        let body = with(
            "constraints",
            json!({"budgets": {"max_steps": -1}, "structural": {"max_depth": 1.5}}),
        );
        assert_rejected(&body, "/constraints/budgets/max_steps", "minimum");
        assert_rejected(&body, "/constraints/structural/max_depth", "integer");
    }

    #[test]
    fn uri_format_is_not_asserted() {
        // Deliberate: `format` is an annotation under draft 2020-12 (see `compile`).
        let body = with(
            "run_context",
            json!({"actor": {"type": "u", "id": "1", "uri": "not a uri"}}),
        );
        assert_eq!(check(&body), Ok(()));
    }

    #[test]
    fn malformed_json_is_one_message_with_location() {
        let errors = validate_run_start(b"{\"input\": }").expect_err("malformed");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("body: invalid JSON at line 1 column 11: "),
            "{errors:?}"
        );
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let mut text = minimal().to_string();
        text.push_str(" {}");
        let errors = validate_run_start(text.as_bytes()).expect_err("trailing data");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("trailing characters"), "{errors:?}");
    }

    #[test]
    fn empty_and_whitespace_bodies_are_rejected() {
        for body in [&b""[..], b"  \r\n\t"] {
            let errors = validate_run_start(body).expect_err("empty");
            assert_eq!(
                errors,
                vec!["body: empty; expected a JSON object".to_owned()]
            );
        }
    }

    #[test]
    fn non_utf8_is_rejected() {
        let errors = validate_run_start(b"{\"input\": \"\xff\"}").expect_err("non-UTF-8");
        assert_eq!(
            errors,
            vec!["body: invalid JSON: not valid UTF-8 at byte 11".to_owned()]
        );
    }

    #[test]
    fn non_object_values_are_rejected() {
        for (text, kind) in [
            ("[]", "array"),
            ("null", "null"),
            ("\"x\"", "string"),
            ("1", "number"),
            ("true", "boolean"),
        ] {
            let errors = validate_run_start(text.as_bytes()).expect_err(text);
            assert_eq!(
                errors,
                vec![format!("body: expected a JSON object, got {kind}")]
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        let errors = validate_run_start(deep.as_bytes()).expect_err("deep");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("recursion limit exceeded"), "{errors:?}");

        // Nested inside an otherwise valid body, where the schema allows anything.
        let body = format!(
            r#"{{"root_node_type_ref": {{"node_type_id": "a", "version": "b"}}, "input": {{"x": {}}}}}"#,
            "[".repeat(100_000)
        );
        let errors = validate_run_start(body.as_bytes()).expect_err("deep input");
        assert!(errors[0].contains("recursion limit exceeded"), "{errors:?}");
    }

    #[test]
    fn nesting_just_under_the_limit_is_accepted() {
        // 1 (body) + 1 (input) + 120 arrays stays below serde_json's limit of 128.
        let body = format!(
            r#"{{"root_node_type_ref": {{"node_type_id": "a", "version": "b"}}, "input": {{"x": {}{}}}}}"#,
            "[".repeat(120),
            "]".repeat(120)
        );
        assert_eq!(validate_run_start(body.as_bytes()), Ok(()));
    }

    #[test]
    fn large_valid_body_is_accepted() {
        let body = with("input", json!({"blob": "x".repeat(900 * 1024)}));
        assert_eq!(check(&body), Ok(()));
    }

    #[test]
    fn large_invalid_values_are_not_echoed() {
        let huge = "y".repeat(900 * 1024);
        let mut body = with("input", json!(huge.clone()));
        body["run_id"] = json!([huge.clone()]);
        body[huge.as_str()] = json!(1);
        body["metadata"] = json!({"labels": {huge.clone(): 1}});
        let errors = check(&body).expect_err("invalid");
        assert_eq!(errors.len(), 4, "{errors:?}");
        // A value too long to show is replaced by a placeholder, so the problem stays readable.
        assert!(
            errors.contains(&"/input: value is not of type \"object\"".to_owned()),
            "{errors:?}"
        );
        assert!(
            errors.contains(&"/run_id: value is not of type \"string\"".to_owned()),
            "{errors:?}"
        );
        for message in &errors {
            assert!(
                message.len() <= MAX_PATH_BYTES + MAX_MESSAGE_BYTES + 16,
                "message too long: {} bytes",
                message.len()
            );
        }
    }

    #[test]
    fn error_list_is_capped() {
        let labels: serde_json::Map<String, Value> =
            (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
        let body = with("metadata", json!({"labels": labels}));
        let errors = check(&body).expect_err("invalid labels");
        assert_eq!(errors.len(), MAX_ERRORS, "{errors:?}");
        assert_eq!(
            errors.last().map(String::as_str),
            Some("body: 9981 further errors omitted")
        );
    }

    #[test]
    fn exactly_max_errors_are_all_shown() {
        let labels: serde_json::Map<String, Value> = (0..MAX_ERRORS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        let body = with("metadata", json!({"labels": labels}));
        let errors = check(&body).expect_err("invalid labels");
        assert_eq!(errors.len(), MAX_ERRORS);
        assert!(errors.iter().all(|m| m.starts_with("/metadata/labels/k")));
    }

    #[test]
    fn bounded_cuts_on_char_boundaries() {
        assert_eq!(bounded("héllo", 2), "h...");
        assert_eq!(bounded("hello", 5), "hello");
        assert_eq!(bounded("hello!", 5), "hello...");
    }
}
