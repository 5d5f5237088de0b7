//! Entry points for the fuzz targets (`fuzz/`, `cargo xtask fuzz`): each
//! takes raw bytes the way the agent receives them and runs them through
//! the same decoder the agent uses. A decoder may refuse its input with an
//! error; it must never panic, hang or allocate without bound. Not an API.

use std::path::Path;

use crate::{
    config::Config,
    kubevirt::objects::{self, RawObject},
    qemu::{qmp, trace, types::MigrationInfo},
    shaping::{messages::TcEntry, ops::ObservedTree},
};

/// One line from a QMP socket: classified as a reply or an event, and a
/// reply decoded as `query-migrate`'s answer.
pub fn qmp_line(line: &[u8]) {
    if let Ok(Some(ret)) = qmp::classify_line(Path::new("fuzz.sock"), line) {
        let _ = serde_json::from_value::<MigrationInfo>(ret);
    }
}

/// One datagram from an rtnetlink socket: split into messages, the
/// qdiscs and classes among them read into vmbw's tree.
pub fn netlink_datagram(data: &[u8]) {
    use netlink_packet_core::NetlinkPayload;
    use netlink_packet_route::RouteNetlinkMessage;

    let Ok(messages) = crate::shaping::decode_replies(data) else {
        return;
    };
    let (mut qdiscs, mut classes) = (vec![], vec![]);
    for m in &messages {
        match &m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(q)) => {
                qdiscs.push(TcEntry::from_message(q));
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficClass(c)) => {
                classes.push(TcEntry::from_message(c));
            }
            _ => {}
        }
    }
    let _ = ObservedTree::from_dump(&qdiscs, &classes);
}

/// A config file's text.
pub fn config(text: &str) {
    let _ = Config::parse(text, "fuzz.toml");
}

/// A trace CSV's text.
pub fn trace(text: &str) {
    let _ = trace::parse(text, "fuzz.csv");
}

/// One watched KubeVirt object, tried as each kind vmbw reads.
pub fn kubevirt_object(json: &[u8]) {
    let Ok(raw) = serde_json::from_slice::<RawObject>(json) else {
        return;
    };
    let _ = objects::parse_vmi(&raw);
    let _ = objects::parse_vmim(&raw);
    let _ = objects::parse_launcher_pod(&raw);
}
