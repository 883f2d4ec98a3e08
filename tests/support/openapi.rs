//! Checks responses against the OpenAPI document: the route, method and
//! status must be documented, and a JSON body must match its schema
//! exactly (no field the document does not name).

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::{Value, json};

/// Checks responses and remembers which (method, path, status) it saw.
pub struct Checker {
    doc: Value,
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

/// Every object schema that lists its properties allows no others, so a
/// field the document does not name fails the check.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for value in map.values_mut() {
                close_objects(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

impl Checker {
    /// A checker for this document.
    pub fn new(mut doc: Value) -> Self {
        if let Some(schemas) = doc.pointer_mut("/components/schemas") {
            close_objects(schemas);
        }
        Checker {
            doc,
            seen: Mutex::default(),
        }
    }

    /// The documented path template matching a request path.
    fn template(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.doc["paths"]
            .as_object()?
            .keys()
            .find(|template| {
                let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| (p.starts_with('{') && p.ends_with('}')) || p == s)
            })
            .cloned()
    }

    /// Checks one response; says what is wrong.
    pub fn check(
        &self,
        method: &str,
        uri: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let path = uri.split('?').next().unwrap_or(uri);
        let template = self
            .template(path)
            .ok_or_else(|| format!("{method} {path}: the route is not documented"))?;
        let method = method.to_lowercase();
        let operation = &self.doc["paths"][&template][&method];
        if operation.is_null() {
            return Err(format!("{method} {template}: the method is not documented"));
        }
        let response = &operation["responses"][status.to_string()];
        if response.is_null() {
            return Err(format!(
                "{method} {template}: status {status} is not documented ({})",
                String::from_utf8_lossy(body)
            ));
        }
        self.seen
            .lock()
            .unwrap()
            .insert((method.clone(), template.clone(), status));
        let Some(content) = response["content"].as_object() else {
            return if body.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{method} {template} {status}: a body the document does not describe"
                ))
            };
        };
        let actual = content_type
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let Some(media) = content.get(actual) else {
            return Err(format!(
                "{method} {template} {status}: content type `{actual}`, documented: {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if actual != "application/json" {
            return Ok(());
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("{method} {template} {status}: not JSON: {e}"))?;
        let mut root = json!({"components": self.doc["components"].clone()});
        if let (Some(root), Some(schema)) = (root.as_object_mut(), media["schema"].as_object()) {
            for (k, v) in schema {
                root.insert(k.clone(), v.clone());
            }
        }
        let validator = jsonschema::validator_for(&root)
            .map_err(|e| format!("{method} {template} {status}: bad schema: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{method} {template} {status}: {} in {value}",
                errors.join("; ")
            ))
        }
    }

    /// Checks a value against one of the document's schemas by name.
    pub fn check_schema(&self, name: &str, value: &Value) -> Result<(), String> {
        let mut root = json!({"components": self.doc["components"].clone()});
        root["$ref"] = json!(format!("#/components/schemas/{name}"));
        let validator =
            jsonschema::validator_for(&root).map_err(|e| format!("{name}: bad schema: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{name}: {} in {value}", errors.join("; ")))
        }
    }

    /// Every (method, path, status) the document lists.
    pub fn documented(&self) -> BTreeSet<(String, String, u16)> {
        let mut all = BTreeSet::new();
        if let Some(paths) = self.doc["paths"].as_object() {
            for (path, item) in paths {
                for (method, operation) in item.as_object().into_iter().flatten() {
                    for status in operation["responses"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(s, _)| s)
                    {
                        if let Ok(status) = status.parse() {
                            all.insert((method.clone(), path.clone(), status));
                        }
                    }
                }
            }
        }
        all
    }

    /// What was seen so far.
    pub fn seen(&self) -> BTreeSet<(String, String, u16)> {
        self.seen.lock().unwrap().clone()
    }
}
