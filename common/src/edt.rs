//! Earliest-departure-time pacing, the arithmetic only. Per (vm, class) the
//! kernel keeps the departure time it gave the last packet; the next packet
//! may leave `len / rate` after it. A packet that would have to wait longer
//! than the horizon is dropped instead of queued without bound. The `fq`
//! qdisc then releases each packet at its `skb->tstamp`.

pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Largest Q16 ns-per-byte value: about 8 bytes/s. Together with
/// [`MAX_LEN`] it keeps `len * q16` inside u64 without a 128-bit multiply
/// (which BPF does not have).
pub const MAX_NS_PER_BYTE_Q16: u64 = 1 << 43;
/// Packet lengths are clamped to this in the delay computation (GSO and
/// BIG TCP packets stay far below it).
pub const MAX_LEN: u64 = 1 << 20;

/// Nanoseconds per byte at `rate` bytes/s, in Q16 fixed point (0 = unpaced).
/// The error is below 1/65536 ns per byte; rates from ~8 bytes/s to far
/// beyond 100 Gbit/s are represented (slower ones are clamped to ~8 B/s).
pub const fn ns_per_byte_q16(rate: u64) -> u64 {
    if rate == 0 {
        return 0;
    }
    let q = (NSEC_PER_SEC << 16) / rate;
    if q > MAX_NS_PER_BYTE_Q16 {
        MAX_NS_PER_BYTE_Q16
    } else {
        q
    }
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edt {
    /// Leave now; remember `t_last`.
    Send { t_last: u64 },
    /// Set `skb->tstamp = tstamp`; remember it as `t_last`.
    Delay { tstamp: u64 },
    /// Beyond the horizon: drop; `t_last` unchanged.
    Drop,
}

/// Decides one packet. `now` and all times are CLOCK_MONOTONIC ns;
/// `skb_tstamp` is the packet's current departure time (0 if none);
/// `ns_per_byte_q16` from [`ns_per_byte_q16`] (0 = unpaced); `horizon`
/// 0 = never drop.
#[inline(always)]
pub fn pace(
    now: u64,
    skb_tstamp: u64,
    t_last: u64,
    len: u64,
    ns_per_byte_q16: u64,
    horizon: u64,
) -> Edt {
    if ns_per_byte_q16 == 0 {
        return Edt::Send { t_last };
    }
    let t = if skb_tstamp < now { now } else { skb_tstamp };
    let len = if len > MAX_LEN { MAX_LEN } else { len };
    let q16 = if ns_per_byte_q16 > MAX_NS_PER_BYTE_Q16 {
        MAX_NS_PER_BYTE_Q16
    } else {
        ns_per_byte_q16
    };
    // Both factors are bounded: the product fits in 63 bits.
    let delay = (len * q16) >> 16;
    let t_next = t_last.saturating_add(delay);
    if t_next <= t {
        return Edt::Send { t_last: t };
    }
    if horizon != 0 && t_next - now >= horizon {
        return Edt::Drop;
    }
    Edt::Delay { tstamp: t_next }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn unpaced_and_idle_send_now() {
        assert_eq!(pace(5 * MS, 0, 0, 1500, 0, 0), Edt::Send { t_last: 0 });
        // An idle class: the last departure is long past, leave now.
        assert_eq!(
            pace(5 * MS, 0, MS, 1500, 1_000_000, 0),
            Edt::Send { t_last: 5 * MS }
        );
    }

    #[test]
    fn back_to_back_packets_are_spaced_by_len_over_rate() {
        // 1 MB/s: a 1000-byte packet occupies 1 ms.
        let rate = ns_per_byte_q16(1_000_000);
        let now = 100 * MS;
        let mut t_last = 0;
        let mut stamps = [0u64; 4];
        for s in stamps.iter_mut() {
            match pace(now, 0, t_last, 1000, rate, 0) {
                Edt::Send { t_last: t } => {
                    *s = now;
                    t_last = t;
                }
                Edt::Delay { tstamp } => {
                    *s = tstamp;
                    t_last = tstamp;
                }
                Edt::Drop => panic!("no horizon, no drop"),
            }
        }
        assert_eq!(stamps, [now, now + MS, now + 2 * MS, now + 3 * MS]);
    }

    #[test]
    fn horizon_drops_only_beyond_it() {
        let rate = ns_per_byte_q16(1_000_000); // 1 ms per 1000 bytes
        let now = 100 * MS;
        // Queue already 1.5 ms deep: next departure at now + 2.5 ms.
        let t_last = now + 3 * MS / 2;
        assert_eq!(
            pace(now, 0, t_last, 1000, rate, 3 * MS),
            Edt::Delay {
                tstamp: now + 5 * MS / 2
            }
        );
        assert_eq!(pace(now, 0, t_last, 1000, rate, 2 * MS), Edt::Drop);
    }

    #[test]
    fn fixed_point_rate_is_accurate() {
        // From 1 kbit/s to 400 Gbit/s, a 64 KiB burst's delay is within
        // 0.01% (or 1 ns) of the exact quotient.
        for rate in [
            125u64,
            1_250_000,
            3_750_000,
            125_000_000,
            1_250_000_000,
            50_000_000_000,
        ] {
            let exact = 65536u128 * NSEC_PER_SEC as u128 / rate as u128;
            let got = (65536u128 * ns_per_byte_q16(rate) as u128) >> 16;
            let err = exact.abs_diff(got);
            assert!(
                err <= 1 || err * 10_000 <= exact,
                "rate {rate}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn a_later_skb_tstamp_is_respected() {
        let now = 100 * MS;
        // The stack already wants the packet to leave at now + 5 ms.
        assert_eq!(
            pace(now, now + 5 * MS, now, 1000, ns_per_byte_q16(1_000_000), 0),
            Edt::Send {
                t_last: now + 5 * MS
            }
        );
    }
}
