//! The resource types this server knows, and the URL paths that name them.
//!
//! Paths follow "Resource URIs" in the API Concepts page
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris>):
//! `/api/v1/{plural}` and `/apis/{group}/{version}/{plural}` for a whole
//! collection (every namespace), `/.../namespaces/{ns}/{plural}[/{name}]` for
//! namespaced kinds, `/.../{plural}/{name}` for cluster-scoped ones.

/// One served resource type: a single version of one kind.
#[derive(Debug)]
pub(crate) struct ResourceType {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    /// What kubectl accepts for it (`svc`), from discovery.
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
}

impl ResourceType {
    /// `v1` or `discovery.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Every served type; an index into this table identifies a type everywhere
/// in the crate.
pub(crate) static TYPES: &[ResourceType] = &[
    core("Service", "ServiceList", "services", "service", &["svc"], true),
    core("Endpoints", "EndpointsList", "endpoints", "endpoints", &["ep"], true),
    core("Pod", "PodList", "pods", "pod", &["po"], true),
    core("ConfigMap", "ConfigMapList", "configmaps", "configmap", &["cm"], true),
    core("Node", "NodeList", "nodes", "node", &["no"], false),
    core("Namespace", "NamespaceList", "namespaces", "namespace", &["ns"], false),
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        list_kind: "EndpointSliceList",
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
        namespaced: true,
    },
];

const fn core(
    kind: &'static str,
    list_kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
) -> ResourceType {
    ResourceType { group: "", version: "v1", kind, list_kind, plural, singular, short_names, namespaced }
}

/// The groups served under `/apis` (the core group is `/api`).
pub(crate) fn named_groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<_> = TYPES.iter().filter(|t| !t.group.is_empty()).map(|t| (t.group, t.version)).collect();
    groups.dedup();
    groups
}

/// The type with this `apiVersion` and `kind`.
pub(crate) fn by_api_version_kind(api_version: &str, kind: &str) -> Option<usize> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    TYPES.iter().position(|t| t.group == group && t.version == version && t.kind == kind)
}

/// The type named by a kind (`Service`, case-insensitive) or a plural
/// (`services`), as the Rust API's `delete` and `get` take it.
pub(crate) fn by_kind_name(name: &str) -> Option<usize> {
    TYPES
        .iter()
        .position(|t| t.kind.eq_ignore_ascii_case(name) || t.plural == name || t.api_version() + "/" + t.kind == name)
}

fn by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    TYPES.iter().position(|t| t.group == group && t.version == version && t.plural == plural)
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    Health,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: the named groups.
    Groups,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`.
    Resources {
        group: String,
        version: String,
    },
    /// A collection (`name` None) or one object.
    Object {
        ty: usize,
        namespace: Option<String>,
        name: Option<String>,
    },
    /// Nothing served here; still says what it would have been, for the
    /// request log.
    NotFound {
        group: String,
        resource: String,
        namespace: Option<String>,
        name: Option<String>,
    },
}

impl Route {
    pub fn parse(path: &str) -> Route {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["version"] => Route::Version,
            ["healthz" | "readyz" | "livez"] => Route::Health,
            ["api"] => Route::CoreVersions,
            ["api", "v1"] => Route::Resources { group: String::new(), version: "v1".into() },
            ["api", version, rest @ ..] => resource_route("", version, rest),
            ["apis"] => Route::Groups,
            [apis, group] if *apis == "apis" => {
                if named_groups().iter().any(|(g, _)| g == group) {
                    Route::Group(group.to_string())
                } else {
                    not_found(group, "", None, None)
                }
            }
            [apis, group, version] if *apis == "apis" => {
                if named_groups().iter().any(|(g, v)| g == group && v == version) {
                    Route::Resources { group: group.to_string(), version: version.to_string() }
                } else {
                    not_found(group, "", None, None)
                }
            }
            [apis, group, version, rest @ ..] if *apis == "apis" => resource_route(group, version, rest),
            _ => not_found("", "", None, None),
        }
    }
}

fn not_found(group: &str, resource: &str, ns: Option<&str>, name: Option<&str>) -> Route {
    Route::NotFound {
        group: group.to_string(),
        resource: resource.to_string(),
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let object = |plural: &str, ns: Option<&str>, name: Option<&str>| {
        let Some(ty) = by_path(group, version, plural) else {
            return not_found(group, plural, ns, name);
        };
        let served = match (ns, name) {
            // a namespace's collection or object: namespaced kinds only
            (Some(_), _) => TYPES[ty].namespaced,
            // every namespace's objects, or a cluster-scoped collection
            (None, None) => true,
            // a cluster-scoped object
            (None, Some(_)) => !TYPES[ty].namespaced,
        };
        if served {
            Route::Object { ty, namespace: ns.map(str::to_string), name: name.map(str::to_string) }
        } else {
            not_found(group, plural, ns, name)
        }
    };
    match rest {
        [plural] if !plural.is_empty() => object(plural, None, None),
        // `/api/v1/namespaces/{name}` is the Namespace object itself.
        [plural, name] if !name.is_empty() => object(plural, None, Some(name)),
        ["namespaces", ns, plural] if !ns.is_empty() => object(plural, Some(ns), None),
        ["namespaces", ns, plural, name] if !ns.is_empty() && !name.is_empty() => object(plural, Some(ns), Some(name)),
        // Subresources (`/status`, `/proxy`) are not served.
        ["namespaces", ns, plural, name, ..] => not_found(group, plural, Some(ns), Some(name)),
        [plural, name, ..] => not_found(group, plural, None, Some(name)),
        _ => not_found(group, "", None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, ns: Option<&str>, name: Option<&str>) -> Route {
        Route::Object {
            ty: by_kind_name(kind).unwrap(),
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn paths() {
        let rows: &[(&str, Route)] = &[
            // every namespace's services
            ("/api/v1/services", obj("Service", None, None)),
            ("/api/v1/namespaces/ns1/services", obj("Service", Some("ns1"), None)),
            ("/api/v1/namespaces/ns1/services/web", obj("Service", Some("ns1"), Some("web"))),
            // a namespaced kind has no cluster-scoped object path
            ("/api/v1/services/web", not_found("", "services", None, Some("web"))),
            ("/api/v1/nodes/n1", obj("Node", None, Some("n1"))),
            // a cluster-scoped kind has no namespaced path
            ("/api/v1/namespaces/ns1/nodes", not_found("", "nodes", Some("ns1"), None)),
            // the Namespace object itself
            ("/api/v1/namespaces/ns1", obj("Namespace", None, Some("ns1"))),
            ("/api/v1/namespaces", obj("Namespace", None, None)),
            ("/apis/discovery.k8s.io/v1/endpointslices", obj("EndpointSlice", None, None)),
            ("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/s", obj("EndpointSlice", Some("a"), Some("s"))),
            // the wrong group for a kind
            ("/apis/discovery.k8s.io/v1/services", not_found("discovery.k8s.io", "services", None, None)),
            // subresources are not served
            ("/api/v1/namespaces/a/services/s/status", not_found("", "services", Some("a"), Some("s"))),
            ("/api", Route::CoreVersions),
            ("/apis", Route::Groups),
            ("/apis/discovery.k8s.io", Route::Group("discovery.k8s.io".into())),
            ("/apis/discovery.k8s.io/v1", Route::Resources { group: "discovery.k8s.io".into(), version: "v1".into() }),
            ("/version", Route::Version),
            ("/nope", not_found("", "", None, None)),
        ];
        for (path, want) in rows {
            assert_eq!(&Route::parse(path), want, "{path}");
        }
    }
}
