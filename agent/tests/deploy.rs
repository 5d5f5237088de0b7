//! The deploy/ manifests, parsed into typed Kubernetes objects
//! (k8s-openapi), checked against what the agent needs and nothing more:
//! every manifest is listed in the kustomization; the DaemonSet is not
//! privileged and adds exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; its
//! probes hit the status API's health paths on the port the config listens
//! on; its mounts match the config (config file, bpffs pin directory); the
//! RBAC is read-only on exactly the kinds the agent reads; the Service and
//! the plugin's selector find the agent pods.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;
use vmbw::config::Config;

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(base().join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// Parses a manifest into its typed object; unknown fields are an error
/// (a typo such as `readinesProbe` would otherwise vanish silently).
fn typed<T: DeserializeOwned + serde::Serialize>(name: &str) -> T {
    let text = read(name);
    let value: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    // Round trip: the typed object must keep every field written.
    let back = serde_json::to_value(&typed).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        strip_nulls(back),
        strip_nulls(value),
        "{name} has fields its type does not know"
    );
    typed
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

fn kustomization() -> Value {
    serde_saphyr::from_str(&read("kustomization.yaml"))
        .unwrap_or_else(|e| panic!("kustomization: {e}"))
}

/// The ConfigMap's vmbw.toml, read by the agent's own parser (unknown
/// keys are errors there).
fn config() -> Config {
    let cm: ConfigMap = typed("configmap.yaml");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("vmbw.toml"))
        .expect("the ConfigMap has vmbw.toml");
    Config::parse(text, "deploy/base/configmap.yaml vmbw.toml")
        .unwrap_or_else(|e| panic!("vmbw.toml: {e}"))
}

fn api_port(cfg: &Config) -> i32 {
    let listen = cfg.api.listen.to_string();
    let port: u16 = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("[api] listen {listen:?} has no port"));
    assert!(
        !listen.starts_with("127.") && !listen.starts_with("[::1]"),
        "the kubelet's probes and the pod proxy need more than loopback: {listen}"
    );
    i32::from(port)
}

fn daemonset() -> DaemonSet {
    typed("daemonset.yaml")
}

fn agent(ds: &DaemonSet) -> Container {
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.containers.len(), 1, "one container");
    pod.containers[0].clone()
}

#[test]
fn every_manifest_is_listed_and_parses() {
    let k = kustomization();
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(base())
        .expect("deploy/base")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk, "kustomization resources vs files");
    // Each parses as its kind.
    let _: Namespace = typed("namespace.yaml");
    let _: ServiceAccount = typed("serviceaccount.yaml");
    let _: ClusterRole = typed("clusterrole.yaml");
    let _: ClusterRoleBinding = typed("clusterrolebinding.yaml");
    let _: ConfigMap = typed("configmap.yaml");
    let _: DaemonSet = typed("daemonset.yaml");
    let _: Service = typed("service.yaml");
    assert_eq!(k["namespace"], kubectl_vmbw::AGENT_NAMESPACE);
}

#[test]
fn the_agent_is_not_privileged_and_has_only_its_capabilities() {
    let ds = daemonset();
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "the uplink is the host's");
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert!(pod.init_containers.is_none_or(|c| c.is_empty()));
    let sc = agent(&ds).security_context.expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    let added: BTreeSet<String> = caps.add.unwrap_or_default().into_iter().collect();
    let want: BTreeSet<String> = ["BPF", "NET_ADMIN", "PERFMON"].map(String::from).into();
    assert_eq!(added, want);
}

#[test]
fn probes_and_ports_use_the_status_api() {
    let cfg = config();
    let port = api_port(&cfg);
    assert_eq!(port, i32::from(vmbw::api::DEFAULT_PORT));
    let c = agent(&daemonset());
    let ports = c.ports.clone().expect("ports");
    let api = ports
        .iter()
        .find(|p| p.container_port == port)
        .expect("a port for [api] listen");
    let api_name = api.name.clone().expect("the API port is named");
    let resolves = |p: &IntOrString| match p {
        IntOrString::Int(n) => *n == port,
        IntOrString::String(s) => *s == api_name,
    };
    for (probe, path) in [
        (c.startup_probe.as_ref(), vmbw::api::READYZ_PATH),
        (c.readiness_probe.as_ref(), vmbw::api::READYZ_PATH),
        (c.liveness_probe.as_ref(), vmbw::api::HEALTHZ_PATH),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert!(resolves(&get.port), "probe port {:?}", get.port);
        assert_eq!(get.path.as_deref(), Some(path));
    }
    let res = c.resources.expect("resources");
    let requests = res.requests.expect("resource requests");
    assert!(
        requests.contains_key("cpu") && requests.contains_key("memory"),
        "requests: {requests:?}"
    );
    // Memory is bounded; CPU is not: CFS throttling would delay the
    // control loop's decisions when a migration needs them.
    let limits = res.limits.expect("resource limits");
    assert!(
        limits.contains_key("memory") && !limits.contains_key("cpu"),
        "limits: {limits:?}"
    );
    // The Service and the scrape annotations point at the same port.
    let svc: Service = typed("service.yaml");
    let spec = svc.spec.expect("service spec");
    let sp = &spec.ports.expect("service ports")[0];
    assert_eq!(sp.port, port);
    assert!(sp.target_port.as_ref().is_some_and(resolves));
    let ann = svc.metadata.annotations.expect("annotations");
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], port.to_string());
    assert_eq!(ann["prometheus.io/path"], vmbw::api::METRICS_PATH);
    let tmpl = daemonset().spec.expect("spec").template;
    let labels = tmpl
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    assert!(
        spec.selector
            .expect("selector")
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v)),
        "the Service selects the agent pods"
    );
}

#[test]
fn mounts_match_the_config() {
    let cfg = config();
    let ds = daemonset();
    let c = agent(&ds);
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let volumes: BTreeMap<String, _> = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let mounts = c.volume_mounts.clone().expect("mounts");
    for m in &mounts {
        assert!(
            volumes.contains_key(&m.name),
            "mount {} has a volume",
            m.name
        );
    }
    assert_eq!(mounts.len(), volumes.len(), "every volume is mounted");

    // --config names a file inside the ConfigMap's mount.
    let args = c.args.clone().expect("args");
    let at = args.iter().position(|a| a == "--config").expect("--config");
    let config_path = Path::new(&args[at + 1]);
    let cm: ConfigMap = typed("configmap.yaml");
    let cm_name = cm.metadata.name.expect("configmap name");
    let cm_mount = mounts
        .iter()
        .find(|m| {
            volumes[&m.name]
                .config_map
                .as_ref()
                .is_some_and(|s| s.name == cm_name)
        })
        .expect("the ConfigMap is mounted");
    assert_eq!(config_path.parent(), Some(Path::new(&cm_mount.mount_path)));
    let file = config_path
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file");
    let items = volumes[&cm_mount.name]
        .config_map
        .as_ref()
        .and_then(|s| s.items.clone());
    assert!(
        items.is_none_or(|items| items.iter().any(|i| i.path == file && i.key == "vmbw.toml")),
        "{file} is projected from the ConfigMap's vmbw.toml"
    );
    assert_eq!(cm_mount.read_only, Some(true));

    // The pin directory lives on the host's bpffs, mounted read-write.
    let pin_dir = cfg.datapath.pin_dir.as_path();
    assert!(pin_dir.starts_with("/sys/fs/bpf"), "{}", pin_dir.display());
    let bpf = mounts
        .iter()
        .filter(|m| pin_dir.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .expect("a mount holds the pin directory");
    assert_ne!(bpf.read_only, Some(true), "maps are pinned there");
    let host = volumes[&bpf.name]
        .host_path
        .as_ref()
        .expect("bpffs is a hostPath");
    assert_eq!(host.path, "/sys/fs/bpf");
    assert_eq!(bpf.mount_path, "/sys/fs/bpf", "same path inside and out");
    // HostToContainer: a bpffs the host mounts later is seen; Bidirectional
    // would need a privileged container.
    assert_eq!(
        bpf.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "bpffs propagation"
    );

    // Runtime sockets: host paths, read-only.
    for path in ["/var/run/kubevirt", "/var/run/libvirt"] {
        let m = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{path}"));
        assert_eq!(m.read_only, Some(true), "{path}");
        assert_eq!(
            volumes[&m.name].host_path.as_ref().map(|h| h.path.as_str()),
            Some(path)
        );
    }
    // KubeVirt discovery needs the node name.
    let env = c.env.expect("env");
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"));
    assert!(cfg.discovery.kubevirt, "KubeVirt discovery is on");
    assert!(
        cfg.discovery.node_name.is_empty(),
        "one ConfigMap serves every node: the node name must come from NODE_NAME"
    );
    // The shaping state (the uplink's original qdisc) is written to a
    // host directory, so a restarted agent can still restore it.
    let state = cfg.shaping.state_dir.as_path();
    let m = mounts
        .iter()
        .filter(|m| state.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .expect("a mount holds [shaping] state_dir (the root filesystem is read-only)");
    assert_ne!(m.read_only, Some(true));
    assert_eq!(
        volumes[&m.name].host_path.as_ref().map(|h| h.path.as_str()),
        Some(m.mount_path.as_str()),
        "state_dir survives the pod"
    );
    // Traffic stays classified while the agent restarts.
    assert!(cfg.datapath.keep_on_exit);
    assert!(!cfg.uplink.is_empty(), "an uplink is configured");
}

#[test]
fn rbac_is_read_only_on_what_the_agent_reads() {
    let role: ClusterRole = typed("clusterrole.yaml");
    let mut granted: BTreeSet<(String, String)> = BTreeSet::new();
    for rule in role.rules.expect("rules") {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert!(
            verbs.is_subset(&["get", "list", "watch"].into()),
            "read-only verbs, got {verbs:?}"
        );
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.expect("apiGroups") {
            for r in rule.resources.clone().expect("resources") {
                assert!(
                    g != "*" && r != "*" && !r.contains('/'),
                    "no wildcards or subresources"
                );
                granted.insert((g.clone(), r));
            }
        }
    }
    let want: BTreeSet<(String, String)> = [
        ("kubevirt.io", "virtualmachineinstances"),
        ("kubevirt.io", "virtualmachineinstancemigrations"),
        ("", "pods"),
    ]
    .map(|(g, r)| (g.to_owned(), r.to_owned()))
    .into();
    assert_eq!(granted, want);

    let binding: ClusterRoleBinding = typed("clusterrolebinding.yaml");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    let sa: ServiceAccount = typed("serviceaccount.yaml");
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    let pod = daemonset().spec.expect("spec").template.spec.expect("pod");
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

#[test]
fn the_plugin_finds_the_agent_pods() {
    let tmpl = daemonset().spec.expect("spec").template;
    let labels = tmpl.metadata.and_then(|m| m.labels).expect("labels");
    for term in kubectl_vmbw::AGENT_SELECTOR.split(',') {
        let (k, v) = term.split_once('=').expect("k=v");
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{term}");
    }
    let ds = daemonset();
    assert_eq!(
        ds.metadata.namespace.as_deref(),
        Some(kubectl_vmbw::AGENT_NAMESPACE)
    );
}

#[test]
fn the_image_is_the_one_the_containerfile_builds() {
    let k = kustomization();
    let image = k["images"][0]["name"].as_str().expect("images[0].name");
    let tag = k["images"][0]["newTag"].as_str().expect("images[0].newTag");
    // A fixed tag in the manifest itself (checkov CKV_K8S_14), the same
    // one kustomize sets.
    assert_eq!(
        agent(&daemonset()).image.as_deref(),
        Some(format!("{image}:{tag}").as_str())
    );
    let containerfile =
        std::fs::read_to_string(base().join("../Containerfile")).expect("Containerfile");
    assert!(
        containerfile.contains("--bin vmbw"),
        "builds the agent binary"
    );
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/local/bin/vmbw\"]"));
    // The DaemonSet's args start with the agent subcommand.
    assert_eq!(agent(&daemonset()).args.expect("args")[0], "agent");
}
