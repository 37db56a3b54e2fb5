//! The RBAC of the Helm chart against the API calls the code makes.
//!
//! Every request the emulator logged (with the `X-Stagetime-Actor` header
//! of the client that made it) is mapped to (apiGroup, resource[/subresource],
//! verb) and checked against the rules bound to the actor's ServiceAccount
//! (`stagetime-<actor>`) in a rendering of the chart. [`unused_rules`] finds
//! rules no call needed (least privilege).
//!
//! The renderings are committed under `deploy/helm/tests/rendered/`
//! (release `stagetime`, default values and `values/cluster-wide.yaml`);
//! the chart tests (`deploy/helm/tests/run.sh`, part of scripts/test.sh)
//! render the chart with Helm and fail when they differ from it, so these
//! files are the chart's output without needing Helm here.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

/// One API permission: (apiGroup, resource or resource/subresource, verb).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    /// API group (`""` for the core group).
    pub group: String,
    /// `pipelineruns`, `revisionruns/status`, ...
    pub resource: String,
    /// RBAC verb.
    pub verb: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}.{}", self.verb, self.resource, self.group)
    }
}

/// A request as the emulator logged it, as the permission it needs. `None`
/// for non-resource requests (discovery), which every user may make.
/// Cluster-wide requests (no namespace in the path) are marked by
/// `cluster = true`: a Role cannot allow them.
pub fn permission_of(req: &Value) -> Option<(Permission, bool)> {
    let method = req["method"].as_str().unwrap_or("");
    let path = req["path"].as_str().unwrap_or("");
    let watch = req["query"]["watch"]
        .as_str()
        .is_some_and(|w| w == "true" || w == "1");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (cluster, rest) = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => (false, rest),
        rest => (true, rest),
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return None,
    };
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    Some((
        Permission {
            group: group.to_string(),
            resource,
            verb: verb.to_string(),
        },
        cluster,
    ))
}

#[derive(Debug, Clone, Deserialize)]
struct Rule {
    #[serde(default, rename = "apiGroups")]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
}

/// The objects of one rendering of the chart.
#[derive(Debug, Default)]
pub struct Rbac {
    docs: Vec<Value>,
}

/// The committed renderings of the chart: default values, cluster-wide RBAC.
pub const RENDERINGS: [&str; 2] = ["default.yaml", "cluster-wide.yaml"];

fn rendered_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("helm")
        .join("tests")
        .join("rendered")
}

impl Rbac {
    /// The chart rendered with its default values.
    pub fn load() -> Rbac {
        Rbac::load_rendering(RENDERINGS[0])
    }

    /// Reads every YAML document of `deploy/helm/tests/rendered/<file>`.
    pub fn load_rendering(file: &str) -> Rbac {
        let path = rendered_dir().join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut docs = Vec::new();
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let v: Value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            if !v.is_null() {
                docs.push(v);
            }
        }
        Rbac { docs }
    }

    fn kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    /// The documents of one kind.
    pub fn documents(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.kind(kind)
    }

    /// The rules bound (RoleBinding / ClusterRoleBinding) to ServiceAccount `sa`.
    fn rules_of(&self, sa: &str) -> Vec<(String, Rule)> {
        let mut out = Vec::new();
        for (binding_kind, role_kind) in [
            ("RoleBinding", "Role"),
            ("ClusterRoleBinding", "ClusterRole"),
        ] {
            for b in self.kind(binding_kind) {
                let bound = b["subjects"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)
                });
                if !bound {
                    continue;
                }
                let role_ref = &b["roleRef"];
                let rk = role_ref["kind"].as_str().unwrap_or(role_kind);
                let rn = role_ref["name"].as_str().unwrap_or("");
                for r in self.kind(rk).filter(|r| r["metadata"]["name"] == rn) {
                    let rules: Vec<Rule> =
                        serde_json::from_value(r["rules"].clone()).unwrap_or_default();
                    out.extend(rules.into_iter().map(|rule| (rk.to_string(), rule)));
                }
            }
        }
        out
    }

    /// Every permission the rules bound to `stagetime-<actor>` grant, one per
    /// (group, resource, verb).
    pub fn granted(&self, actor: &str) -> BTreeSet<(Permission, String)> {
        let mut out = BTreeSet::new();
        for (role_kind, rule) in self.rules_of(&format!("stagetime-{actor}")) {
            for g in &rule.api_groups {
                for r in &rule.resources {
                    for v in &rule.verbs {
                        out.insert((
                            Permission {
                                group: g.clone(),
                                resource: r.clone(),
                                verb: v.clone(),
                            },
                            role_kind.clone(),
                        ));
                    }
                }
            }
        }
        out
    }

    /// True when `actor`'s rules allow `p` (cluster-wide calls need a ClusterRole).
    pub fn allows(&self, actor: &str, p: &Permission, cluster: bool) -> bool {
        self.granted(actor).iter().any(|(g, role_kind)| {
            (!cluster || role_kind == "ClusterRole")
                && (g.group == p.group || g.group == "*")
                && (g.resource == p.resource || g.resource == "*")
                && (g.verb == p.verb || g.verb == "*")
        })
    }
}

/// The permissions `requests` of `actor` needed (and whether cluster-wide).
pub fn needed(requests: &[Value], actor: &str) -> BTreeSet<(Permission, bool)> {
    requests
        .iter()
        .filter(|r| r["actor"] == actor)
        .filter_map(permission_of)
        .collect()
}

/// Panics listing every call of `actor` in `requests` that its RBAC does not allow.
pub fn assert_allowed(rbac: &Rbac, requests: &[Value], actor: &str) {
    let denied: Vec<String> = needed(requests, actor)
        .into_iter()
        .filter(|(p, cluster)| !rbac.allows(actor, p, *cluster))
        .map(|(p, cluster)| {
            if cluster {
                format!("{p} (cluster-wide)")
            } else {
                p.to_string()
            }
        })
        .collect();
    assert!(
        denied.is_empty(),
        "the chart's RBAC of stagetime-{actor} does not allow calls the code made: {denied:?}"
    );
}

/// The permissions `actor`'s rules grant that no call in `requests` needed.
pub fn unused_rules(rbac: &Rbac, requests: &[Value], actor: &str) -> Vec<String> {
    let used = needed(requests, actor);
    rbac.granted(actor)
        .into_iter()
        .filter(|(g, _)| !used.iter().any(|(p, _)| p == g))
        .map(|(g, _)| g.to_string())
        .collect()
}
