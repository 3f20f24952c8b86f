//! Rust types of the Gateway API Inference Extension resources the EPP reads: InferencePool
//! (`inference.networking.k8s.io/v1`, and the older `inference.networking.x-k8s.io/v1alpha2`
//! selected by `--pool-group`) and InferenceObjective (`inference.networking.x-k8s.io/v1alpha2`),
//! plus their CustomResourceDefinitions as YAML for a Helm chart's `crds/` directory.
//!
//! Only the fields the EPP uses are typed precisely; `status` is kept opaque because gateway
//! controllers write it and the EPP never does. Turning a pool into endpoints is `super::rules`;
//! nothing here talks to the API server.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// What the gateway does when the endpoint picker is unavailable: `FailOpen` forwards the
/// request anyway, `FailClose` (the default) rejects it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureMode {
    FailOpen,
    #[default]
    FailClose,
}

fn service_kind() -> String {
    "Service".to_string()
}

/// A status list (pool parents, objective conditions) of at most 32 objects written by
/// controllers. Kept as raw JSON, with `x-kubernetes-preserve-unknown-fields` so the API server
/// does not prune what a controller wrote, because the EPP never reads or writes status.
fn opaque_objects(_: &mut SchemaGenerator) -> Schema {
    let mut item = serde_json::Map::new();
    item.insert("type".into(), "object".into());
    item.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
    let mut list = serde_json::Map::new();
    list.insert("type".into(), "array".into());
    list.insert("maxItems".into(), 32.into());
    list.insert("items".into(), item.into());
    Schema::from(list)
}

/// `inference.networking.k8s.io/v1`: the GA InferencePool.
pub mod v1 {
    use std::collections::BTreeMap;

    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    pub use super::FailureMode;

    /// The pods (same namespace) and ports that serve one pool of model servers.
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    #[kube(
        group = "inference.networking.k8s.io",
        version = "v1",
        kind = "InferencePool",
        plural = "inferencepools",
        shortname = "infpool",
        namespaced,
        status = "InferencePoolStatus",
        derive = "PartialEq",
        doc = "InferencePool is a pool of model-server pods behind one endpoint picker.",
        // The API server refuses CRDs in `*.k8s.io` groups without this approval annotation;
        // the value is upstream's, so installing either CRD yields the same object.
        annotation("api-approved.kubernetes.io", "https://github.com/kubernetes-sigs/gateway-api-inference-extension/pull/1173")
    )]
    #[serde(rename_all = "camelCase")]
    pub struct InferencePoolSpec {
        pub selector: LabelSelector,
        /// Each target port of a ready pod is a distinct endpoint (`podIP:port`).
        #[schemars(
            length(min = 1, max = 8),
            extend("x-kubernetes-validations" = [{
                "rule": "self.all(p1, self.exists_one(p2, p1.number == p2.number))",
                "message": "port number must be unique"
            }])
        )]
        pub target_ports: Vec<Port>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub app_protocol: Option<AppProtocol>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub endpoint_picker_ref: Option<EndpointPickerRef>,
    }

    /// Service-style selector: a plain label map, matched against pods of the pool's namespace.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct LabelSelector {
        pub match_labels: BTreeMap<String, String>,
    }

    #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
    pub struct Port {
        // `int32` like upstream (not u16) so an out-of-range value reaches `rules` and gets an
        // error naming the field, instead of failing to deserialize the whole object.
        /// Port number, 1 to 65535.
        #[schemars(range(min = 1, max = 65535))]
        pub number: i32,
    }

    /// The protocol the gateway speaks to the model servers (`http` when unset).
    #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
    pub enum AppProtocol {
        #[serde(rename = "http")]
        Http,
        #[serde(rename = "kubernetes.io/h2c")]
        H2c,
    }

    /// The endpoint picker serving this pool (usually a Service).
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "has(self.port) || (has(self.kind) && self.kind != 'Service')",
        "message": "port is required when kind is 'Service' or unspecified (defaults to 'Service')"
    }]))]
    pub struct EndpointPickerRef {
        /// API group of the referent; empty (the default) is the core group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 253))]
        pub group: Option<String>,
        #[serde(default = "super::service_kind")]
        #[schemars(length(min = 1, max = 63))]
        pub kind: String,
        #[schemars(length(min = 1, max = 253))]
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port: Option<Port>,
        #[serde(default)]
        pub failure_mode: FailureMode,
    }

    /// Written by gateway controllers, never by the EPP.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct InferencePoolStatus {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(schema_with = "super::opaque_objects")]
        pub parents: Vec<serde_json::Value>,
    }
}

/// `inference.networking.x-k8s.io/v1alpha2`: the pre-GA InferencePool (single target port) and
/// the InferenceObjective.
pub mod v1alpha2 {
    use std::collections::BTreeMap;

    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    pub use super::FailureMode;

    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    #[kube(
        group = "inference.networking.x-k8s.io",
        version = "v1alpha2",
        kind = "InferencePool",
        plural = "inferencepools",
        namespaced,
        status = "InferencePoolStatus",
        derive = "PartialEq",
        doc = "InferencePool (v1alpha2) is a pool of model-server pods behind one endpoint picker."
    )]
    #[serde(rename_all = "camelCase")]
    pub struct InferencePoolSpec {
        /// Plain label map, matched against pods of the pool's namespace.
        pub selector: BTreeMap<String, String>,
        #[schemars(range(min = 1, max = 65535))]
        pub target_port_number: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub extension_ref: Option<ExtensionRef>,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct ExtensionRef {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 253))]
        pub group: Option<String>,
        #[serde(default = "super::service_kind")]
        #[schemars(length(min = 1, max = 63))]
        pub kind: String,
        #[schemars(length(min = 1, max = 253))]
        pub name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(range(min = 1, max = 65535))]
        pub port_number: Option<i32>,
        #[serde(default)]
        pub failure_mode: FailureMode,
    }

    // v1alpha2 named the list `parent` (v1: `parents`).
    /// Written by gateway controllers, never by the EPP.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct InferencePoolStatus {
        #[serde(default, rename = "parent", skip_serializing_if = "Vec::is_empty")]
        #[schemars(schema_with = "super::opaque_objects")]
        pub parents: Vec<serde_json::Value>,
    }

    /// The priority of requests that name this objective (`x-gateway-inference-objective`),
    /// for one pool of the same namespace.
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    #[kube(
        group = "inference.networking.x-k8s.io",
        version = "v1alpha2",
        kind = "InferenceObjective",
        plural = "inferenceobjectives",
        namespaced,
        status = "InferenceObjectiveStatus",
        derive = "PartialEq",
        doc = "InferenceObjective gives requests that name it a priority within one InferencePool."
    )]
    #[serde(rename_all = "camelCase")]
    pub struct InferenceObjectiveSpec {
        /// Higher is more important; negative is sheddable; unset counts as 0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub priority: Option<i32>,
        pub pool_ref: PoolObjectReference,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
    pub struct PoolObjectReference {
        #[serde(default = "default_pool_group", skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 253))]
        pub group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(max = 63))]
        pub kind: Option<String>,
        #[schemars(length(min = 1, max = 253))]
        pub name: String,
    }

    fn default_pool_group() -> Option<String> {
        Some(super::POOL_GROUP_V1.to_string())
    }

    /// Written by controllers, never by the EPP.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    pub struct InferenceObjectiveStatus {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(schema_with = "super::opaque_objects")]
        pub conditions: Vec<serde_json::Value>,
    }
}

/// The group of the GA pool (`--pool-group` default).
pub const POOL_GROUP_V1: &str = "inference.networking.k8s.io";
/// The group of the v1alpha2 pool and of InferenceObjective.
pub const POOL_GROUP_V1ALPHA2: &str = "inference.networking.x-k8s.io";

/// The three CRDs, in a fixed order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![v1::InferencePool::crd(), v1alpha2::InferencePool::crd(), v1alpha2::InferenceObjective::crd()]
}

/// One file per CRD, named `<group>_<plural>.yaml` like upstream's `config/crd/bases`.
pub fn crd_files() -> Vec<(String, String)> {
    crds().iter().map(|crd| (format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural), to_yaml(crd))).collect()
}

/// The three CRDs as one multi-document YAML (`---` before each document).
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect()
}

fn to_yaml(crd: &CustomResourceDefinition) -> String {
    // A CRD is plain strings, numbers, maps and lists: serializing it cannot fail, and these
    // functions run only when generating manifests, so a failure is a programming error.
    serde_saphyr::to_string(crd).unwrap_or_else(|e| unreachable!("a CRD serializes to YAML: {e}"))
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;
