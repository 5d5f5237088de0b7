//! The netlink requests vmbw sends for traffic control, built without I/O,
//! and the parts of the kernel's dump answers it reads back.
//!
//! Each request is the same message `tc` sends for the equivalent command
//! (same tcmsg header, flags and attributes; `tests` below compare against
//! captured bytes), except that HTB classes carry no rate tables.

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, Nla,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage, TcOption, TcStats2},
};

use super::{
    handles::{TC_H_ROOT, display_handle},
    tca::{self, FqOptions, HtbClassParams},
};

/// What a request acts on, for error messages: `class 7662:12`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcObject {
    Qdisc {
        kind: String,
        handle: u32,
        parent: u32,
    },
    Class {
        handle: u32,
    },
    Device,
}

impl std::fmt::Display for TcObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcObject::Qdisc {
                kind,
                handle,
                parent,
            } => {
                if !kind.is_empty() {
                    write!(f, "{kind} ")?;
                }
                write!(
                    f,
                    "qdisc {} (parent {})",
                    display_handle(*handle),
                    display_handle(*parent)
                )
            }
            TcObject::Class { handle } => write!(f, "class {}", display_handle(*handle)),
            TcObject::Device => f.write_str("device"),
        }
    }
}

/// How a "new" request treats an existing object (tc's add/change/replace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create; fail if it exists (`tc … add`).
    Add,
    /// Modify in place; fail if it does not exist (`tc … change`). HTB
    /// keeps the class's queue and counters.
    Change,
    /// Create or replace (`tc … replace`).
    Replace,
}

impl Mode {
    fn flags(self) -> u16 {
        match self {
            Mode::Add => NLM_F_CREATE | NLM_F_EXCL,
            Mode::Change => 0,
            Mode::Replace => NLM_F_CREATE | NLM_F_REPLACE,
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Mode::Add => "add",
            Mode::Change => "change",
            Mode::Replace => "replace",
        }
    }
}

/// One request, ready to send, with what it is about.
#[derive(Debug, Clone)]
pub struct Request {
    pub verb: &'static str,
    pub object: TcObject,
    pub message: RouteNetlinkMessage,
    /// Netlink header flags, `NLM_F_REQUEST | NLM_F_ACK` included.
    pub flags: u16,
}

fn header(ifindex: u32, handle: u32, parent: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.handle = TcHandle::from(handle);
    m.header.parent = TcHandle::from(parent);
    m
}

/// `TCA_OPTIONS` carrying already-encoded inner attributes. (Going through
/// `TcAttribute::Options` would nest them one level too deep for kinds
/// netlink-packet-route does not know.)
fn options(bytes: Vec<u8>) -> TcAttribute {
    TcAttribute::Other(DefaultNla::new(tca::TCA_OPTIONS, bytes))
}

/// `tc qdisc <mode> dev <if> root handle <handle> htb default <default_minor>`.
pub fn htb_root(mode: Mode, ifindex: u32, handle: u32, default_minor: u16) -> Request {
    let mut m = header(ifindex, handle, TC_H_ROOT);
    m.attributes.push(TcAttribute::Kind("htb".into()));
    m.attributes
        .push(options(tca::htb_qdisc_options(default_minor)));
    Request {
        verb: mode.verb(),
        object: TcObject::Qdisc {
            kind: "htb".into(),
            handle,
            parent: TC_H_ROOT,
        },
        message: RouteNetlinkMessage::NewQueueDiscipline(m),
        flags: NLM_F_REQUEST | NLM_F_ACK | mode.flags(),
    }
}

/// `tc class <mode> dev <if> parent <parent> classid <handle> htb …`.
pub fn htb_class(
    mode: Mode,
    ifindex: u32,
    handle: u32,
    parent: u32,
    params: &HtbClassParams,
) -> Request {
    let mut m = header(ifindex, handle, parent);
    m.attributes.push(TcAttribute::Kind("htb".into()));
    m.attributes.push(options(params.encode()));
    Request {
        verb: mode.verb(),
        object: TcObject::Class { handle },
        message: RouteNetlinkMessage::NewTrafficClass(m),
        flags: NLM_F_REQUEST | NLM_F_ACK | mode.flags(),
    }
}

/// `tc class del dev <if> classid <handle>`.
pub fn delete_class(ifindex: u32, handle: u32) -> Request {
    Request {
        verb: "delete",
        object: TcObject::Class { handle },
        message: RouteNetlinkMessage::DelTrafficClass(header(ifindex, handle, 0)),
        flags: NLM_F_REQUEST | NLM_F_ACK,
    }
}

/// `tc qdisc replace dev <if> parent <class> fq …`: fq as a class's leaf.
pub fn fq_leaf(ifindex: u32, parent_class: u32, opts: &FqOptions) -> Request {
    qdisc(
        Mode::Replace,
        ifindex,
        0,
        parent_class,
        "fq",
        Some(opts.encode()),
    )
}

/// `tc qdisc replace dev <if> parent <class> bfifo limit <bytes>`: a
/// byte-bounded FIFO as a class's leaf.
pub fn bfifo_leaf(ifindex: u32, parent_class: u32, limit_bytes: u32) -> Request {
    qdisc(
        Mode::Replace,
        ifindex,
        0,
        parent_class,
        "bfifo",
        Some(tca::fifo_options(limit_bytes)),
    )
}

/// A qdisc of any kind with already-encoded options (restoring a device's
/// original root qdisc uses this with the options the kernel dumped).
pub fn qdisc(
    mode: Mode,
    ifindex: u32,
    handle: u32,
    parent: u32,
    kind: &str,
    opts: Option<Vec<u8>>,
) -> Request {
    let mut m = header(ifindex, handle, parent);
    m.attributes.push(TcAttribute::Kind(kind.into()));
    if let Some(bytes) = opts {
        m.attributes.push(options(bytes));
    }
    Request {
        verb: mode.verb(),
        object: TcObject::Qdisc {
            kind: kind.into(),
            handle,
            parent,
        },
        message: RouteNetlinkMessage::NewQueueDiscipline(m),
        flags: NLM_F_REQUEST | NLM_F_ACK | mode.flags(),
    }
}

/// `tc qdisc del dev <if> parent <parent> handle <handle>`. Naming the
/// handle makes the kernel refuse (EINVAL) if another qdisc sits there.
pub fn delete_qdisc(ifindex: u32, handle: u32, parent: u32, kind: &str) -> Request {
    Request {
        verb: "delete",
        object: TcObject::Qdisc {
            kind: kind.into(),
            handle,
            parent,
        },
        message: RouteNetlinkMessage::DelQueueDiscipline(header(ifindex, handle, parent)),
        flags: NLM_F_REQUEST | NLM_F_ACK,
    }
}

/// What vmbw reads from a dumped qdisc or class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcEntry {
    pub ifindex: u32,
    pub handle: u32,
    pub parent: u32,
    pub kind: String,
    /// The inner bytes of `TCA_OPTIONS`, if present.
    pub options: Option<Vec<u8>>,
    pub bytes: u64,
    pub packets: u64,
}

impl TcEntry {
    pub fn from_message(m: &TcMessage) -> Self {
        let mut e = TcEntry {
            ifindex: m.header.index as u32,
            handle: m.header.handle.into(),
            parent: m.header.parent.into(),
            kind: String::new(),
            options: None,
            bytes: 0,
            packets: 0,
        };
        for a in &m.attributes {
            match a {
                TcAttribute::Kind(k) => e.kind = k.clone(),
                TcAttribute::Options(opts) => e.options = Some(options_bytes(opts)),
                TcAttribute::Other(nla) if nla.kind() & 0x3fff == tca::TCA_OPTIONS => {
                    e.options = Some(nla_value(nla));
                }
                TcAttribute::Stats2(stats) => {
                    for s in stats {
                        if let TcStats2::Basic(b) = s {
                            e.bytes = b.bytes;
                            e.packets = u64::from(b.packets);
                        }
                    }
                }
                _ => {}
            }
        }
        e
    }
}

fn nla_value(nla: &impl Nla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

/// The inner bytes of a parsed `TCA_OPTIONS`. For kinds netlink-packet-route
/// does not know (htb, fq, tbf, …) it keeps the whole attribute as one
/// opaque entry whose value is exactly those bytes; for kinds it knows,
/// the typed options are emitted again.
fn options_bytes(opts: &[TcOption]) -> Vec<u8> {
    if let [TcOption::Other(nla)] = opts
        && nla.kind() & 0x3fff == tca::TCA_OPTIONS
    {
        return nla_value(nla);
    }
    let mut out = Vec::new();
    for o in opts {
        let mut attr = vec![0; netlink_packet_core::Emitable::buffer_len(o)];
        netlink_packet_core::Emitable::emit(o, &mut attr);
        out.extend_from_slice(&attr);
    }
    out
}

#[cfg(test)]
mod tests {
    //! Byte comparisons with iproute2. Each fixture in `testdata/` is the
    //! netlink request `tc` sent for the command in its first line, captured
    //! with `strace -e trace=sendmsg -xx` by `testdata/capture.sh` in a
    //! throw-away namespace (iproute2 6.1.0, Linux 6.18, veth0 = ifindex 3).
    use netlink_packet_core::NetlinkMessage;

    use super::*;
    use crate::shaping::handles::make_handle;

    struct Fixture {
        msg_type: u16,
        flags: u16,
        payload: Vec<u8>,
    }

    fn fixture(text: &str) -> Fixture {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("fixture has no `{name}` line"))
                .trim()
                .to_owned()
        };
        let hex = |s: &str| u16::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
        let payload = field("payload ");
        let payload = (0..payload.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&payload[i..i + 2], 16).expect("hex byte"))
            .collect();
        Fixture {
            msg_type: hex(&field("type ")),
            flags: hex(&field("flags ")),
            payload,
        }
    }

    /// tc's request with its two 1 KiB HTB rate tables (`TCA_HTB_CTAB` = 3,
    /// `TCA_HTB_RTAB` = 4) taken out of `TCA_OPTIONS`: vmbw sets the link
    /// layer instead. Everything else stays byte for byte.
    fn without_rate_tables(payload: &[u8]) -> Vec<u8> {
        let (tcmsg, attrs) = payload.split_at(20);
        let mut out = tcmsg.to_vec();
        for (kind, value) in tca::attrs(attrs).expect("tc's attributes") {
            if kind == tca::TCA_OPTIONS {
                let mut inner = Vec::new();
                for (k, v) in tca::attrs(value).expect("tc's options") {
                    if k != 3 && k != 4 {
                        tca::put_attr(&mut inner, k, v);
                    }
                }
                tca::put_attr(&mut out, kind, &inner);
            } else {
                tca::put_attr(&mut out, kind, value);
            }
        }
        out
    }

    fn serialize(req: &Request) -> (u16, u16, Vec<u8>) {
        let mut m = NetlinkMessage::from(req.message.clone());
        m.header.flags = req.flags;
        m.finalize();
        let mut buf = vec![0; m.header.length as usize];
        m.serialize(&mut buf);
        (m.header.message_type, m.header.flags, buf[16..].to_vec())
    }

    fn assert_same(req: &Request, fixture_text: &str, strip_tables: bool) {
        let f = fixture(fixture_text);
        let (ty, flags, payload) = serialize(req);
        let want = if strip_tables {
            without_rate_tables(&f.payload)
        } else {
            f.payload.clone()
        };
        assert_eq!(ty, f.msg_type, "netlink message type");
        assert_eq!(flags, f.flags, "netlink flags");
        assert_eq!(hex(&payload), hex(&want), "request bytes");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    const IFINDEX: u32 = 3;
    const MBIT: u64 = crate::api::BYTES_PER_MBIT as u64;

    #[test]
    fn htb_root_qdisc_matches_tc() {
        assert_same(
            &htb_root(Mode::Add, IFINDEX, make_handle(0x7662, 0), 2),
            include_str!("testdata/htb_qdisc_add.nlmsg"),
            false,
        );
    }

    #[test]
    fn htb_class_add_matches_tc() {
        let p = HtbClassParams::new(10 * MBIT, 20 * MBIT, 15_000, 30_000, 1514, 1);
        assert_same(
            &htb_class(Mode::Add, IFINDEX, 0x7662_0001, 0x7662_0000, &p),
            include_str!("testdata/htb_class_add.nlmsg"),
            true,
        );
    }

    #[test]
    fn htb_class_with_64bit_rates_matches_tc() {
        // 40 and 100 Gbit/s are 5e9 and 12.5e9 bytes/s: above u32::MAX, so
        // TCA_HTB_RATE64/CEIL64 carry them and the 32-bit fields saturate.
        let p = HtbClassParams::new(
            40_000 * MBIT,
            100_000 * MBIT,
            6_250_000,
            15_625_000,
            200_000,
            3,
        );
        assert_same(
            &htb_class(Mode::Add, IFINDEX, 0x7662_0012, 0x7662_0001, &p),
            include_str!("testdata/htb_class_add_64bit.nlmsg"),
            true,
        );
        let decoded = HtbClassParams::decode(&p.encode()).expect("decode");
        assert_eq!(decoded.rate, 5_000_000_000);
        assert_eq!(decoded.ceil, 12_500_000_000);
    }

    #[test]
    fn htb_class_change_matches_tc() {
        let p = HtbClassParams::new(30 * MBIT, 30 * MBIT, 15_000, 15_000, 3750, 0);
        assert_same(
            &htb_class(Mode::Change, IFINDEX, 0x7662_0001, 0x7662_0000, &p),
            include_str!("testdata/htb_class_change.nlmsg"),
            true,
        );
        // A rate that is no whole number of bytes per microsecond checks
        // that burst ticks are rounded exactly as tc rounds them.
        let odd = HtbClassParams::new(1_250_001, 1_250_001, 15_000, 15_001, 125_000, 7);
        assert_same(
            &htb_class(Mode::Change, IFINDEX, 0x7662_0001, 0x7662_0000, &odd),
            include_str!("testdata/htb_class_change_odd_rate.nlmsg"),
            true,
        );
    }

    #[test]
    fn deletes_match_tc() {
        assert_same(
            &delete_class(IFINDEX, 0x7662_0012),
            include_str!("testdata/htb_class_del.nlmsg"),
            false,
        );
        // `tc qdisc del dev veth0 root` names no handle; vmbw names its own
        // so that it can never delete someone else's root qdisc.
        let (_, _, ours) = serialize(&delete_qdisc(IFINDEX, 0, TC_H_ROOT, "htb"));
        assert_eq!(
            hex(&ours),
            hex(&fixture(include_str!("testdata/htb_qdisc_del.nlmsg")).payload)
        );
    }

    #[test]
    fn bfifo_leaf_matches_tc() {
        assert_same(
            &bfifo_leaf(IFINDEX, 0x7662_0012, 187_500),
            include_str!("testdata/bfifo_leaf.nlmsg"),
            false,
        );
    }

    #[test]
    fn fq_leaf_matches_tc() {
        let opts = FqOptions {
            limit: Some(10_000),
            flow_limit: Some(100),
            quantum: Some(3028),
            initial_quantum: Some(15_140),
            horizon_us: Some(2_000_000),
            horizon_drop: Some(true),
        };
        assert_same(
            &fq_leaf(IFINDEX, 0x7662_0012, &opts),
            include_str!("testdata/fq_leaf_edt.nlmsg"),
            false,
        );
        assert_same(
            &fq_leaf(IFINDEX, 0x7662_0012, &FqOptions::default()),
            include_str!("testdata/fq_leaf_plain.nlmsg"),
            false,
        );
    }

    #[test]
    fn dumped_options_are_read_back() {
        let p = HtbClassParams::new(10 * MBIT, 20 * MBIT, 15_000, 30_000, 1514, 1);
        let req = htb_class(Mode::Add, IFINDEX, 0x7662_0001, 0x7662_0000, &p);
        let RouteNetlinkMessage::NewTrafficClass(m) = &req.message else {
            panic!("not a class message");
        };
        // Round trip through the parser, as a dump answer would arrive.
        let mut buf = vec![0; netlink_packet_core::Emitable::buffer_len(m)];
        netlink_packet_core::Emitable::emit(m, &mut buf);
        let parsed =
            <TcMessage as netlink_packet_core::Parseable<[u8]>>::parse(&buf[..]).expect("parse");
        let e = TcEntry::from_message(&parsed);
        assert_eq!(e.kind, "htb");
        assert_eq!((e.handle, e.parent), (0x7662_0001, 0x7662_0000));
        let opts = e.options.expect("options");
        assert_eq!(HtbClassParams::decode(&opts), Ok(p));
    }
}
