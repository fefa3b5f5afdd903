//! The one redaction path for everything shipyard prints about Batch resources: the per-job
//! SSH key pair and the registry passwords (`SHIPYARD_REGISTRY_PASSWORD_<i>`) in a job
//! preparation task's `environmentSettings`, every `password` property (container registries
//! of a pool or task, user accounts), and any string that holds a private key, are replaced
//! before JSON or table output is made from them.

use serde::Serialize;
use serde_json::Value;
use shipyard_runtime::ssh::{PRIVATE_KEY_ENV, PUBLIC_KEY_ENV};

/// What a redacted value reads in command output.
pub const REDACTED: &str = "<redacted>";

/// What the per-job SSH key slots read in a dry run (the key is generated at submit time).
pub const KEY_PLACEHOLDER: &str = "<generated per job at submit time; never printed>";

/// Environment settings whose values are secrets.
pub const SECRET_ENV: &[&str] = &[PRIVATE_KEY_ENV, PUBLIC_KEY_ENV];

/// Replaces every secret in `value` (recursively) by `with`.
pub fn redact_in_place(value: &mut Value, with: &str) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(env)) = map.get_mut("environmentSettings") {
                for setting in env.iter_mut() {
                    let secret = setting
                        .get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| {
                            SECRET_ENV.contains(&n)
                                || n.starts_with(
                                    shipyard_runtime::registry_auth::PASSWORD_ENV_PREFIX,
                                )
                        });
                    if secret {
                        if let Some(v) = setting.get_mut("value") {
                            *v = Value::String(with.to_string());
                        }
                    }
                }
            }
            if let Some(p @ Value::String(_)) = map.get_mut("password") {
                *p = Value::String(with.to_string());
            }
            for v in map.values_mut() {
                redact_in_place(v, with);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_in_place(v, with)),
        Value::String(s) if holds_private_key(s) => *s = with.to_string(),
        _ => {}
    }
}

/// Whether `s` contains a PEM/OpenSSH private key.
pub fn holds_private_key(s: &str) -> bool {
    s.contains("-----BEGIN") && s.contains("PRIVATE KEY")
}

/// `value` as JSON with every secret replaced by [`REDACTED`]; what commands print.
pub fn redacted<T: Serialize + ?Sized>(value: &T) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or(Value::Null);
    redact_in_place(&mut v, REDACTED);
    v
}

/// Each item of `items` through [`redacted`].
pub fn redacted_all<T: Serialize>(items: &[T]) -> Vec<Value> {
    items.iter().map(redacted).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ssh_keys_and_private_key_strings_are_replaced_everywhere() {
        let mut v = json!([{
            "id": "j",
            "jobPreparationTask": {"environmentSettings": [
                {"name": PRIVATE_KEY_ENV, "value": "k"},
                {"name": PUBLIC_KEY_ENV, "value": "ssh-ed25519 AAAA"},
                {"name": "OTHER", "value": "kept"},
            ]},
            "note": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----",
        }]);
        redact_in_place(&mut v, REDACTED);
        let env = &v[0]["jobPreparationTask"]["environmentSettings"];
        assert_eq!(env[0]["value"], REDACTED);
        assert_eq!(env[1]["value"], REDACTED);
        assert_eq!(env[2]["value"], "kept");
        assert_eq!(v[0]["note"], REDACTED);
        assert_eq!(v[0]["id"], "j");
    }

    #[test]
    fn registry_and_account_passwords_are_replaced() {
        let mut v = json!({
            "virtualMachineConfiguration": {"containerConfiguration": {"containerRegistries": [
                {"registryServer": "r.example", "username": "u", "password": "hunter2"}
            ]}},
            "userAccounts": [{"name": "a", "password": "pw2"}],
            "jobPreparationTask": {"environmentSettings": [
                {"name": "SHIPYARD_REGISTRY_PASSWORD_0", "value": "pw3"}
            ]},
            "containerSettings": {"registry": {"username": "u", "password": "pw4"}},
        });
        redact_in_place(&mut v, REDACTED);
        let text = v.to_string();
        for secret in ["hunter2", "pw2", "pw3", "pw4"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(
            v["virtualMachineConfiguration"]["containerConfiguration"]["containerRegistries"][0]
                ["username"],
            "u"
        );
    }
}
