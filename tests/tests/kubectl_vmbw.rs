//! `kubectl vmbw` against the stand-in API server: which requests it makes
//! (VMI, agent pods on the VMI's node(s), the agent's API through the pod
//! proxy) and what it prints (the shared tables, or the agents' JSON).
//!
//! The VMI objects are the recorded KubeVirt fixtures; the agent pods are
//! shaped like the deploy/base DaemonSet's pods; the agents' answers are
//! vmbw's own API types.

use std::collections::BTreeMap;

use kubectl_vmbw::{self as kubectl, AgentLocator, KubectlError, Outcome, Output, Request};
use serde_json::{Value, json};
use vmbw::api::{
    self, Allocation, ClassStatus, ClassTraffic, Explain, ExplainedDecision, MigrationPhase,
    MigrationRole, MigrationStatus, Status, TrafficClass, VmStatus,
};
use vmbw_tests::kubeapi::{FakeApi, fixture};

const VMIS: &str = "/apis/kubevirt.io/v1/virtualmachineinstances";
const PODS: &str = "/api/v1/pods";

fn agent_pod(name: &str, node: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "vmbw-system",
            "labels": {
                "app.kubernetes.io/name": "vmbw",
                "app.kubernetes.io/component": "agent",
                "app.kubernetes.io/part-of": "vmbw"
            }
        },
        "spec": {"nodeName": node, "hostNetwork": true,
                 "containers": [{"name": "agent", "image": "vmbw:0.1.0"}]},
        "status": {"phase": phase}
    })
}

fn status(node: &str) -> Status {
    Status {
        version: "0.1.0".into(),
        node: node.into(),
        mode: "htb".into(),
        policy: "nrac".into(),
        uplinks: vec!["eth0".into()],
        link_capacity_bytes_per_sec: 1.25e9,
        link_usage_bytes_per_sec: 3.0e7,
        vms: 2,
        migrating: 1,
        uptime_sec: 3600.0,
        discovery: vec!["kubevirt".into()],
    }
}

fn vms() -> Vec<VmStatus> {
    vec![
        VmStatus {
            name: "default/testvmi".into(),
            slot: 1,
            migration: Some(MigrationStatus {
                phase: MigrationPhase::PreCopy,
                role: MigrationRole::Source,
                iteration: 2,
                remaining_bytes: 200 << 20,
                predicted_dirty_pages: Some(5100.0),
                actual_dirty_pages: Some(4800.0),
                peer: Some("node01".into()),
                samples: 0,
                qemu_max_bandwidth_bytes_per_sec: None,
                refused: vec![],
                armed: vec![],
                eta_seconds: None,
                converging: Some(false),
                deadline_left_seconds: None,
                stream_backlog_bytes: None,
                switchover_held_seconds: None,
            }),
            allocation: Allocation {
                migration_rate_bytes_per_sec: Some(6.25e7),
                migration_ceil_bytes_per_sec: Some(1.0e8),
                app_reservation_bytes_per_sec: 1.25e7,
            },
            app_promised_bytes_per_sec: None,
            traffic: vec![ClassTraffic {
                class: TrafficClass::Migration,
                egress_bytes: 3 << 30,
                ingress_bytes: 1 << 20,
                egress_bytes_per_sec: 6.0e7,
                ingress_bytes_per_sec: 1.0e4,
            }],
            telemetry: None,
        },
        VmStatus {
            name: "other/idle".into(),
            slot: 2,
            migration: None,
            allocation: Allocation::default(),
            app_promised_bytes_per_sec: None,
            traffic: vec![],
            telemetry: None,
        },
    ]
}

fn explain() -> Explain {
    let mut inputs = BTreeMap::new();
    inputs.insert("free_bytes_per_sec".to_owned(), 1.0e8);
    inputs.insert("dirty_rate_bytes_per_sec".to_owned(), 2.1e7);
    Explain {
        vm: "default/testvmi".into(),
        decisions: vec![ExplainedDecision {
            at_unix_sec: 1553832169.0,
            iteration: 2,
            policy: "nrac".into(),
            inputs,
            allocation: vms()[0].allocation,
            reasons: vec!["network-intensive: reserve the application's 100 Mbit/s".into()],
        }],
    }
}

fn proxy(pod: &str, path: &str) -> String {
    kubectl::proxy_path("vmbw-system", pod, 9464, path)
}

async fn server(vmi_fixture: &str) -> FakeApi {
    let api = FakeApi::start().await.expect("server");
    api.collection(VMIS, "VirtualMachineInstanceList");
    api.collection(PODS, "PodList");
    api.apply(VMIS, fixture(vmi_fixture).expect("fixture"));
    api.apply(PODS, agent_pod("vmbw-agent-n1", "node01", "Running"));
    api.apply(PODS, agent_pod("vmbw-agent-n2", "node02", "Running"));
    api.apply(PODS, agent_pod("vmbw-agent-old", "node02", "Succeeded"));
    for (pod, node) in [("vmbw-agent-n1", "node01"), ("vmbw-agent-n2", "node02")] {
        let status = serde_json::to_value(status(node)).expect("json");
        api.route(&proxy(pod, api::STATUS_PATH), 200, status);
        api.route(
            &proxy(pod, api::VMS_PATH),
            200,
            serde_json::to_value(vms()).expect("json"),
        );
    }
    api.route(
        &proxy("vmbw-agent-n2", "/api/v1/explain/default/testvmi"),
        200,
        serde_json::to_value(explain()).expect("json"),
    );
    api
}

async fn ask(api: &FakeApi, request: Request, output: Output) -> Result<Outcome, KubectlError> {
    let client = kubectl::client_from(api.config().expect("config")).expect("client");
    kubectl::run(
        &client,
        "default",
        &AgentLocator::default(),
        &request,
        output,
    )
    .await
}

/// A request every agent answers: its text.
async fn run(api: &FakeApi, request: Request, output: Output) -> Result<String, KubectlError> {
    let out = ask(api, request, output).await?;
    assert_eq!(out.failed, 0, "{}", out.text);
    Ok(out.text)
}

fn proxied(api: &FakeApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.contains("/proxy/"))
        .collect()
}

#[tokio::test]
async fn status_of_a_running_vmi_asks_the_agent_on_its_node() {
    let api = server("vmi-running-node02.json").await;
    let out = run(
        &api,
        Request::Status {
            vmi: Some("testvmi".into()),
        },
        Output::Table,
    )
    .await
    .expect("status");
    let requests = api.requests();
    assert_eq!(
        requests[0],
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/testvmi"
    );
    let list = &requests[1];
    assert!(
        list.starts_with("/api/v1/namespaces/vmbw-system/pods?"),
        "{list}"
    );
    assert!(
        list.contains(
            "labelSelector=app.kubernetes.io%2Fname%3Dvmbw%2Capp.kubernetes.io%2Fcomponent%3Dagent"
        ),
        "{list}"
    );
    assert!(
        list.contains("fieldSelector=spec.nodeName%3Dnode02"),
        "{list}"
    );
    assert_eq!(
        proxied(&api),
        [
            "/api/v1/namespaces/vmbw-system/pods/vmbw-agent-n2:9464/proxy/api/v1/status",
            "/api/v1/namespaces/vmbw-system/pods/vmbw-agent-n2:9464/proxy/api/v1/vms",
        ]
    );
    // The shared tables, only this VMI's row.
    let want = format!(
        "== node02 (agent vmbw-agent-n2)\n{}\n{}",
        api::render_status(&status("node02")),
        api::render_vms(&vms()[..1])
    );
    assert_eq!(out, want);
    assert!(!out.contains("other/idle"));
}

#[tokio::test]
async fn status_of_a_migrating_vmi_asks_source_and_target() {
    let api = server("vmi-migrating-node02-to-node01.json").await;
    let out = run(
        &api,
        Request::Status {
            vmi: Some("testvmi".into()),
        },
        Output::Json,
    )
    .await
    .expect("status");
    // Both agents are asked (at once, so in no fixed order).
    let mut pods: Vec<String> = proxied(&api)
        .iter()
        .filter(|r| r.ends_with(api::STATUS_PATH))
        .map(|r| r.split('/').nth(6).unwrap_or("").to_owned())
        .collect();
    pods.sort();
    assert_eq!(pods, ["vmbw-agent-n1:9464", "vmbw-agent-n2:9464"]);
    // -o json: the agents' own objects, one report per agent, the
    // source first.
    let reports: Value = serde_json::from_str(&out).expect("json output");
    let reports = reports.as_array().expect("array");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["node"], "node02", "source first");
    assert_eq!(reports[1]["pod"], "vmbw-agent-n1");
    let s: Status = serde_json::from_value(reports[0]["status"].clone()).expect("Status");
    assert_eq!(s, status("node02"));
    let v: Vec<VmStatus> = serde_json::from_value(reports[0]["vms"].clone()).expect("vms");
    assert_eq!(v, vms()[..1]);
}

#[tokio::test]
async fn status_without_a_vmi_lists_every_running_agent() {
    let api = server("vmi-running-node02.json").await;
    let out = run(&api, Request::Status { vmi: None }, Output::Table)
        .await
        .expect("status");
    assert!(
        out.starts_with("== node01 (agent vmbw-agent-n1)\n"),
        "{out}"
    );
    assert!(out.contains("\n== node02 (agent vmbw-agent-n2)\n"), "{out}");
    assert!(
        !out.contains("vmbw-agent-old"),
        "a finished pod is not an agent"
    );
    assert_eq!(
        out.matches("other/idle").count(),
        2,
        "all VMs of both agents"
    );
}

#[tokio::test]
async fn explain_asks_the_source_node_agent() {
    let api = server("vmi-migrating-node02-to-node01.json").await;
    let out = run(
        &api,
        Request::Explain {
            vmi: "testvmi".into(),
        },
        Output::Table,
    )
    .await
    .expect("explain");
    assert_eq!(
        proxied(&api),
        [
            "/api/v1/namespaces/vmbw-system/pods/vmbw-agent-n2:9464/proxy/api/v1/explain/default/testvmi"
        ]
    );
    assert_eq!(out, api::render_explain(&explain()));
    let json = run(
        &api,
        Request::Explain {
            vmi: "testvmi".into(),
        },
        Output::Json,
    )
    .await
    .expect("explain --json");
    let back: Explain = serde_json::from_str(&json).expect("Explain");
    assert_eq!(back, explain());
}

#[tokio::test]
async fn errors_name_what_is_missing() {
    let api = server("vmi-running-node02.json").await;
    let e = run(
        &api,
        Request::Status {
            vmi: Some("nope".into()),
        },
        Output::Table,
    )
    .await
    .expect_err("no such VMI");
    assert!(matches!(e, KubectlError::VmiNotFound { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "VirtualMachineInstance default/nope not found"
    );

    // The agent on node02 is gone.
    api.delete(PODS, "vmbw-system", "vmbw-agent-n2");
    let e = run(
        &api,
        Request::Explain {
            vmi: "testvmi".into(),
        },
        Output::Table,
    )
    .await
    .expect_err("no agent");
    assert!(
        e.to_string()
            .starts_with("no running vmbw agent on node node02"),
        "{e}"
    );

    // KubeVirt's API round-trip object (every field "<name>Value") reads
    // as a VMI on node "nodeNameValue", which has no agent.
    api.apply(
        VMIS,
        fixture("vmi-apitesting-roundtrip.json").expect("fixture"),
    );
    let client = kubectl::client_from(api.config().expect("config")).expect("client");
    let out = kubectl::run(
        &client,
        "namespaceValue",
        &AgentLocator::default(),
        &Request::Status {
            vmi: Some("nameValue".into()),
        },
        Output::Table,
    )
    .await
    .expect("a node without an agent is a line, not an error");
    assert_eq!(out.failed, 1);
    assert!(
        out.text
            .starts_with("== nodeNameValue: no running vmbw agent on node nodeNameValue"),
        "{}",
        out.text
    );

    // A status that is not KubeVirt's is reported with the VMI's name.
    api.apply(
        VMIS,
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
               "metadata": {"name": "odd", "namespace": "default"},
               "status": {"nodeName": 7}}),
    );
    let e = ask(
        &api,
        Request::Status {
            vmi: Some("odd".into()),
        },
        Output::Table,
    )
    .await
    .expect_err("malformed");
    assert!(matches!(e, KubectlError::Malformed { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("VirtualMachineInstance default/odd: its status is not KubeVirt's"),
        "{e}"
    );
}

fn classes() -> Vec<ClassStatus> {
    vec![ClassStatus {
        iface: "eth0".into(),
        handle: "7662:11".into(),
        vm: Some("default/testvmi".into()),
        slot: 1,
        role: "migration".into(),
        rate_bytes_per_sec: 6.25e7,
        ceil_bytes_per_sec: 1.0e8,
        sent_bytes: 3 << 30,
    }]
}

#[tokio::test]
async fn an_agent_that_does_not_answer_is_shown_as_such_beside_the_others() {
    let api = server("vmi-running-node02.json").await;
    api.route(
        &proxy("vmbw-agent-n1", api::STATUS_PATH),
        503,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "error trying to reach service: dial tcp 10.0.0.1:9464: connect: connection refused",
               "reason": "ServiceUnavailable", "code": 503}),
    );
    let out = ask(&api, Request::Status { vmi: None }, Output::Table)
        .await
        .expect("the others are still shown");
    assert_eq!((out.failed, out.asked), (1, 2), "{}", out.text);
    assert!(
        out.text.starts_with(
            "== node01 (agent vmbw-agent-n1): no answer: GET /api/v1/status from agent vmbw-agent-n1 on node01"
        ),
        "{}",
        out.text
    );
    assert!(out.text.contains("connection refused"), "{}", out.text);
    assert!(
        out.text.contains(&format!(
            "== node02 (agent vmbw-agent-n2)\n{}",
            api::render_status(&status("node02"))
        )),
        "{}",
        out.text
    );
    // In JSON the failed agent carries its error and nothing else.
    let json = ask(&api, Request::Status { vmi: None }, Output::Json)
        .await
        .expect("json");
    let reports: Value = serde_json::from_str(&json.text).expect("json");
    assert!(
        reports[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("503") || e.contains("refused"))
    );
    assert!(reports[0].get("status").is_none());
    assert_eq!(reports[1]["status"]["node"], "node02");

    // A migration target without an agent: that node's line says so, the
    // source's agent still answers.
    let api = server("vmi-migrating-node02-to-node01.json").await;
    api.delete(PODS, "vmbw-system", "vmbw-agent-n1");
    let out = ask(
        &api,
        Request::Status {
            vmi: Some("testvmi".into()),
        },
        Output::Table,
    )
    .await
    .expect("status");
    assert_eq!((out.failed, out.asked), (1, 2), "{}", out.text);
    assert!(
        out.text
            .contains("== node01: no running vmbw agent on node node01 (pods in vmbw-system"),
        "{}",
        out.text
    );
    assert!(
        out.text.starts_with("== node02 (agent vmbw-agent-n2)\n"),
        "{}",
        out.text
    );
}

#[tokio::test]
async fn yaml_is_the_json_and_wide_adds_the_classes() {
    let api = server("vmi-running-node02.json").await;
    for pod in ["vmbw-agent-n1", "vmbw-agent-n2"] {
        api.route(
            &proxy(pod, api::CLASSES_PATH),
            200,
            serde_json::to_value(classes()).expect("json"),
        );
    }
    let request = || Request::Status {
        vmi: Some("testvmi".into()),
    };
    let json: Value =
        serde_json::from_str(&run(&api, request(), Output::Json).await.expect("json"))
            .expect("parses");
    let yaml: Value =
        serde_saphyr::from_str(&run(&api, request(), Output::Yaml).await.expect("yaml"))
            .expect("YAML parses");
    assert_eq!(yaml, json);
    assert!(
        json[0].get("classes").is_none(),
        "classes only with -o wide"
    );

    let wide = run(&api, request(), Output::Wide).await.expect("wide");
    assert!(
        wide.ends_with(&api::render_classes(&classes())),
        "the classes table closes the agent's section:\n{wide}"
    );
    assert!(
        proxied(&api).iter().any(|r| r.ends_with(api::CLASSES_PATH)),
        "{:?}",
        api.requests()
    );
}
