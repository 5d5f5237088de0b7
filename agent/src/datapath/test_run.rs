//! BPF_PROG_TEST_RUN: runs a program on a frame built in user space and
//! reads back what it did to the `__sk_buff` (priority, tstamp). Used by the
//! table tests and the datapath benchmark; the programs and maps are the
//! live ones, so a test run counts like real traffic.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use vmbw_common::{Direction, program};

use super::{Datapath, DatapathError, classifier};

/// Byte offsets in the UAPI `struct __sk_buff` (stable ABI).
mod skb {
    pub const SIZE: usize = 192;
    pub const MARK: usize = 8;
    pub const PRIORITY: usize = 32;
    pub const INGRESS_IFINDEX: usize = 36;
    pub const TSTAMP: usize = 152;
}

/// `__sk_buff` fields a test may preset.
#[derive(Debug, Clone, Copy, Default)]
pub struct SkbIn {
    pub mark: u32,
    pub priority: u32,
    /// The device the packet came from (egress: 0 for local traffic).
    pub ingress_ifindex: u32,
    pub tstamp: u64,
}

/// What a test run returned.
#[derive(Debug, Clone, Copy)]
pub struct TestRunOutcome {
    /// The program's return value (TC_ACT_OK = 0, TC_ACT_SHOT = 2).
    pub verdict: i32,
    pub priority: u32,
    pub tstamp: u64,
    /// Mean time per run as the kernel measured it.
    pub per_run: Duration,
}

impl Datapath {
    /// Runs the `dir` program `repeat` times on `frame` (an Ethernet frame).
    pub fn test_run(
        &mut self,
        dir: Direction,
        frame: &[u8],
        input: SkbIn,
        repeat: u32,
    ) -> Result<TestRunOutcome, DatapathError> {
        let name = match dir {
            Direction::Egress => program::EGRESS,
            Direction::Ingress => program::INGRESS,
        };
        let mut ctx_in = [0u8; skb::SIZE];
        put_u32(&mut ctx_in, skb::MARK, input.mark);
        put_u32(&mut ctx_in, skb::PRIORITY, input.priority);
        put_u32(&mut ctx_in, skb::INGRESS_IFINDEX, input.ingress_ifindex);
        ctx_in[skb::TSTAMP..skb::TSTAMP + 8].copy_from_slice(&input.tstamp.to_ne_bytes());
        let mut ctx_out = [0u8; skb::SIZE];
        let mut data_out = vec![0u8; frame.len() + 256];
        let prog = classifier(self.ebpf_mut(), name)?;
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(|source| DatapathError::TestRun {
                name,
                source: Box::new(source),
            })?;
        Ok(TestRunOutcome {
            verdict: result.return_value as i32,
            priority: get_u32(&ctx_out, skb::PRIORITY),
            tstamp: u64::from_ne_bytes(
                ctx_out[skb::TSTAMP..skb::TSTAMP + 8]
                    .try_into()
                    .unwrap_or([0; 8]),
            ),
            per_run: result.duration,
        })
    }
}

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4]))
}
