//! Command-line arguments. The guest's `/init` turns every kernel parameter
//! `vmbw.KEY=VALUE` into `--KEY VALUE`, so these names are also the kernel
//! command line's.

use std::{net::SocketAddr, time::Duration};

pub const USAGE: &str = "\
usage: vmbw-workload --mode MODE [options]
  --mode idle|cpu|mem-seq|mem-rand|burst|net
  --wss-mb N        working set for the memory modes, MiB (default 32)
  --dirty-mbps X    pages dirtied per second, as MiB/s (default 4; in cpu
                    and net modes 0, else a dirtying thread runs beside)
  --pattern seq|rand  page order in burst mode (default rand)
  --on-ms N         burst: dirtying period (default 2000)
  --off-ms N        burst: idle period (default 2000)
  --sink IP:PORT    net: where to send
  --proto udp|tcp   net: transport (default udp)
  --rate-mbit X     net: payload rate, Mbit/s (default 10); 0 = greedy: as
                    fast as TCP (or the UDP socket) takes it
  --app-on-ms N     net: send for N ms, then pause --app-off-ms (default 0:
  --app-off-ms N    always on); the first period is on
  --packet N        net: bytes per datagram or write (default 1200)
  --ramp-s X        memory modes: the dirty rate climbs from 0 to
                    --dirty-mbps over X seconds after the set-up (default 0:
                    the full rate at once)
  --grow-s X        memory modes: the pages written grow from a quarter of
                    the working set to all of it over X seconds (default 0)
  --hot-pct P       memory modes: P% of the writes go to a hot eighth of the
                    working set, the rest anywhere in it (default 0)
  --report-secs X   seconds between progress lines (default 5)
  --seed N          random page order seed (default 1)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Cpu,
    MemSeq,
    MemRand,
    Burst,
    Net,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Seq,
    Rand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

#[derive(Clone, Debug)]
pub struct Args {
    pub mode: Mode,
    pub wss_mb: usize,
    pub dirty_mbps: f64,
    pub pattern: Pattern,
    pub on: Duration,
    pub off: Duration,
    pub sink: Option<SocketAddr>,
    pub proto: Proto,
    pub rate_mbit: f64,
    /// The application's duty cycle; `app_off` zero = always on.
    pub app_on: Duration,
    pub app_off: Duration,
    pub packet: usize,
    pub report: Duration,
    pub seed: u64,
    /// The dirty rate's climb from 0 to `dirty_mbps`; zero = none.
    pub ramp: Duration,
    /// The written part of the working set grows from a quarter to all of
    /// it over this long; zero = all of it from the start.
    pub grow: Duration,
    /// Share of writes that go to the hot eighth of the working set, 0..=1.
    pub hot: f64,
}

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut mode = None;
        let mut dirty_given = false;
        let mut a = Args {
            mode: Mode::Idle,
            wss_mb: 32,
            dirty_mbps: 4.0,
            pattern: Pattern::Rand,
            on: Duration::from_millis(2000),
            off: Duration::from_millis(2000),
            sink: None,
            proto: Proto::Udp,
            rate_mbit: 10.0,
            app_on: Duration::ZERO,
            app_off: Duration::ZERO,
            packet: 1200,
            report: Duration::from_secs(5),
            seed: 1,
            ramp: Duration::ZERO,
            grow: Duration::ZERO,
            hot: 0.0,
        };
        while let Some(key) = it.next() {
            let name = key
                .strip_prefix("--")
                .ok_or_else(|| format!("expected an option, got `{key}`"))?;
            let value = it
                .next()
                .ok_or_else(|| format!("option --{name} needs a value"))?;
            let bad = |what: &str| format!("--{name} {value}: {what}");
            match name {
                "mode" => {
                    mode = Some(match value.as_str() {
                        "idle" => Mode::Idle,
                        "cpu" => Mode::Cpu,
                        "mem-seq" => Mode::MemSeq,
                        "mem-rand" => Mode::MemRand,
                        "burst" => Mode::Burst,
                        "net" => Mode::Net,
                        _ => return Err(bad("unknown mode")),
                    })
                }
                "wss-mb" => a.wss_mb = positive(&value).ok_or_else(|| bad("not a count > 0"))?,
                "dirty-mbps" => {
                    a.dirty_mbps = rate(&value).ok_or_else(|| bad("not a rate"))?;
                    dirty_given = true;
                }
                "pattern" => {
                    a.pattern = match value.as_str() {
                        "seq" => Pattern::Seq,
                        "rand" => Pattern::Rand,
                        _ => return Err(bad("expected seq or rand")),
                    }
                }
                "on-ms" => a.on = millis(&value).ok_or_else(|| bad("not milliseconds"))?,
                "off-ms" => a.off = millis(&value).ok_or_else(|| bad("not milliseconds"))?,
                "sink" => a.sink = Some(value.parse().map_err(|_| bad("not IP:PORT"))?),
                "proto" => {
                    a.proto = match value.as_str() {
                        "udp" => Proto::Udp,
                        "tcp" => Proto::Tcp,
                        _ => return Err(bad("expected udp or tcp")),
                    }
                }
                "rate-mbit" => a.rate_mbit = rate(&value).ok_or_else(|| bad("not a rate"))?,
                "app-on-ms" => a.app_on = millis(&value).ok_or_else(|| bad("not milliseconds"))?,
                "app-off-ms" => {
                    a.app_off = millis(&value).ok_or_else(|| bad("not milliseconds"))?
                }
                "packet" => {
                    a.packet = positive(&value)
                        .filter(|n| *n <= 65_000)
                        .ok_or_else(|| bad("not a size in 1..=65000"))?
                }
                "report-secs" => {
                    a.report = rate(&value)
                        .filter(|s| *s > 0.0)
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| bad("not seconds > 0"))?
                }
                "seed" => a.seed = value.parse().map_err(|_| bad("not an integer"))?,
                "ramp-s" => {
                    a.ramp = rate(&value)
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| bad("not seconds"))?
                }
                "grow-s" => {
                    a.grow = rate(&value)
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| bad("not seconds"))?
                }
                "hot-pct" => {
                    a.hot = rate(&value)
                        .filter(|p| *p <= 100.0)
                        .map(|p| p / 100.0)
                        .ok_or_else(|| bad("not a percentage"))?
                }
                _ => return Err(format!("unknown option --{name}")),
            }
        }
        a.mode = mode.ok_or("--mode is required")?;
        if a.mode == Mode::Net && a.sink.is_none() {
            return Err("--mode net needs --sink IP:PORT".into());
        }
        if !a.app_off.is_zero() && a.app_on.is_zero() {
            return Err("--app-off-ms needs --app-on-ms > 0".into());
        }
        if matches!(a.mode, Mode::Net | Mode::Cpu) && !dirty_given {
            a.dirty_mbps = 0.0;
        }
        match a.mode {
            Mode::MemSeq => a.pattern = Pattern::Seq,
            Mode::MemRand => a.pattern = Pattern::Rand,
            _ => {}
        }
        Ok(a)
    }

    /// One line naming the mode and the parameters that matter for it.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Idle => "mode=idle".into(),
            Mode::Cpu if self.dirty_mbps > 0.0 => format!(
                "mode=cpu wss_mb={} dirty_mbps={} pattern={}",
                self.wss_mb,
                self.dirty_mbps,
                if self.pattern == Pattern::Seq {
                    "seq"
                } else {
                    "rand"
                }
            ),
            Mode::Cpu => "mode=cpu".into(),
            Mode::MemSeq | Mode::MemRand => format!(
                "mode={} wss_mb={} dirty_mbps={}",
                if self.mode == Mode::MemSeq {
                    "mem-seq"
                } else {
                    "mem-rand"
                },
                self.wss_mb,
                self.dirty_mbps
            ),
            Mode::Burst => format!(
                "mode=burst pattern={} wss_mb={} dirty_mbps={} on_ms={} off_ms={}",
                if self.pattern == Pattern::Seq {
                    "seq"
                } else {
                    "rand"
                },
                self.wss_mb,
                self.dirty_mbps,
                self.on.as_millis(),
                self.off.as_millis()
            ),
            Mode::Net => format!(
                "mode=net proto={} rate_mbit={}{} packet={} sink={} wss_mb={} dirty_mbps={}",
                if self.proto == Proto::Udp {
                    "udp"
                } else {
                    "tcp"
                },
                self.rate_mbit,
                if self.app_off.is_zero() {
                    String::new()
                } else {
                    format!(
                        " app_on_ms={} app_off_ms={}",
                        self.app_on.as_millis(),
                        self.app_off.as_millis()
                    )
                },
                self.packet,
                self.sink.map(|s| s.to_string()).unwrap_or_default(),
                self.wss_mb,
                self.dirty_mbps
            ),
        }
    }
}

fn positive(s: &str) -> Option<usize> {
    s.parse().ok().filter(|n| *n > 0)
}

fn rate(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0)
}

fn millis(s: &str) -> Option<Duration> {
    s.parse().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args, String> {
        Args::parse(line.split_whitespace().map(str::to_owned))
    }

    fn err(line: &str) -> String {
        parse(line).err().unwrap_or_default()
    }

    #[test]
    fn parses_memory_mode() {
        let a = parse("--mode mem-seq --wss-mb 48 --dirty-mbps 2.5").expect("valid");
        assert_eq!(a.mode, Mode::MemSeq);
        assert_eq!(a.pattern, Pattern::Seq);
        assert_eq!(a.wss_mb, 48);
        assert_eq!(a.dirty_mbps, 2.5);
    }

    #[test]
    fn net_mode_dirties_only_when_asked() {
        let a = parse("--mode net --sink 198.18.2.2:9000").expect("valid");
        assert_eq!(a.dirty_mbps, 0.0);
        let a = parse("--mode net --sink 198.18.2.2:9000 --dirty-mbps 1").expect("valid");
        assert_eq!(a.dirty_mbps, 1.0);
    }

    #[test]
    fn net_mode_takes_a_duty_cycle() {
        let a = parse(
            "--mode net --sink 198.18.2.2:9000 --rate-mbit 0 --app-on-ms 3000 --app-off-ms 2000",
        )
        .expect("valid");
        assert_eq!(
            (a.rate_mbit, a.app_on, a.app_off),
            (0.0, Duration::from_secs(3), Duration::from_secs(2))
        );
        assert!(
            a.describe().contains("app_on_ms=3000 app_off_ms=2000"),
            "{}",
            a.describe()
        );
        assert!(err("--mode net --sink 198.18.2.2:9000 --app-off-ms 10").contains("--app-on-ms"));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(err("").contains("--mode is required"));
        assert!(err("--mode fly").contains("unknown mode"));
        assert!(err("--mode net").contains("--sink"));
        assert!(err("--mode idle --wss-mb").contains("needs a value"));
        assert!(err("--mode idle --wss-mb 0").contains("wss-mb"));
        assert!(err("--mode idle --colour red").contains("unknown option"));
    }
}
