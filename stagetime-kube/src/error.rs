//! kube errors classified where they are born, as [`stagetime_core::Error`].

use stagetime_core::{Error, FieldErrors};

/// The resource stagetime works on, as RBAC names it.
pub const RESOURCE: &str = "pipelineruns.tekton.dev";

/// An API call, described for messages: the RBAC verb, the namespace and
/// the object's name when there is one.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// RBAC verb: `create`, `get`, `list`, `watch`, `patch`, `delete`.
    pub verb: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Object name, if the call is about one object.
    pub name: Option<&'a str>,
}

impl Call<'_> {
    /// `pipelineruns.tekton.dev "x" in namespace "ns"` (or without the name).
    pub fn what(&self) -> String {
        match self.name {
            Some(n) => format!("{RESOURCE} {n:?} in namespace {:?}", self.namespace),
            None => format!("{RESOURCE} in namespace {:?}", self.namespace),
        }
    }
}

/// True for errors worth retrying in place: 429, 5xx and transport errors.
pub fn is_retryable(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Classifies a kube error for the engine.
///
/// 404 → `NotFound`; 409 `AlreadyExists` → `AlreadyExists`; other 409 →
/// `Conflict`; 401/403 → `Forbidden` naming the verb, resource and namespace
/// RBAC must allow; 400/415/422 → `Invalid`; 429, 5xx, connection and
/// transport errors → `Unavailable`; anything else → `Unavailable` too (the
/// engine retries it later rather than failing a run on a client hiccup).
pub fn classify(err: kube::Error, call: Call<'_>) -> Error {
    match &err {
        kube::Error::Api(s) => match s.code {
            404 => Error::not_found(call.what()),
            409 if s.reason == "AlreadyExists" => Error::AlreadyExists {
                what: call.what(),
                message: s.message.clone(),
            },
            409 => Error::Conflict {
                what: call.what(),
                detail: s.message.clone(),
            },
            401 | 403 => Error::Forbidden {
                message: format!(
                    "{verb} {what}: {msg} — RBAC must allow verb {verb:?} on resource {RESOURCE:?} in namespace {ns:?} for this service account",
                    verb = call.verb,
                    what = call.what(),
                    msg = s.message,
                    ns = call.namespace,
                ),
            },
            400 | 415 | 422 => {
                let mut e = FieldErrors::default();
                e.push(
                    call.what(),
                    format!("the API server refused to {}: {}", call.verb, s.message),
                );
                Error::Invalid(e)
            }
            _ => Error::unavailable(
                "kubernetes",
                format!("{} {}: {} ({})", call.verb, call.what(), s.message, s.code),
            ),
        },
        _ => Error::unavailable(
            "kubernetes",
            format!("{} {}: {err}", call.verb, call.what()),
        ),
    }
}

/// Classifies a kube error about one of the operator's resources
/// (`resource` as RBAC names it within the stagetime group, e.g. `repos` or
/// `revisionruns/status`), like [`classify`] does for PipelineRuns: 404 →
/// `NotFound`, 409 → `Conflict`, 401/403 → `Forbidden` naming the verb and
/// resource RBAC must allow, 400/415/422 → `Invalid`, anything else →
/// `Unavailable` (retried).
pub fn classify_resource(err: kube::Error, verb: &str, resource: &str, namespace: &str) -> Error {
    let what = format!(
        "{resource} ({}) in namespace {namespace:?}",
        crate::crd::GROUP
    );
    match &err {
        kube::Error::Api(s) => match s.code {
            404 => Error::not_found(what),
            409 => Error::Conflict {
                what,
                detail: s.message.clone(),
            },
            401 | 403 => Error::Forbidden {
                message: format!(
                    "{verb} {what}: {msg} — RBAC must allow verb {verb:?} on resource {resource:?} of group {group:?} for this service account",
                    msg = s.message,
                    group = crate::crd::GROUP,
                ),
            },
            400 | 415 | 422 => {
                let mut e = FieldErrors::default();
                e.push(
                    what,
                    format!("the API server refused to {verb}: {}", s.message),
                );
                Error::Invalid(e)
            }
            _ => Error::unavailable(
                "kubernetes",
                format!("{verb} {what}: {} ({})", s.message, s.code),
            ),
        },
        _ => Error::unavailable("kubernetes", format!("{verb} {what}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagetime_core::ErrorKind;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(&format!("status {code}"), reason)
                .with_code(code)
                .boxed(),
        )
    }

    const CALL: Call<'static> = Call {
        verb: "create",
        namespace: "ci",
        name: Some("st-0-x-a1-0123456789"),
    };

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            classify(api(404, "NotFound"), CALL).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(api(409, "AlreadyExists"), CALL).kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            classify(api(409, "Conflict"), CALL).kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            classify(api(422, "Invalid"), CALL).kind(),
            ErrorKind::Invalid
        );
        for code in [429, 500, 503, 504] {
            assert!(is_retryable(&api(code, "x")));
            assert_eq!(
                classify(api(code, "x"), CALL).kind(),
                ErrorKind::Unavailable
            );
        }
        assert!(!is_retryable(&api(404, "NotFound")));
        assert!(!is_retryable(&api(403, "Forbidden")));
    }

    #[test]
    fn forbidden_names_the_verb_and_resource() {
        let e = classify(api(403, "Forbidden"), CALL);
        assert_eq!(e.kind(), ErrorKind::Forbidden);
        let msg = e.to_string();
        assert!(msg.contains("\"create\""), "{msg}");
        assert!(msg.contains("pipelineruns.tekton.dev"), "{msg}");
        assert!(msg.contains("namespace \"ci\""), "{msg}");
    }

    #[test]
    fn operator_resources_name_their_rbac_rule() {
        let e = classify_resource(api(403, "Forbidden"), "patch", "revisionruns/status", "ci");
        assert_eq!(e.kind(), ErrorKind::Forbidden);
        let msg = e.to_string();
        assert!(msg.contains("\"revisionruns/status\""), "{msg}");
        assert!(msg.contains("stagetime.sthings.tiab.ssc.sva.de"), "{msg}");
        assert_eq!(
            classify_resource(api(503, "x"), "get", "repos", "ci").kind(),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn not_found_names_the_object() {
        let msg = classify(api(404, "NotFound"), CALL).to_string();
        assert!(msg.contains("st-0-x-a1-0123456789"), "{msg}");
    }
}
