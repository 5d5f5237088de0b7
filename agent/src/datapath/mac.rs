//! [`Mac`]: a VM's link-layer address, one of the keys the datapath
//! classifies a VM's frames by. One parser for every place a MAC is read
//! (the agent's config and KubeVirt's VMI status), so both accept the same
//! text.

use std::{fmt, str::FromStr};

use serde::Deserialize;

/// Six octets, written as six two-digit hex pairs separated all by `:`
/// (Linux, QEMU, libvirt, KubeVirt) or all by `-` (IEEE 802's form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Mac([u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (six two-digit hex pairs, e.g. 52:54:00:12:34:56)")]
pub struct MacError(String);

impl Mac {
    pub const fn new(octets: [u8; 6]) -> Mac {
        Mac(octets)
    }

    pub const fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for Mac {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Mac, MacError> {
        let bad = || MacError(s.to_owned());
        // The first separator decides; mixing both is a typo, not a form.
        let sep = s
            .chars()
            .nth(2)
            .filter(|c| matches!(c, ':' | '-'))
            .ok_or_else(bad)?;
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            // Exactly two hex digits: from_str_radix alone would take `5`
            // or `+5`, which are no MAC notation.
            if !(p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit())) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl TryFrom<String> for Mac {
    type Error = MacError;
    fn try_from(s: String) -> Result<Mac, MacError> {
        s.parse()
    }
}

/// Lower-case and `:`-separated, as `ip link` prints it.
impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> Option<[u8; 6]> {
        s.parse::<Mac>().ok().map(Mac::octets)
    }

    #[test]
    fn the_configs_former_inputs() {
        assert_eq!(
            mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(mac("52:54:00:12:34"), None);
        assert_eq!(mac("52:54:00:12:34:56:78"), None);
        assert_eq!(mac("zz"), None);
    }

    #[test]
    fn kubevirts_former_inputs() {
        assert_eq!(
            mac("de:ad:be:ef:00:01"),
            Some([0xde, 0xad, 0xbe, 0xef, 0, 1])
        );
        assert_eq!(
            mac("DE-AD-BE-EF-00-01"),
            Some([0xde, 0xad, 0xbe, 0xef, 0, 1])
        );
        assert_eq!(mac("de:ad:be:ef:00"), None);
        assert_eq!(mac("de:ad:be:ef:00:01:02"), None);
        assert_eq!(mac("macValue"), None);
    }

    #[test]
    fn only_two_digit_pairs_with_one_separator() {
        // The config's old parser took these; none is a MAC as written.
        assert_eq!(mac("5:54:0:12:34:56"), None);
        assert_eq!(mac("+5:54:00:12:34:56"), None);
        assert_eq!(mac("52:54:00:12:34:+6"), None);
        assert_eq!(mac("52:54-00:12:34:56"), None);
        assert_eq!(mac(""), None);
        assert_eq!(mac("52:54:00:12:34:56:"), None);
    }

    #[test]
    fn prints_lower_case_with_colons() {
        let m: Mac = "52-54-00-AB-CD-EF".parse().expect("mac");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
        assert_eq!(
            "zz".parse::<Mac>().map_err(|e| e.to_string()),
            Err(
                "`zz` is not a MAC address (six two-digit hex pairs, e.g. 52:54:00:12:34:56)"
                    .into()
            )
        );
    }
}
