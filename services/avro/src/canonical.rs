//! Parsing Canonical Form and its CRC-64-AVRO fingerprint, as the Avro specification
//! defines them — what Java's `SchemaNormalization`, fastavro and every conformant producer
//! put in a single-object header.
//!
//! apache-avro 0.22 (and 0.23-rc) keeps a logical type's primitive wrapped
//! (`{"type":"long"}` instead of `"long"`, upstream AVRO-4004), so its fingerprints differ
//! from everyone else's for any schema with a logical type. The transformation is small and
//! is pinned by tests to fingerprints computed by fastavro.

use serde_json::Value;

use apache_avro::rabin::Rabin;
use digest::Digest;

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Attributes kept, in the order the specification prescribes ([STRIP], [ORDER]).
const KEPT: [&str; 7] = [
    "name", "type", "fields", "symbols", "items", "values", "size",
];

/// The Parsing Canonical Form of a schema given as JSON.
pub fn parsing_canonical_form(schema: &Value) -> String {
    let mut out = String::new();
    write_pcf(schema, None, &mut out);
    out
}

/// CRC-64-AVRO (Rabin) fingerprint of the Parsing Canonical Form, as the 64-bit value
/// whose little-endian bytes follow `C3 01` in a single-object header.
pub fn fingerprint(schema: &Value) -> u64 {
    let digest = Rabin::digest(parsing_canonical_form(schema).as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

fn write_pcf(schema: &Value, namespace: Option<&str>, out: &mut String) {
    match schema {
        Value::String(name) => write_name(name, namespace, out),
        Value::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_pcf(b, namespace, out);
            }
            out.push(']');
        }
        Value::Object(obj) => {
            let ty = obj.get("type").and_then(Value::as_str).unwrap_or_default();
            // [PRIMITIVES]: a primitive is its name, whatever else it carries (logicalType).
            if PRIMITIVES.contains(&ty) {
                out.push_str(&quote(ty));
                return;
            }
            if !matches!(ty, "record" | "error" | "enum" | "fixed" | "array" | "map") {
                // {"type": "some.Named"} or {"type": [...]} or {"type": {...}}
                if let Some(inner) = obj.get("type") {
                    write_pcf(inner, namespace, out);
                }
                return;
            }
            write_complex(obj, namespace, out);
        }
        other => out.push_str(&other.to_string()),
    }
}

fn write_complex(obj: &serde_json::Map<String, Value>, namespace: Option<&str>, out: &mut String) {
    let (full, inner_ns) = match obj.get("name").and_then(Value::as_str) {
        Some(n) => {
            let full = full_name(
                n,
                obj.get("namespace").and_then(Value::as_str).or(namespace),
            );
            let ns = full.rsplit_once('.').map(|(ns, _)| ns.to_string());
            (Some(full), ns)
        }
        None => (None, namespace.map(str::to_string)),
    };
    let ns = inner_ns.as_deref();
    out.push('{');
    let mut first = true;
    let mut field = |out: &mut String, key: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&quote(key));
        out.push(':');
    };
    for key in KEPT {
        let Some(v) = obj.get(key) else { continue };
        match key {
            "name" => {
                field(out, key);
                out.push_str(&quote(full.as_deref().unwrap_or_default()));
            }
            "type" => {
                field(out, key);
                // "error" is a record for parsing.
                let t = v.as_str().unwrap_or_default();
                out.push_str(&quote(if t == "error" { "record" } else { t }));
            }
            "fields" => {
                field(out, key);
                write_fields(v, ns, out);
            }
            "symbols" => {
                field(out, key);
                out.push_str(&v.to_string());
            }
            "items" | "values" => {
                field(out, key);
                write_pcf(v, ns, out);
            }
            _ => {
                // [INTEGERS]: size as a plain integer, even when given as a string.
                field(out, key);
                let n = v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .unwrap_or_default();
                out.push_str(&n.to_string());
            }
        }
    }
    out.push('}');
}

fn write_fields(fields: &Value, namespace: Option<&str>, out: &mut String) {
    out.push('[');
    for (i, f) in fields.as_array().into_iter().flatten().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        out.push_str(&quote(
            f.get("name").and_then(Value::as_str).unwrap_or_default(),
        ));
        out.push_str(",\"type\":");
        write_pcf(f.get("type").unwrap_or(&Value::Null), namespace, out);
        out.push('}');
    }
    out.push(']');
}

/// A type name: primitives as they are, named types as their fullname ([FULLNAMES]).
fn write_name(name: &str, namespace: Option<&str>, out: &mut String) {
    if PRIMITIVES.contains(&name) {
        out.push_str(&quote(name));
    } else {
        out.push_str(&quote(&full_name(name, namespace)));
    }
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

/// A JSON string literal with UTF-8 left as is ([STRINGS]).
fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcf(text: &str) -> String {
        parsing_canonical_form(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn primitives_reduce_to_their_name_even_with_a_logical_type() {
        assert_eq!(
            pcf(r#"{"type":"long","logicalType":"timestamp-millis"}"#),
            r#""long""#
        );
        assert_eq!(pcf(r#""int""#), r#""int""#);
    }

    #[test]
    fn the_specifications_int_fingerprint() {
        // Java's SchemaNormalization.parsingFingerprint64("int") = 0x7275d51a3f395c8f.
        assert_eq!(
            fingerprint(&Value::String("int".into())),
            0x7275_d51a_3f39_5c8f
        );
    }

    #[test]
    fn names_become_fullnames_and_attributes_are_stripped_and_ordered() {
        let text = r#"{"namespace":"a.b","type":"record","doc":"x","name":"R","fields":[
            {"name":"e","doc":"d","default":"A","type":{"type":"enum","name":"E","symbols":["A","B"]}},
            {"type":"E","name":"again"},
            {"name":"f","type":{"type":"fixed","name":"c.F","size":"016"}},
            {"name":"m","type":{"values":["null","long"],"type":"map"}}]}"#;
        assert_eq!(
            pcf(text),
            concat!(
                r#"{"name":"a.b.R","type":"record","fields":["#,
                r#"{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["A","B"]}},"#,
                r#"{"name":"again","type":"a.b.E"},"#,
                r#"{"name":"f","type":{"name":"c.F","type":"fixed","size":16}},"#,
                r#"{"name":"m","type":{"type":"map","values":["null","long"]}}]}"#
            )
        );
    }
}
