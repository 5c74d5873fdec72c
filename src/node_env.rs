//! What a configuration takes from the process environment when it is applied: the values of
//! `node.headers` given by `value_env`, and the redaction key. Shared by both host layers
//! (the Proxy-Wasm VM's environment and the dynamic module's process environment).

use crate::config::{valid_header_value, ConfigError, HeaderValue, NodeHeader};

/// `node.headers` with the values of those read from the environment. A header whose
/// variable is missing refuses the configuration: sending without it would only be refused by
/// the node. The error names the variable, never a value; `environment` names the environment
/// of the host at hand and `hint` where its variables are set.
pub fn resolve_headers(
    headers: &[NodeHeader],
    environment: &str,
    hint: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    headers
        .iter()
        .enumerate()
        .map(|(i, header)| {
            let value = match &header.value {
                HeaderValue::Inline(value) => value.clone(),
                HeaderValue::Env(var) => {
                    let value = std::env::var(var).unwrap_or_default();
                    if !valid_header_value(&value) {
                        return Err(ConfigError {
                            field: format!("node.headers[{i}].value_env"),
                            reason: format!(
                                "the {environment} has no usable {var} (missing, empty or \
                                 holding control characters; see {hint})"
                            ),
                        });
                    }
                    value
                }
            };
            Ok((header.name.clone(), value))
        })
        .collect()
}

/// The redaction key from the environment variable `name`, if it is set and not empty.
pub fn redaction_key(name: &str) -> Option<Vec<u8>> {
    match std::env::var(name) {
        Ok(key) if !key.is_empty() => Some(key.into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn inline_values_pass_and_a_missing_variable_is_named() {
        let inline = NodeHeader {
            name: "authorization".to_owned(),
            value: HeaderValue::Inline("Bearer x".to_owned()),
        };
        assert_eq!(
            resolve_headers(
                std::slice::from_ref(&inline),
                "VM environment",
                "vmConfig.env"
            ),
            Ok(vec![("authorization".to_owned(), "Bearer x".to_owned())])
        );
        let missing = NodeHeader {
            name: "x-token".to_owned(),
            value: HeaderValue::Env("OOB_MIRROR_TEST_SURELY_UNSET_VARIABLE".to_owned()),
        };
        let err = resolve_headers(&[inline, missing], "process environment", "the proxy's")
            .expect_err("a missing variable refuses the configuration");
        assert_eq!(err.field, "node.headers[1].value_env");
        assert_eq!(
            err.reason,
            "the process environment has no usable OOB_MIRROR_TEST_SURELY_UNSET_VARIABLE \
             (missing, empty or holding control characters; see the proxy's)"
        );
        assert_eq!(redaction_key("OOB_MIRROR_TEST_SURELY_UNSET_VARIABLE"), None);
    }
}
