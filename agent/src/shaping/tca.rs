//! The bytes inside `TCA_OPTIONS` for HTB and fq.
//!
//! netlink-packet-route knows neither qdisc, so vmbw encodes (and, for
//! adopting a tree after a restart, decodes) them here, following the
//! kernel's `include/uapi/linux/pkt_sched.h`. The encodings are checked
//! byte for byte against what iproute2's `tc` sends for the same command
//! (`messages.rs` tests, fixtures in `testdata/`), with one deliberate
//! difference: vmbw never sends the 1 KiB rate tables (`TCA_HTB_RTAB`/
//! `TCA_HTB_CTAB`). Every rate spec carries `linklayer = ethernet`, and for
//! such specs the kernel computes transmit times itself and ignores tables.
//!
//! All integers are in host byte order, as netlink wants.

/// `TCA_KIND`: the qdisc/class kind as a NUL-terminated string.
pub const TCA_KIND: u16 = 1;
/// `TCA_OPTIONS`: the kind-specific attributes this module encodes.
pub const TCA_OPTIONS: u16 = 2;

// enum { TCA_HTB_* } in pkt_sched.h
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;

// enum { TCA_FQ_* } in pkt_sched.h
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_QUANTUM: u16 = 3;
const TCA_FQ_INITIAL_QUANTUM: u16 = 4;
const TCA_FQ_HORIZON: u16 = 14;
const TCA_FQ_HORIZON_DROP: u16 = 15;

/// `TC_HTB_PROTOVER`: HTB's netlink protocol version.
const HTB_PROTOVER: u32 = 3;
/// HTB's `r2q` (rate-to-quantum divisor). vmbw sets every class's quantum
/// itself, so this only matters for classes created by someone else.
pub const HTB_R2Q: u32 = 10;
/// `TC_LINKLAYER_ETHERNET`: the kernel does its own transmit-time math.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// tc's rate-table cell size for its default mtu of 1600 (`1600 >> 3 <=
/// 255`). The kernel ignores it for ethernet specs; it is sent so that the
/// bytes equal tc's.
const TC_CELL_LOG: u8 = 3;

/// Kernel scheduler ticks per microsecond (`/proc/net/psched`: 1000 / 64;
/// a tick is `1 << PSCHED_SHIFT` = 64 ns).
const TICKS_PER_USEC: f64 = 1000.0 / 64.0;
const NSEC_PER_TICK: u64 = 64;

const NLA_HDRLEN: usize = 4;
/// Masks the `NLA_F_NESTED`/`NLA_F_NET_BYTEORDER` flag bits off a type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A malformed `TCA_OPTIONS` payload from the kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TcaError {
    #[error("attribute at byte {offset} overruns the {len}-byte options")]
    Overrun { offset: usize, len: usize },
    #[error("{what} is {got} bytes, expected at least {need}")]
    Short {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("{0} is missing")]
    Missing(&'static str),
}

/// Appends one netlink attribute (header, value, padding to 4 bytes).
pub(crate) fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = NLA_HDRLEN + value.len();
    // Attribute lengths are u16; every value here is a few dozen bytes.
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

/// Splits a run of netlink attributes into `(type, value)` pairs.
pub(crate) fn attrs(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, TcaError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + NLA_HDRLEN <= buf.len() {
        let len = usize::from(u16::from_ne_bytes([buf[offset], buf[offset + 1]]));
        let kind = u16::from_ne_bytes([buf[offset + 2], buf[offset + 3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || offset + len > buf.len() {
            return Err(TcaError::Overrun {
                offset,
                len: buf.len(),
            });
        }
        out.push((kind, &buf[offset + NLA_HDRLEN..offset + len]));
        offset += (len + 3) & !3;
    }
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u64_value(what: &'static str, b: &[u8]) -> Result<u64, TcaError> {
    let arr: [u8; 8] = b
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or(TcaError::Short {
            what,
            need: 8,
            got: b.len(),
        })?;
    Ok(u64::from_ne_bytes(arr))
}

/// `struct tc_ratespec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub cell_log: u8,
    pub linklayer: u8,
    pub overhead: u16,
    pub cell_align: i16,
    pub mpu: u16,
    /// Bytes per second, saturated at `u32::MAX` (the full value then goes
    /// in a separate 64-bit attribute).
    pub rate: u32,
}

impl RateSpec {
    const LEN: usize = 12;

    /// The spec tc builds for an ethernet link: no overhead, no mpu, and
    /// the linklayer set so the kernel needs no rate table.
    pub fn ethernet(bytes_per_sec: u64) -> Self {
        RateSpec {
            cell_log: TC_CELL_LOG,
            linklayer: TC_LINKLAYER_ETHERNET,
            overhead: 0,
            cell_align: -1,
            mpu: 0,
            rate: u32::try_from(bytes_per_sec).unwrap_or(u32::MAX),
        }
    }

    fn put(&self, buf: &mut Vec<u8>) {
        buf.push(self.cell_log);
        buf.push(self.linklayer);
        buf.extend_from_slice(&self.overhead.to_ne_bytes());
        buf.extend_from_slice(&self.cell_align.to_ne_bytes());
        buf.extend_from_slice(&self.mpu.to_ne_bytes());
        buf.extend_from_slice(&self.rate.to_ne_bytes());
    }

    fn read(b: &[u8]) -> Self {
        RateSpec {
            cell_log: b[0],
            linklayer: b[1],
            overhead: u16_at(b, 2),
            cell_align: u16_at(b, 4) as i16,
            mpu: u16_at(b, 6),
            rate: u32_at(b, 8),
        }
    }
}

/// Time to send `size` bytes at `bytes_per_sec`, in scheduler ticks, as tc
/// computes it (`tc_calc_xmittime`): whole microseconds first, then ticks,
/// both truncated. Same rounding as tc, so the same bytes.
pub fn xmit_ticks(bytes_per_sec: u64, size: u64) -> u32 {
    if bytes_per_sec == 0 {
        return u32::MAX;
    }
    // `as` saturates on overflow, which is what a u32 field can hold.
    let usec = (1e6 * (size as f64 / bytes_per_sec as f64)) as u32;
    (f64::from(usec) * TICKS_PER_USEC) as u32
}

/// The inverse of [`xmit_ticks`]: bytes sent at `bytes_per_sec` in `ticks`.
pub fn ticks_to_bytes(bytes_per_sec: u64, ticks: u32) -> u64 {
    let ns = u128::from(ticks) * u128::from(NSEC_PER_TICK);
    u64::try_from(ns * u128::from(bytes_per_sec) / 1_000_000_000).unwrap_or(u64::MAX)
}

/// One HTB class's parameters in kernel units (`struct tc_htb_opt` plus the
/// 64-bit rates). Equality of two values means the kernel holds the same
/// configuration, which is how reconciling decides what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbClassParams {
    /// Guaranteed rate, bytes per second.
    pub rate: u64,
    /// Upper limit when borrowing, bytes per second.
    pub ceil: u64,
    /// Burst at `rate`, in scheduler ticks (see [`xmit_ticks`]).
    pub buffer: u32,
    /// Burst at `ceil`, in scheduler ticks.
    pub cbuffer: u32,
    /// DRR quantum in bytes (set explicitly, so HTB never warns about r2q).
    pub quantum: u32,
    /// Priority 0..=7, lower is served first.
    pub prio: u32,
}

impl HtbClassParams {
    /// Parameters from rates and bursts in bytes, as `tc class add … htb
    /// rate R ceil C burst B cburst CB quantum Q prio P` computes them.
    pub fn new(rate: u64, ceil: u64, burst: u64, cburst: u64, quantum: u32, prio: u32) -> Self {
        HtbClassParams {
            rate,
            ceil,
            buffer: xmit_ticks(rate, burst),
            cbuffer: xmit_ticks(ceil, cburst),
            quantum,
            prio,
        }
    }

    /// Burst at `rate` in bytes.
    pub fn burst_bytes(&self) -> u64 {
        ticks_to_bytes(self.rate, self.buffer)
    }

    /// The `TCA_OPTIONS` payload for a class add/change: the 64-bit rates
    /// when a rate does not fit the 32-bit field, then `TCA_HTB_PARMS`.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(80);
        if self.rate > u64::from(u32::MAX) {
            put_attr(&mut buf, TCA_HTB_RATE64, &self.rate.to_ne_bytes());
        }
        if self.ceil > u64::from(u32::MAX) {
            put_attr(&mut buf, TCA_HTB_CEIL64, &self.ceil.to_ne_bytes());
        }
        let mut opt = Vec::with_capacity(HTB_OPT_LEN);
        RateSpec::ethernet(self.rate).put(&mut opt);
        RateSpec::ethernet(self.ceil).put(&mut opt);
        for v in [
            self.buffer,
            self.cbuffer,
            self.quantum,
            0, /* level */
            self.prio,
        ] {
            opt.extend_from_slice(&v.to_ne_bytes());
        }
        put_attr(&mut buf, TCA_HTB_PARMS, &opt);
        buf
    }

    /// Reads a class's `TCA_OPTIONS` as the kernel dumps it.
    pub fn decode(options: &[u8]) -> Result<Self, TcaError> {
        let mut parms = None;
        let (mut rate64, mut ceil64) = (None, None);
        for (kind, value) in attrs(options)? {
            match kind {
                TCA_HTB_PARMS => parms = Some(value),
                TCA_HTB_RATE64 => rate64 = Some(u64_value("TCA_HTB_RATE64", value)?),
                TCA_HTB_CEIL64 => ceil64 = Some(u64_value("TCA_HTB_CEIL64", value)?),
                _ => {}
            }
        }
        let p = parms.ok_or(TcaError::Missing("TCA_HTB_PARMS"))?;
        if p.len() < HTB_OPT_LEN {
            return Err(TcaError::Short {
                what: "TCA_HTB_PARMS",
                need: HTB_OPT_LEN,
                got: p.len(),
            });
        }
        let rate = RateSpec::read(&p[0..]);
        let ceil = RateSpec::read(&p[RateSpec::LEN..]);
        let at = 2 * RateSpec::LEN;
        Ok(HtbClassParams {
            rate: rate64.unwrap_or(u64::from(rate.rate)),
            ceil: ceil64.unwrap_or(u64::from(ceil.rate)),
            buffer: u32_at(p, at),
            cbuffer: u32_at(p, at + 4),
            quantum: u32_at(p, at + 8),
            prio: u32_at(p, at + 16),
        })
    }
}

/// `sizeof(struct tc_htb_opt)`: two rate specs and five u32.
const HTB_OPT_LEN: usize = 2 * RateSpec::LEN + 5 * 4;
/// `sizeof(struct tc_htb_glob)`: five u32.
const HTB_GLOB_LEN: usize = 5 * 4;

/// The `TCA_OPTIONS` payload for `tc qdisc add … htb default <defcls>`
/// (`struct tc_htb_glob` with tc's defaults: version 3, r2q 10).
pub fn htb_qdisc_options(default_minor: u16) -> Vec<u8> {
    let mut glob = Vec::with_capacity(HTB_GLOB_LEN);
    for v in [HTB_PROTOVER, HTB_R2Q, u32::from(default_minor), 0, 0] {
        glob.extend_from_slice(&v.to_ne_bytes());
    }
    let mut buf = Vec::with_capacity(NLA_HDRLEN + HTB_GLOB_LEN);
    put_attr(&mut buf, TCA_HTB_INIT, &glob);
    buf
}

/// The default class minor of an HTB qdisc, from its dumped `TCA_OPTIONS`.
pub fn htb_qdisc_default(options: &[u8]) -> Result<u32, TcaError> {
    let glob = attrs(options)?
        .into_iter()
        .find(|(k, _)| *k == TCA_HTB_INIT)
        .map(|(_, v)| v)
        .ok_or(TcaError::Missing("TCA_HTB_INIT"))?;
    if glob.len() < HTB_GLOB_LEN {
        return Err(TcaError::Short {
            what: "TCA_HTB_INIT",
            need: HTB_GLOB_LEN,
            got: glob.len(),
        });
    }
    Ok(u32_at(glob, 8))
}

/// `bfifo`'s options (`struct tc_fifo_qopt`): the queue's limit in bytes.
/// Unlike fq's, they are a bare struct, not nested attributes.
pub fn fifo_options(limit_bytes: u32) -> Vec<u8> {
    limit_bytes.to_ne_bytes().to_vec()
}

/// The byte limit of a `bfifo` (or packet limit of a `pfifo`) from the
/// options the kernel dumps.
pub fn fifo_limit(options: &[u8]) -> Result<u32, TcaError> {
    if options.len() < 4 {
        return Err(TcaError::Short {
            what: "tc_fifo_qopt",
            need: 4,
            got: options.len(),
        });
    }
    Ok(u32_at(options, 0))
}

/// fq's options; `None` leaves the kernel's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FqOptions {
    /// Packets in the whole qdisc (`limit`).
    pub limit: Option<u32>,
    /// Packets per flow (`flow_limit`).
    pub flow_limit: Option<u32>,
    /// Round-robin quantum in bytes.
    pub quantum: Option<u32>,
    /// Quantum of a new flow in bytes.
    pub initial_quantum: Option<u32>,
    /// How far in the future a packet's EDT timestamp may be, microseconds.
    pub horizon_us: Option<u32>,
    /// Drop packets beyond the horizon (else cap their timestamp).
    pub horizon_drop: Option<bool>,
}

impl FqOptions {
    /// What vmbw installs for EDT pacing: room for many paced flows, and
    /// packets stamped more than 2 s ahead are dropped (the datapath keeps
    /// its own, shorter drop horizon, as Cilium's EDT does).
    pub fn for_edt() -> Self {
        FqOptions {
            limit: Some(10_000),
            horizon_us: Some(2_000_000),
            horizon_drop: Some(true),
            ..FqOptions::default()
        }
    }

    /// The `TCA_OPTIONS` payload, attributes in type order (as tc sends).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let u32s = [
            (TCA_FQ_PLIMIT, self.limit),
            (TCA_FQ_FLOW_PLIMIT, self.flow_limit),
            (TCA_FQ_QUANTUM, self.quantum),
            (TCA_FQ_INITIAL_QUANTUM, self.initial_quantum),
            (TCA_FQ_HORIZON, self.horizon_us),
        ];
        for (kind, value) in u32s {
            if let Some(v) = value {
                put_attr(&mut buf, kind, &v.to_ne_bytes());
            }
        }
        if let Some(drop) = self.horizon_drop {
            put_attr(&mut buf, TCA_FQ_HORIZON_DROP, &[u8::from(drop)]);
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmit_ticks_rounds_like_tc() {
        // 15000 B at 10 Mbit/s = 12 ms = 187500 ticks exactly.
        assert_eq!(xmit_ticks(1_250_000, 15_000), 187_500);
        // 1.25 ms = 19531.25 ticks: truncated, as tc does.
        assert_eq!(xmit_ticks(5_000_000_000, 6_250_000), 19_531);
        // 11999.99 us: tc truncates to whole microseconds first.
        assert_eq!(xmit_ticks(1_250_001, 15_000), 187_484);
        assert_eq!(xmit_ticks(0, 1), u32::MAX);
    }

    #[test]
    fn ticks_convert_back_to_bytes() {
        assert_eq!(ticks_to_bytes(1_250_000, 187_500), 15_000);
        let p = HtbClassParams::new(62_500_000, 62_500_000, 250_000, 250_000, 200_000, 0);
        assert!((249_000..=250_000).contains(&p.burst_bytes()));
    }

    #[test]
    fn class_options_round_trip_through_decode() {
        for (rate, ceil) in [
            (1_250_000, 2_500_000),
            (5_000_000_000, 12_500_000_000),
            (u64::from(u32::MAX), u64::from(u32::MAX) + 1),
        ] {
            let p = HtbClassParams::new(rate, ceil, 30_000, 60_000, 1514, 5);
            assert_eq!(HtbClassParams::decode(&p.encode()), Ok(p));
        }
    }

    #[test]
    fn decode_rejects_truncated_options() {
        let p = HtbClassParams::new(1_250_000, 1_250_000, 15_000, 15_000, 1514, 0);
        let bytes = p.encode();
        assert!(matches!(
            HtbClassParams::decode(&bytes[..bytes.len() - 4]),
            Err(TcaError::Overrun { .. })
        ));
        assert_eq!(
            HtbClassParams::decode(&[]),
            Err(TcaError::Missing("TCA_HTB_PARMS"))
        );
        let mut short = Vec::new();
        put_attr(&mut short, TCA_HTB_PARMS, &[0; 8]);
        assert!(matches!(
            HtbClassParams::decode(&short),
            Err(TcaError::Short { got: 8, .. })
        ));
    }

    #[test]
    fn qdisc_default_reads_back() {
        assert_eq!(htb_qdisc_default(&htb_qdisc_options(2)), Ok(2));
        assert_eq!(htb_qdisc_default(&htb_qdisc_options(0x1f)), Ok(0x1f));
    }

    #[test]
    fn fifo_limit_round_trips_and_a_short_payload_is_an_error() {
        assert_eq!(fifo_limit(&fifo_options(187_500)), Ok(187_500));
        assert!(matches!(
            fifo_limit(&[1, 2]),
            Err(TcaError::Short {
                need: 4,
                got: 2,
                ..
            })
        ));
    }
}
